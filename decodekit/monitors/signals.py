"""Signals: per-token quantities that monitors act on, with declared dependencies.

A :class:`Signal` has a ``name``, the names it ``requires`` and ``compute(ctx) -> Tensor``. The
:class:`~decodekit.monitors.runner.MonitorRunner` resolves the names its monitors require once per
decode into an ordered plan (:func:`resolve`: dependencies first, each signal once) and, every step,
computes exactly the signals in the plan, each once, on the device, whatever number of monitors read
it. Unknown names raise a ValueError listing the known ones.

Values are aligned with the step's new tokens: ``[rows, n]`` (``n = out.tokens.shape[1]``, valid up
to ``out.count``). *Traced* signals are also written into ``state.traces[name]``
(``[rows, max_new_tokens]``, by generated position), which is what running signals (smoothed entropy,
repetition, sequence means) read and what the result's :class:`~decodekit.state.Trace` holds. Traces
are indexed by position, so a rollback needs no bookkeeping: positions past ``n_new`` are stale and
are rewritten when the row decodes them again.

Extension: a signal receives a :class:`StepSignals` context (the state, the step output, earlier
values, traces) and may do extra work through it -- ``ctx.lookahead(hidden=True)`` feeds the pending
tokens now (the forward the next step would run anyway) and returns the hidden states and next-token
logits; ``ctx.memory(name)`` is per-decode storage for signals that keep their own KV cache (a second
forward pass without the retrieved context, another model) or sampled continuations. None of this
needs a change to the loop.

Token signals here follow Arora et al. 2023, "The Stable Entropy Hypothesis and Entropy-Aware
Decoding" (arXiv:2302.06784): entropy of the model's raw next-token distribution and its trailing
mean over U = 5 tokens including the current one.

Example:
    >>> [s.name for s in resolve(["smoothed_entropy", "margin"])]
    ['log_probs', 'entropy', 'smoothed_entropy', 'top2', 'margin']
    >>> @register_signal
    ... class MinProb(Signal):                          # a user signal               # doctest: +SKIP
    ...     name, requires = "min_prob", ("log_probs",)
    ...     def compute(self, ctx):
    ...         return ctx["log_probs"].amin(-1).exp()     # [rows, n]
"""

from __future__ import annotations

import importlib.metadata
from typing import Any, ClassVar

import torch

from decodekit.state import DecodeState, StepOutput

__all__ = ["Signal", "StepSignals", "SIGNALS", "register_signal", "resolve", "entropy_of",
           "smoothed_entropy", "known_signals"]

SIGNALS: dict[str, "Signal"] = {}


def register_signal(cls: type["Signal"]) -> type["Signal"]:
    """Class decorator: make ``cls()`` known under ``cls.name``."""
    if not isinstance(cls.name, str) or not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty name")
    if cls.name in SIGNALS and type(SIGNALS[cls.name]) is not cls:
        raise ValueError(f"signal {cls.name!r} is already registered by {type(SIGNALS[cls.name]).__name__}")
    SIGNALS[cls.name] = cls()
    return cls


def known_signals(per_token_only: bool = False) -> list[str]:
    """Registered signal names (``per_token_only``: those with one traced value per token)."""
    _load_builtins()
    return sorted(n for n, s in SIGNALS.items() if s.traced or not per_token_only)


class Signal:
    """One quantity computed per step. ``traced`` signals are ``[rows, n]`` floats kept per token;
    untraced ones are intermediates of any shape (e.g. ``log_probs [rows, n, vocab]``).
    ``compactable``: False for a signal that keeps per-row data outside ``state.traces`` (e.g. its
    own KV cache in ``ctx.memory``); finished rows then stay in the batch (:mod:`decodekit.compaction`)."""

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    traced: ClassVar[bool] = True
    compactable: ClassVar[bool] = True

    def compute(self, ctx: "StepSignals") -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<signal {self.name}>"


_ENTRY_POINTS_LOADED: list[bool] = []


def _load_builtins() -> None:
    """Register the built-in running signals, and third-party ones from the entry-point group
    ``decodekit.signals`` (``name = "package.module:SignalClass"``), once."""
    from decodekit.monitors import sequence  # noqa: F401  (registration)

    if not _ENTRY_POINTS_LOADED:
        _ENTRY_POINTS_LOADED.append(True)
        for ep in importlib.metadata.entry_points(group="decodekit.signals"):
            if ep.name not in SIGNALS:
                register_signal(ep.load())


