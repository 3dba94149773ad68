"""The cost-aware draft width of one step, with the step's one host sync (``draft_policy="cost"``).

The proposer drafts up to ``max_draft_tokens`` per row (cheap proposers only: prompt lookup) and
marks each row's drafts with a bucket (``Draft.bucket``: the matched n-gram's length). One
``tolist`` then reads, together:

* each row's draft count and bucket, and its remaining budget ``limit - n_new``;
* the previous step's verification (widths, accepted counts, buckets, running rows), kept as
  tensors until now, so the counters and the policy's estimates are updated without a sync of
  their own;
* how many trailing cache columns no row uses (cropped here, before the next pass).

:class:`~.draft_length.CostAwareLength` then picks the width ``W`` (0 = a plain one-token step)
and every row verifies ``min(count, W)`` drafts.

**Rows in a batch are weighted by how far behind they are.** A dense batch runs until its slowest
row is done, so tokens gained by a row that is ahead shorten nothing: row r's tokens count
``exp(-(R - r_rem) / 2)``, ``r_rem`` its remaining budget and ``R`` the largest among running rows.
Simulated on the recorded lookups of the 8 grounded prompts in batches of 4 with the measured CPU
costs, unweighted rows gave 0.82x greedy's speed, weighted rows 0.98x (one non-copying row in each
batch bounds it: a batch cannot finish before it). Since finished rows leave the batch
(:mod:`decodekit.compaction`), a row that is ahead also saves its share of the passes after it
finishes, and the batch's cost (``rows``) is that of the rows still in it; simulated again, the
weights still do best (1.05x; equal weights 0.99x; measured: 1.03x).
"""

from __future__ import annotations

import math

import torch

from decodekit.state import DecodeState
from decodekit.strategies.speculative.columns import crop_columns, trailing_unused
from decodekit.strategies.speculative.draft_length import CostAwareLength
from decodekit.strategies.speculative.proposer import Draft

__all__ = ["WidthPicker", "LAG_TOKENS"]

LAG_TOKENS = 2.0  # a row's weight falls by e for every LAG_TOKENS tokens it is ahead of the slowest


class WidthPicker:
    """Per-decode: the policy, and the previous step's verification waiting for the next sync."""

    def __init__(self, policy: CostAwareLength):
        self.policy = policy
        self.last: torch.Tensor | None = None  # [4, rows] long: widths, accepted, buckets, active
        self.width = 0  # the last chosen width

    def pick(self, state: DecodeState, draft: Draft, run) -> Draft:
        """The step's one host sync; returns ``draft`` cut to the chosen width (``[rows, W]``)."""
        rows = state.rows
        count = torch.where(state.done, 0, draft.count)  # [rows] finished rows need no drafts
        bucket = draft.bucket if draft.bucket is not None else torch.zeros_like(count)  # [rows]
        last = self.last if self.last is not None else count.new_zeros(4, rows)  # [4, rows]
        now = torch.stack([count, bucket, state.limit - state.n_new, state.done.long()])  # [4, rows]
        flat = torch.cat([now.flatten(), last.flatten(), trailing_unused(state.attention_mask)[None]])
        vals = flat.tolist()  # the step's one host sync
        counts, buckets, remaining, done = (vals[i * rows:(i + 1) * rows] for i in range(4))
        widths, accepted, last_buckets, active = (vals[(4 + i) * rows:(5 + i) * rows] for i in range(4))
        self._account(run, widths, accepted, last_buckets, active)
        state.attention_mask = crop_columns(state.lm, state.cache, state.attention_mask, vals[-1])
        W = self.policy.choose(counts, buckets, _weights(remaining, done))
        self.width = run.k = W
        return Draft(draft.tokens[:, :W], count.clamp(max=W), bucket=bucket)

    def keep(self, draft: Draft, accepted: torch.Tensor, active: torch.Tensor) -> None:
        """Hold this step's verification (``[rows]`` each) for the next sync."""
        bucket = draft.bucket if draft.bucket is not None else torch.zeros_like(accepted)
        self.last = torch.stack([torch.where(active, draft.count, 0), accepted, bucket, active.long()])

    def keep_rows(self, run) -> None:
        """Finished rows leave the batch: count the held verification now (it has their last
        step), rather than at the next step's sync (a host read, only when rows leave)."""
        self.flush(run)

    def flush(self, run) -> None:
        """Count the last step (at the end of a decode)."""
        if self.last is not None:
            widths, accepted, buckets, active = self.last.tolist()
            self._account(run, widths, accepted, buckets, active)
            self.last = None

    def _account(self, run, widths, accepted, buckets, active) -> None:
        run.accepted += sum(accepted)
        run.proposed += sum(widths)
        run.verifies += sum(1 for w in widths if w > 0)
        run.row_steps += sum(active)
        self.policy.observe(widths, accepted, buckets)


def _weights(remaining: list[int], done: list[int]) -> list[float]:
    """Each running row's weight: 1 for the slowest, less the further ahead it is (0 if finished)."""
    live = [r for r, d in zip(remaining, done) if not d]
    most = max(live, default=0)
    return [0.0 if d else math.exp(-(most - r) / LAG_TOKENS) for r, d in zip(remaining, done)]
