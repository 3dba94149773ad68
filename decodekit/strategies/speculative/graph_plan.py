"""Prompt lookup's whole draft-verify step from CUDA graphs: a :class:`~decodekit.fast.step_graph.Plan`.

The ordinary step (:class:`~.strategy.DraftVerify`) syncs with the host once per step (the draft
width, the counters, cropping unused cache columns) and costs ~150 small PyTorch calls on the host:
on a GPU a prompt-lookup step costs several times a greedy step's host time, so copying 2-3 tokens
per step did not pay. This plan runs the same step with nothing read on the host, so the loop
replays it from graphs (:mod:`decodekit.fast.step_graph`):

* a fixed width: every step verifies ``[pending, d_1..d_k]`` (``k = draft_tokens``); rows with
  fewer drafts (or none) verify padding that is rejected;
* the n-gram lookup of the next step's drafts runs at the end of the tail (:func:`.prompt_lookup.lookup`,
  vectorised on the device) and goes straight into the next forward's inputs;
* the counters (accepted, proposed, ...) add up on the device and reach the stats at ``finalize``;
* rejected drafts' columns are masked where they are (holes), never cropped;
* with Triton on the device, everything after the target's argmax and log-probs is one kernel
  (:func:`~decodekit.fast.lookup_step.lookup_step`; ~210 small PyTorch kernels otherwise).

Greedy verification only (its output equals greedy decoding), without processors, single chains.
Used when the lagged stop check is on (CUDA) at a fixed width: prompt lookup's default on a GPU
(``draft_policy="auto"``: ``graph_draft_tokens`` drafts every step, by default 3 for a small model at
batch 1, else 4), or ``adaptive=False``
(``draft_tokens`` every step): e.g. ``decodekit.generate(lm, passage, "prompt_lookup")``.
"""

from __future__ import annotations

import torch

from decodekit.fast.launch import kernel_reason
from decodekit.fast.lookup_step import lookup_step
from decodekit.state import DecodeState
from decodekit.strategies.speculative.proposer import DraftContext
from decodekit.strategies.speculative.verify import greedy_verify
from decodekit.transfer import to_device

__all__ = ["LookupPlan", "STATS", "LOOKUP_STEP"]

STATS = ("accepted", "proposed", "verifies", "row_steps", "row_forwards")  # the device counters, in order
LOOKUP_STEP = True  # False: the tail runs as PyTorch operations even where the one-kernel tail could


class LookupPlan:
    """Prompt lookup at a fixed width ``k``: ``width = k + 1`` new columns per step (module docstring).

    Args:
        strategy: the :class:`~.strategy.DraftVerify` (greedy verification, no processors).
        state: the decode's state after ``init`` (its proposer and counters in ``state.extra``).
        stopping: the loop's stopping rules (the tail runs the strategy's verification, then clip /
            append / update, not the loop's step function: that would run the ordinary step).
        run: the decode's counters (``.strategy._Run``): the device counters reach it at ``finalize``.
    """

    def __init__(self, strategy, state: DecodeState, stopping, run):
        self.strategy, self.stopping = strategy, stopping
        self.proposer = state.extra["_spec_proposer"]
        self.k = run.k  # draft_tokens (adaptive=False), or graph_draft_tokens (draft_policy="auto")
        self.width = self.k + 1
        rows, dev = state.rows, state.done.device
        self.drafts = torch.zeros(rows, self.k, dtype=torch.long, device=dev)  # [rows, k] the next step's
        self.count = torch.zeros(rows, dtype=torch.long, device=dev)  # [rows] valid drafts in it
        self.stats = torch.zeros(len(STATS), dtype=torch.long, device=dev)  # [5] the counters (STATS)
        run.device_stats = self.stats
        self.ctx = DraftContext(False, strategy._process, tree=False, crop=False)
        from decodekit.strategies.speculative.prompt_lookup import PromptLookupProposer  # (import cycle)

        self.fused = (LOOKUP_STEP and type(self.proposer) is PromptLookupProposer and kernel_reason(dev) is None
                      and not (stopping.stop_strings or stopping.criteria))
        self.eos = to_device(list(stopping.eos_token_ids), dev, torch.long)  # [n_eos]
        self.accepted = torch.zeros(rows, dtype=torch.long, device=dev)  # [rows] drafts each row accepted

    def _draft(self, state: DecodeState) -> None:
        """The next step's drafts, from the rows' tokens as they are now (finished rows: none)."""
        d = self.proposer.propose(state, self.k, self.ctx)  # no host sync without crop
        self.drafts.copy_(d.tokens)
        self.count.copy_(d.count)

    def feed(self, state: DecodeState) -> tuple[torch.Tensor, torch.Tensor]:
        self._draft(state)
        active = (~state.done).long()[:, None].expand(-1, self.width)  # [rows, T]
        return torch.cat([state.pending[:, None], self.drafts], 1), active

    def tail(self, state, logits, ids_in, write, mask) -> None:
        # logits [rows, T, V] of [pending, drafts]; write [T] their cache columns; mask [B, C]
        if self.fused:
            return self._fused_tail(state, logits, ids_in, write, mask)
        n, T = state.rows, self.width
        cols = write[None, :].expand(n, -1)  # [rows, T]
        full = mask[:n]  # [rows, C]: the rows' columns; nobody's past this step's
        state.attention_mask = full
        active = ~state.done  # [rows]
        v = greedy_verify(logits, self.drafts, self.count)
        accepted = torch.where(active, v.accepted, 0)  # [rows]
        full.scatter_(1, cols, self.strategy.kept_columns(accepted, active, T, self.k).long())
        has = active & (self.count > 0)  # [rows]
        self.stats.add_(torch.stack([accepted.sum(), torch.where(has, self.count, 0).sum(), has.sum(),
                                     active.sum(), torch.full_like(accepted[0], n)]))
        out = self.stopping.clip(state, self.strategy.emitted(state, logits, v.tokens, accepted))
        state.append(out)
        self.stopping.update(state)
        if state.attention_mask is not full:  # append masked clipped drafts' columns: into the slab's mask
            full.copy_(state.attention_mask)
            state.attention_mask = full
        self._draft(state)  # the next step's inputs
        ids_in[:n, 0].copy_(state.pending)
        ids_in[:n, 1:].copy_(self.drafts)
        write.add_(T)
        full.scatter_(1, cols, (~state.done).long()[:, None].expand(-1, T))

    def _fused_tail(self, state, logits, ids_in, write, mask) -> None:
        """The tail as the target's argmax and log-probs, then one kernel (same results)."""
        state.attention_mask = mask[:state.rows]  # [rows, C]
        target = logits.argmax(-1)  # [rows, T], as greedy_verify
        lp = self.strategy.token_logprobs(logits, target)  # [rows, T], as emitted
        p = self.proposer
        lookup_step(state, target, lp, self.drafts, self.count, self.eos, ids_in, write, mask, self.stats,
                    self.accepted, p.max_ngram, p.min_ngram)
        state.next_logits = self.strategy.logits_after(logits, self.accepted)  # [rows, V], as emitted
        write.add_(self.width)