def resolve(names) -> list[Signal]:
    """The signals ``names`` need, dependencies first, each once (ValueError on unknown names/cycles)."""
    _load_builtins()
    if isinstance(names, str):
        names = (names,)
    order: list[Signal] = []
    visiting: set[str] = set()

    def visit(name: str, needed_by: str | None) -> None:
        if any(s.name == name for s in order):
            return
        if name not in SIGNALS:
            who = f" (required by signal {needed_by!r})" if needed_by else ""
            raise ValueError(f"unknown signal {name!r}{who}; known signals: {', '.join(known_signals())}")
        if name in visiting:
            raise ValueError(f"signal dependency cycle through {name!r}")
        visiting.add(name)
        for dep in SIGNALS[name].requires:
            visit(dep, name)
        visiting.discard(name)
        order.append(SIGNALS[name])

    for n in names:
        if not isinstance(n, str):
            raise TypeError(f"signal names must be strings, got {n!r}")
        visit(n, None)
    return order


class StepSignals:
    """The values of one step, handed to signals (to compute) and to monitors (to read)."""

    def __init__(self, state: DecodeState, out: StepOutput, memory: dict[str, Any]):
        self.state, self.out = state, out
        self.values: dict[str, torch.Tensor] = {}
        self.monitor = ""  # key of the monitor being asked (set by the runner; unique per decode)
        self._memory = memory
        self._lookahead: dict[str, Any] = {}
        n = out.tokens.shape[1]
        steps = torch.arange(n, device=out.tokens.device)  # [n]
        self.valid = steps[None, :] < out.count[:, None]  # [rows, n] bool
        first = state.n_new - out.count  # [rows] position of the step's first new token
        self.positions = (first[:, None] + steps[None, :]).clamp(0, state.logprobs.shape[1] - 1)  # [rows, n]

    @property
    def active(self) -> torch.Tensor:
        """``[rows]`` bool: rows that gained tokens this step (the others are done)."""
        return self.out.count > 0

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.values:
            raise KeyError(f"signal {name!r} was not computed this step: add it to the monitor's requires")
        return self.values[name]

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def last(self, name: str) -> torch.Tensor:
        """``[rows]``: the value at each row's last new token (rows that gained none: their first)."""
        idx = (self.out.count - 1).clamp_min(0)[:, None]  # [rows, 1]
        return self[name].gather(1, idx)[:, 0]

    def trace(self, name: str) -> torch.Tensor:
        """``[rows, max_new_tokens]`` values by generated position (valid below ``state.n_new``)."""
        return self.state.traces[name]

    def logits(self, signal: str) -> torch.Tensor:
        """``[rows, n, vocab]`` raw logits of the step (clear error if the strategy gave none)."""
        if self.out.logits is None:
            raise ValueError(f"signal {signal!r} needs the step's logits, but the strategy returned none")
        return self.out.logits

    def memory(self, name: str) -> dict[str, Any]:
        """Per-decode storage of one signal (its own cache, a second model's state ...)."""
        return self._memory.setdefault(name, {})

    def lookahead(self, hidden: bool = False):
        """Feed the pending tokens now and return the :class:`~decodekit.lm.Forward` (next-token logits
        ``[rows, 1, vocab]``, last-layer hidden states ``[rows, 1, hidden]`` of the fed tokens when
        asked). The next ``state.advance()`` reuses it, so this costs no extra forward pass."""
        st, done = self.state, self._lookahead.get("forward")
        if done is not None and (done.hidden is not None or not hidden):
            return done
        if st.pending is None:
            raise ValueError("lookahead: nothing is pending (the state was already advanced this step; "
                             "a signal that needs hidden states must be the first to look ahead)")
        mask = torch.cat([st.attention_mask, st.attention_mask.new_ones(st.rows, 1)], 1)  # [rows, S+1]
        fwd = st.lm.forward(st.pending[:, None], st.cache, mask, hidden=hidden)
        st.attention_mask, st.next_logits, st.pending = mask, fwd.logits[:, -1], None
        self._lookahead["forward"] = fwd
        return fwd

    def write_trace(self, name: str, value: torch.Tensor) -> None:
        """Store ``value [rows, n]`` at the step's positions of ``state.traces[name]``."""
        buf = self.state.traces.get(name)
        if buf is None:
            buf = torch.full_like(self.state.logprobs, float("nan"))  # [rows, max_new_tokens]
            self.state.traces[name] = buf
        old = buf.gather(1, self.positions)  # [rows, n]
        buf.scatter_(1, self.positions, torch.where(self.valid, value.to(buf.dtype), old))


