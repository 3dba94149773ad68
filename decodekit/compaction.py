"""Finished rows leave the batch: a decode stops paying for rows that are done.

A batch runs until its slowest row is done, and a row that finished early still costs compute in
every later forward pass (on the CPU a pass costs more with every row it carries; a speculative
verify pass charges each row the full draft width). Where a strategy's rows are independent of each
other (``Strategy.compactable``: greedy, sampling, entropy-aware sampling, draft-then-verify with
greedy verification), the loop therefore drops finished rows from the decode state, the KV cache
and the strategy's per-row data (``Strategy.keep_rows``) as soon as it learns that a row is done,
and parks their results here. :meth:`Compaction.restore` puts every row back, in the original
order, before ``finalize``: tokens, log-probs, finish reasons, traces and monitor flags are exactly
what they would be without compaction.

No extra host sync: the loop's stop check reads how many rows are done (one read per step, which it
does anyway); only a step where some row finished reads which ones. A lagged stop check (CUDA,
:mod:`decodekit.lag`) gives no count, and the rows stay.

Random draws do not change either: rows that left keep their place in the draws
(:attr:`~decodekit.state.DecodeState.draw_rows`), so the same seed gives the same tokens with or
without compaction.

It stays off where something outside the strategy may hold per-row data or depend on the batch
layout: transformers logits processors and stopping criteria (they see the batch as transformers
would), and monitors that do not declare ``compactable`` (signal monitors do: their per-row data
lives in ``state.traces``, which moves with the rows).

Example (prompt lookup in a batch: rows that copy much finish early and stop costing compute):
    >>> gen = decodekit.generate(lm, passages, "prompt_lookup", max_new_tokens=64)   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decodekit.state import DecodeState

__all__ = ["Compaction", "COMPACT"]

COMPACT = True  # False: finished rows always stay in the batch (tests compare both)

# per-row tensors ([rows, ...]) that finalize and the result read
_RESULT_FIELDS = ("ids", "start", "n_new", "limit", "logprobs", "done", "prompt_of_row", "next_logits")


@dataclass
class _Parked:
    """The final values of rows that left the batch."""

    rows: torch.Tensor  # [m] long: their rows in the original batch
    fields: dict[str, torch.Tensor]  # name -> [m, ...] (the _RESULT_FIELDS)
    traces: dict[str, torch.Tensor]  # name -> [m, max_new_tokens]
    finish: list[str]  # [m]


class Compaction:
    """Per decode: drops finished rows (:meth:`leave`) and puts them back (:meth:`restore`)."""

    def __init__(self, state: DecodeState, strategy, runner, stopping, lagged: bool = False):
        self.strategy = strategy
        self.on = (COMPACT and bool(getattr(strategy, "compactable", False)) and runner.compactable and not lagged
                   and not state.user_processors and not stopping.criteria)
        self.parked: list[_Parked] = []

    def leave(self, state: DecodeState, finished: int | None) -> None:
        """Drop the rows that are done, if any (``finished``: how many the loop's check counted)."""
        if not self.on or not finished or finished >= state.rows:
            return
        done = state.done.tolist()  # host sync: only in a step where some row finished
        keep = torch.tensor([r for r, d in enumerate(done) if not d], device=state.done.device)  # [k]
        gone = torch.tensor([r for r, d in enumerate(done) if d], device=state.done.device)  # [m]
        if state.origin is None:  # first time: remember the rows' places in the batch
            state.origin = torch.arange(state.rows, device=state.done.device)  # [rows]
            state.batch_rows = state.rows
        self.parked.append(_Parked(
            state.origin.index_select(0, gone),
            {f: getattr(state, f).index_select(0, gone) for f in _RESULT_FIELDS},
            {k: v.index_select(0, gone) for k, v in state.traces.items()},
            [state.finish[r] for r in gone.tolist()],
        ))
        self.strategy.keep_rows(state, keep)
        state.select_rows(keep)
        state.trim()

    def restore(self, state: DecodeState) -> None:
        """Put the rows that left back, in the original order (before ``finalize``).

        Afterwards the state holds every row's results; its KV cache still holds only the rows
        that were decoding last (the attention mask marks no columns for the others).
        """
        if not self.parked:
            return
        rows = state.batch_rows
        where = [p.rows for p in self.parked] + [state.origin]  # original rows of each part
        for f in _RESULT_FIELDS:
            parts = [p.fields[f] for p in self.parked] + [getattr(state, f)]
            setattr(state, f, _scatter(rows, where, parts, 0))
        keys = set(state.traces).union(*(p.traces for p in self.parked))
        state.traces = {k: _scatter(rows, where, [p.traces.get(k) for p in self.parked] + [state.traces.get(k)],
                                    float("nan")) for k in sorted(keys)}
        finish = [""] * rows
        for part, names in zip(where, [p.finish for p in self.parked] + [state.finish]):
            for r, name in zip(part.tolist(), names):
                finish[r] = name
        state.finish = finish
        mask = state.attention_mask.new_zeros(rows, state.attention_mask.shape[1])  # [rows, S]
        state.attention_mask = mask.index_copy(0, state.origin, state.attention_mask)
        state.pending = None
        state.origin, state.batch_rows = None, 0
        self.parked = []


def _scatter(rows: int, where: list[torch.Tensor], parts: list[torch.Tensor | None], fill) -> torch.Tensor:
    """``[rows, ...]``: ``parts[i]`` (``[m_i, ...]``) at rows ``where[i]`` (``[m_i]``), ``fill`` in
    the rows of a part that is None (a trace that began after those rows left)."""
    some = next(p for p in parts if p is not None)
    out = torch.full((rows, *some.shape[1:]), fill, dtype=some.dtype, device=some.device)
    for idx, part in zip(where, parts):
        if part is not None:
            out.index_copy_(0, idx, part)
    return out
