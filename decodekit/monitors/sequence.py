"""Running signals over the generated sequence: repetition, non-termination, sequence likelihood.

All are computed on the device from the row's generated tokens and from traces, so they are exact
after a rollback with no bookkeeping (see :mod:`decodekit.monitors.signals`).

* ``loops`` (``[rows, 32]``, per period), ``loop_span`` / ``loop_period``: the longest generated
  suffix made of >= 2 consecutive copies of a unit of ``period <= 32`` tokens (the shortest such
  period), looked for in the last 256 tokens; 0 when there is none. The in-loop form of
  ``loop_detect`` for Ivgi et al. 2024, "From Loops to Oops" (arXiv:2407.06071).
* ``ngram_repeat``: 1 where the 4-gram ending at this token already occurred earlier in the
  generation; ``rep_rate``: their mean = 1 - unique / total 4-grams (seq-rep-4, Welleck et al. 2020).
* ``eos_trend``: least-squares slope (nats/token) of ``eos_logprob`` over the last 16 tokens (0 until
  there are 16): negative while the end-of-sequence probability keeps falling.
* ``seq_logprob`` (sum), ``mean_logprob`` (length-normalised log-prob, the Seq-Logprob of Guerreiro
  et al. 2023), ``perplexity`` (exp of minus the mean) and ``mean_entropy``, each up to the token.

Example:
    >>> loop_detect([5, 1, 2, 3, 1, 2, 3, 1, 2, 3])        # "a b c" three times after a 5
    (True, 1, 3)
    >>> loop_detect([1, 2, 3, 4])
    (False, -1, 0)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from decodekit.monitors.signals import Signal, StepSignals, register_signal

__all__ = ["loop_detect", "suffix_loops", "Loops", "LoopSpan", "LoopPeriod", "NgramRepeat", "RepRate", "EosTrend",
           "SeqLogProb", "MeanLogProb", "Perplexity", "MeanEntropy"]


def loop_detect(tokens: Sequence[int], max_period: int = 32, min_repeats: int = 2,
                min_covered: int = 1) -> tuple[bool, int, int]:
    """Host reference (O(n * P)): the smallest period p <= max_period such that the sequence ends in
    >= ``min_repeats`` consecutive copies of a p-token unit (the whole periodic suffix) covering
    >= ``min_covered`` tokens. Returns ``(is_loop, start_index, period)``."""
    n = len(tokens)
    for p in range(1, max_period + 1):
        run = 0
        while run < n - p and tokens[n - 1 - run] == tokens[n - 1 - run - p]:
            run += 1
        span = run + p
        if run >= p and span // p >= min_repeats and span >= min_covered:
            return True, n - span, p
    return False, -1, 0


def suffix_loops(ids: torch.Tensor, begin: int, end: torch.Tensor, max_period: int = 32,
                 window: int = 256) -> torch.Tensor:
    """Device version of :func:`loop_detect`, per period, for every row at once.

    Args:
        ids: ``[rows, L]`` token ids; a row's tokens are ``ids[r, begin:end[r]]``.
        end: ``[rows]`` long.
    Returns:
        ``[rows, max_period]`` long: for period p (column p - 1) the length of the row's suffix that
        repeats with period p if it holds >= 2 copies, else 0 (looked for in the last ``window + p``
        tokens). Copies = span // p.
    """
    P, W = max_period, window
    cols = end[:, None] - (W + P) + torch.arange(W + P, device=ids.device)  # [rows, W + P]
    ok = cols >= begin  # [rows, W + P]
    seq = ids.gather(1, cols.clamp_min(0))  # [rows, W + P]
    p = torch.arange(1, P + 1, device=ids.device)  # [P]
    prev_idx = P + torch.arange(W, device=ids.device)[None, :] - p[:, None]  # [P, W]
    eq = (seq[:, None, P:] == seq[:, prev_idx]) & ok[:, None, P:] & ok[:, prev_idx]  # [rows, P, W]
    run = eq.flip(-1).long().cumprod(-1).sum(-1)  # [rows, P] trailing matches per period
    return torch.where(run >= p, run + p, 0)  # [rows, P]


def _broadcast(ctx: StepSignals, value: torch.Tensor) -> torch.Tensor:
    """``[rows] -> [rows, n]``: a running value evaluated after the step, for each new token."""
    return value.float()[:, None].expand_as(ctx.positions)


def _cum_at(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Sum of ``values [rows, L]`` over positions 0..q for each ``q`` in ``positions [rows, n]``."""
    return values.nan_to_num(0.0).cumsum(1).gather(1, positions)