# ---------------------------------------------------------------- pure functions


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) over the last dim: ``[..., vocab] -> [...]``.

    >>> entropy_of(torch.zeros(1, 4))            # uniform over 4: log 4
    tensor([1.3863])
    """
    logp = torch.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).nansum(-1)


def smoothed_entropy(trace: torch.Tensor, positions: torch.Tensor, width: int = 5) -> torch.Tensor:
    """Trailing mean over ``width`` positions including the current one (fewer at the start), as the
    official SEH code (``mean(H[max(i - 5, 0) : i])``, Arora et al. 2023, Eq. 4).

    Args:
        trace: ``[rows, L]`` per-position entropies; positions: ``[rows, n]`` long.
    Returns:
        ``[rows, n]``.

    >>> smoothed_entropy(torch.tensor([[1., 2., 3., 4., 5., 6.]]), torch.tensor([[0, 1, 5]]))
    tensor([[1.0000, 1.5000, 4.0000]])
    """
    offs = torch.arange(width, device=trace.device)  # [U]
    idx = positions[..., None] - offs  # [rows, n, U]
    ok = idx >= 0
    vals = trace.gather(1, idx.clamp_min(0).flatten(1)).view(idx.shape)  # [rows, n, U]
    vals = torch.where(ok, vals, 0.0)
    return vals.sum(-1) / ok.sum(-1).clamp_min(1)


# ---------------------------------------------------------------- token signals


@register_signal
class LogProbs(Signal):
    """``[rows, n, vocab]`` log-softmax of the raw logits (shared by the distribution signals)."""

    name, traced = "log_probs", False

    def compute(self, ctx):
        return torch.log_softmax(ctx.logits(self.name).float(), -1)


@register_signal
class Entropy(Signal):
    """Entropy (nats) of the model's raw next-token distribution."""

    name, requires = "entropy", ("log_probs",)

    def compute(self, ctx):
        logp = ctx["log_probs"]
        return -(logp.exp() * logp).nansum(-1)  # [rows, n]


@register_signal
class SmoothedEntropy(Signal):
    """Trailing mean of ``entropy`` over U = 5 tokens including the current (Arora et al. 2023)."""

    name, requires = "smoothed_entropy", ("entropy",)
    width = 5

    def compute(self, ctx):
        return smoothed_entropy(ctx.trace("entropy"), ctx.positions, self.width)


@register_signal
class Top2(Signal):
    """``[rows, n, 2]`` the two largest probabilities."""

    name, requires, traced = "top2", ("log_probs",), False

    def compute(self, ctx):
        return ctx["log_probs"].topk(2, dim=-1).values.exp()


@register_signal
class MaxProb(Signal):
    name, requires = "max_prob", ("top2",)

    def compute(self, ctx):
        return ctx["top2"][..., 0]


@register_signal
class Margin(Signal):
    """Top-1 minus top-2 probability."""

    name, requires = "margin", ("top2",)

    def compute(self, ctx):
        return ctx["top2"][..., 0] - ctx["top2"][..., 1]


@register_signal
class ChosenLogProb(Signal):
    """Model log-prob of each chosen token (from the step output; no softmax needed)."""

    name = "logprob"

    def compute(self, ctx):
        return ctx.out.logprobs.float()


@register_signal
class EosLogProb(Signal):
    """log of the total probability of the model's EOS tokens."""

    name, requires = "eos_logprob", ("log_probs",)

    def compute(self, ctx):
        eos = list(ctx.state.lm.eos_token_ids) or [ctx.state.lm.pad_token_id]
        return ctx["log_probs"][..., eos].logsumexp(-1)
