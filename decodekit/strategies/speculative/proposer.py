"""The proposer interface: where draft tokens come from (n-gram lookup, a draft model, heads ...).

A proposer is built once per strategy and keeps nothing between decodes: its per-decode data (a
draft model's KV cache ...) lives in ``state.extra``. Per step the strategy calls

* ``propose(state, k, ctx) -> Draft``: up to ``k`` draft tokens per row, continuing each row's
  tokens ``state.ids[r, start[r]:end[r]]`` (the last of which is the pending token);
* ``accepted(state, draft, accepted)``: the verification result, so the proposer can roll back
  whatever it cached for the rejected drafts.

``gives_probs`` says whether ``Draft.probs`` holds the distributions the drafts were drawn from
(then speculative sampling divides by them); proposers without them are verified as deterministic
drafts (one-hot q).

A deterministic proposer with ``makes_trees = True`` may return a *token tree* instead of a chain
when ``ctx.tree`` is True (the model takes a 4-D mask): ``Draft.parents`` then gives each node's
parent, and several candidate continuations are verified in one pass (:mod:`.tree`; build one with
:func:`~decodekit.strategies.speculative.trie.merge_candidates`); ``accepted`` then reports the
depth of the accepted path, and ``state.extra["_spec_last_node"]`` (``[rows]`` long) its final
node's fed index (0 = the pending token, j + 1 = node j), e.g. to pick hidden states. With ``ctx.tree`` False it must return a chain (its best single
candidate).

Optional: ``bucket_priors`` (``{bucket: (p_first, p_next)}``), the prior acceptance rates of the
buckets a proposer puts in ``Draft.bucket`` (see :class:`~.draft_length.CostAwareLength`).

Optional: ``keep_rows(state, index)``: finished rows left the batch (:mod:`decodekit.compaction`;
with greedy verification); keep rows ``index [rows']`` of the proposer's per-row data in
``state.extra``. A proposer with per-row data (a draft model's KV cache, hidden states) must
implement it; one without it is taken to hold none.

Example (a proposer that always proposes token 7):
    >>> class Sevens:
    ...     gives_probs = False
    ...     def start(self, state): pass
    ...     def propose(self, state, k, ctx):
    ...         tokens = torch.full((state.rows, k), 7, device=state.ids.device)  # [rows, k]
    ...         return Draft(tokens, torch.full((state.rows,), k, device=state.ids.device))
    ...     def accepted(self, state, draft, accepted): pass
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol, runtime_checkable

import torch

from decodekit.processors import History
from decodekit.state import DecodeState

__all__ = ["Draft", "Proposer", "DraftContext", "DraftHistory"]


@dataclass(frozen=True)
class Draft:
    """Draft tokens of one step."""

    tokens: torch.Tensor  # [rows, k] long: proposals, valid up to count (other slots: any valid id)
    count: torch.Tensor  # [rows] long: valid proposals per row, 0..k
    probs: torch.Tensor | None = None  # [rows, k, V] float32: distributions the drafts were drawn from
    # [rows, k] long: a token tree (deterministic drafts only): node i's parent, 0 = the pending token,
    # j + 1 = node j < i (parents precede children; siblings carry distinct tokens). None = a chain.
    parents: torch.Tensor | None = None
    # [rows] long: a class of each row's drafts that predicts how often they are accepted (prompt
    # lookup: the matched n-gram's length), for the cost-aware draft length (:mod:`.draft_length`)
    bucket: torch.Tensor | None = None

    @staticmethod
    def empty(state: DecodeState) -> "Draft":
        z = state.ids.new_zeros(state.rows)  # [rows]
        return Draft(state.ids.new_zeros(state.rows, 0), z)


@dataclass(frozen=True)
class DraftContext:
    """What a proposer may need from the strategy to draft consistently with the verification."""

    sample: bool  # draw drafts (speculative sampling) rather than take the argmax (greedy verification)
    process: Callable[[DecodeState, torch.Tensor, History], torch.Tensor]  # logits [rows, V] -> scores
    tree: bool = False  # the strategy verifies token trees (Draft.parents) in this decode
    # the proposer may cut its drafts to the longest row's (one host sync); False: return all k
    # slots, the strategy picks the width (draft_policy="cost", :mod:`.width`)
    crop: bool = True


@runtime_checkable
class Proposer(Protocol):
    gives_probs: ClassVar[bool] | bool

    def start(self, state: DecodeState) -> None: ...

    def propose(self, state: DecodeState, k: int, ctx: DraftContext) -> Draft: ...

    def accepted(self, state: DecodeState, draft: Draft, accepted: torch.Tensor) -> None: ...


class DraftHistory:
    """Each row's tokens followed by the drafts so far, as a :class:`History` per draft position.

    ``history(i)`` is the history that the token at draft position i is predicted from (the row's
    tokens plus d_1..d_i), which is what penalty / n-gram processors must see.
    """

    def __init__(self, state: DecodeState, k: int):
        self.ids = torch.cat([state.ids, state.ids.new_zeros(state.rows, k)], 1)  # [rows, W + k]
        self.start = state.start  # [rows]
        self.end = state.end  # [rows]

    def write(self, i: int, tokens: torch.Tensor) -> None:
        """Store draft d_{i+1} (``tokens [rows]``)."""
        self.ids.scatter_(1, (self.end + i)[:, None], tokens[:, None])

    def write_all(self, drafts: torch.Tensor) -> None:
        """Store all drafts (``drafts [rows, k]``)."""
        cols = self.end[:, None] + torch.arange(drafts.shape[1], device=drafts.device)  # [rows, k]
        self.ids.scatter_(1, cols, drafts)

    def history(self, i: int) -> History:
        return History(self.ids, self.start, self.end + i)