@register_signal
class Loops(Signal):
    """``[rows, 32]`` per-period repeating-suffix spans (see ``suffix_loops``); not traced."""

    name, traced = "loops", False
    max_period, window = 32, 256

    def compute(self, ctx):
        st = ctx.state
        window = min(self.window, max(st.steps, 1))  # n_new <= steps: shorter early on, no host sync
        return suffix_loops(st.ids, st.prompt_width, st.end, self.max_period, window)


@register_signal
class LoopSpan(Signal):
    """Generated tokens covered by the longest repeating suffix (>= 2 copies; 0: no loop)."""

    name, requires = "loop_span", ("loops",)

    def compute(self, ctx):
        return _broadcast(ctx, ctx["loops"].max(-1).values)


@register_signal
class LoopPeriod(Signal):
    """The shortest period whose repeats cover ``loop_span`` tokens (0: no loop)."""

    name, requires = "loop_period", ("loops",)

    def compute(self, ctx):
        spans = ctx["loops"]  # [rows, P]
        best = spans.max(-1, keepdim=True).values  # [rows, 1]
        first = ((spans == best) & (best > 0)).long().argmax(-1)  # [rows]
        return _broadcast(ctx, torch.where(best[:, 0] > 0, first + 1, 0))


@register_signal
class NgramRepeat(Signal):
    """1.0 where the n-gram (n = 4) ending at this token occurred earlier in the generation."""

    name, n = "ngram_repeat", 4

    def compute(self, ctx):
        st, n = ctx.state, self.n
        gen = st.ids[:, st.prompt_width:]  # [rows, M] generated tokens (stale past n_new)
        if gen.shape[1] < n:
            return torch.zeros_like(ctx.positions, dtype=torch.float32)
        grams = gen.unfold(1, n, 1)  # [rows, M - n + 1, n]: gram g ends at position g + n - 1
        start = (ctx.positions - (n - 1)).clamp_min(0)  # [rows, k] start of the gram ending at q
        cur = grams.gather(1, start[..., None].expand(-1, -1, n))  # [rows, k, n]
        same = (grams[:, None] == cur[:, :, None]).all(-1)  # [rows, k, M - n + 1]
        earlier = torch.arange(grams.shape[1], device=gen.device) < start[..., None]  # [rows, k, G]
        hit = (same & earlier).any(-1) & (ctx.positions >= n - 1)  # [rows, k]
        return hit.float()


@register_signal
class RepRate(Signal):
    """Repeated 4-gram rate of the generation so far: 1 - unique / total (0 before the first 4-gram)."""

    name, requires = "rep_rate", ("ngram_repeat",)

    def compute(self, ctx):
        n = NgramRepeat.n
        grams = (ctx.positions - (n - 2)).clamp_min(1).float()  # [rows, k] grams up to q
        trace = ctx.trace("ngram_repeat")
        return _cum_at(trace, ctx.positions) / grams


@register_signal
class EosTrend(Signal):
    """Slope of ``eos_logprob`` over the last 16 tokens (nats per token; 0 until 16 tokens)."""

    name, requires, window = "eos_trend", ("eos_logprob",), 16

    def compute(self, ctx):
        w = self.window
        last = ctx.positions[:, -1:]  # [rows, 1] (values for a multi-token step: after the step)
        idx = last - (w - 1) + torch.arange(w, device=last.device)  # [rows, w]
        y = ctx.trace("eos_logprob").gather(1, idx.clamp_min(0))  # [rows, w]
        x = torch.arange(w, device=y.device, dtype=y.dtype) - (w - 1) / 2  # [w] centred
        slope = ((y - y.mean(1, keepdim=True)) * x).sum(1) / (x * x).sum()  # [rows]
        return _broadcast(ctx, torch.where(last[:, 0] >= w - 1, slope, 0.0))


@register_signal
class SeqLogProb(Signal):
    """Sum of the chosen tokens' log-probs up to the token."""

    name = "seq_logprob"

    def compute(self, ctx):
        return _cum_at(ctx.state.logprobs.float(), ctx.positions)


@register_signal
class MeanLogProb(Signal):
    """Length-normalised sequence log-prob (Seq-Logprob, Guerreiro et al. 2023, arXiv:2208.05309)."""

    name, requires = "mean_logprob", ("seq_logprob",)

    def compute(self, ctx):
        return ctx["seq_logprob"] / (ctx.positions + 1).float()


@register_signal
class Perplexity(Signal):
    name, requires = "perplexity", ("mean_logprob",)

    def compute(self, ctx):
        return torch.exp(-ctx["mean_logprob"])


@register_signal
class MeanEntropy(Signal):
    name, requires = "mean_entropy", ("entropy",)

    def compute(self, ctx):
        return _cum_at(ctx.trace("entropy"), ctx.positions) / (ctx.positions + 1).float()
