"""Draft-then-verify decoding: one step = propose k drafts, score them in one target pass, verify.

The base of every speculative decoder (prompt lookup, draft model, self-draft, heads); subclasses
only say where drafts come from (``make_proposer``). One step, for all rows at once:

1. the proposer drafts ``d_1..d_k`` per row (rows may have fewer: ``Draft.count``);
2. the target runs once on ``[pending, d_1..d_k]`` (``k + 1`` new cache columns per row) and gives
   the logits at every position; the strategy's and the caller's processors are applied per
   position with the history each position really has (row tokens + preceding drafts);
3. greedy verification, or speculative sampling with ``do_sample=True`` (:mod:`.verify`), gives the
   accepted count ``a`` per row and the emitted tokens ``d_1..d_a, t``;
4. each row keeps the cache columns of ``pending, d_1..d_a`` and masks those of ``d_{a+1}..d_k``;
   ``t`` becomes the pending token (not in the cache), as the core's state invariant demands. When
   the loop clips the step's tokens (EOS, length), ``StepOutput.cached`` lets ``state.append`` mask
   the columns of the clipped drafts too.

**Token trees** (:mod:`.tree`): a proposer may return several candidate continuations merged
into a tree (``Draft.parents``); where the model takes a 4-D mask (probed once per LM, eager cache)
the pass feeds every node, each seeing only its ancestors, and verification follows the target's
choices down the tree; the row keeps its accepted path's columns. Elsewhere proposers are asked for
a chain (``DraftContext.tree`` False). Either way the output is lossless.

Rows that accept different counts just mask different columns (BASS-style batches need no padding,
Qian et al. 2024, arXiv:2404.15778); with greedy verification each row's output equals its greedy
output alone. The draft length adapts per step (:mod:`.draft_length`): ``draft_policy="schedule"``
grows it by 2 when some row accepts its whole draft and shrinks it by 1 otherwise (BASS,
transformers' heuristic schedule); ``draft_policy="cost"`` (prompt lookup's default: its drafts
cost nothing) drafts ``max_draft_tokens`` and verifies the width that maximises the expected tokens
per unit of verify cost, 0 (a plain one-token step) where no row's drafts are worth a wider pass
(:mod:`.width`; its step has one host sync). On the CPU a pass over 2 tokens costs ~1.5 one-token
passes, so this matters (measured costs and speedups: :mod:`.draft_length`).

Stats (``Generation.stats.extra``): ``accepted_per_verify`` (mean accepted drafts per row-verify
with drafts), ``acceptance_rate`` (accepted / proposed drafts; a tree proposes all its nodes),
``tokens_per_step`` (mean tokens a running row gains per step), ``target_forwards_per_token``
(target passes incl. prefill, once per row they carried, per generated token; greedy = 1; a row
that finished and left the batch, :mod:`decodekit.compaction`, no longer counts), ``draft_tokens``
(the final draft length; with ``draft_policy="cost"`` the last step's width), ``tree_verifies``
(target passes that verified token trees).

Example:
    >>> gen = decodekit.generate(lm, "Rewrite: ...", "prompt_lookup", max_new_tokens=64)  # doctest: +SKIP
    >>> gen.stats.extra["accepted_per_verify"]                                        # doctest: +SKIP
"""

from __future__ import annotations

from typing import ClassVar

import torch

from decodekit.fast import FastCache
from decodekit.processors import History, apply_processors, build_processors
from decodekit.state import Candidate, DecodeState, StepOutput
from decodekit.strategies.base import Strategy
from decodekit.strategies.speculative.columns import crop_columns, trailing_unused
from decodekit.strategies.speculative.config import DraftVerifyConfig
from decodekit.strategies.speculative.draft_length import CostAwareLength, cost_of_device
from decodekit.strategies.speculative.graph_plan import STATS, LookupPlan
from decodekit.strategies.speculative.proposer import Draft, DraftContext, DraftHistory, Proposer
from decodekit.strategies.speculative.tree import (
    TreeShape, keep_path_columns, node_history, tree_attention, tree_shape, tree_verify,
)
from decodekit.strategies.speculative.verify import Verified, greedy_verify, sample_verify
from decodekit.strategies.speculative.width import WidthPicker

__all__ = ["DraftVerify"]

_RUN = "_spec_run"  # state.extra key of the per-decode counters


class _Run:
    """Per-decode data of a draft-verify decode: draft length and counters (host ints)."""

    def __init__(self, k: int):
        self.k = k
        self.accepted = 0  # accepted drafts, summed over running rows
        self.proposed = 0  # proposed drafts, summed over running rows
        self.verifies = 0  # (row, step) pairs where the row had drafts
        self.row_steps = 0  # (row, step) pairs where the row was running
        self.row_forwards = 0  # (row, target pass) pairs: rows each target pass carried
        self.tree_verifies = 0  # target passes over a token tree
        self.trees = False  # token trees allowed in this decode (set in init)
        self.fixed = False  # draft_policy="auto" on a step-graph fast path: k drafts every step
        self.widths: WidthPicker | None = None  # draft_policy="cost": picks each step's width
        self.device_stats: torch.Tensor | None = None  # [5] counters kept on the device (.graph_plan.STATS)

    def fold_device_stats(self) -> None:
        """Add the counters a graph-replayed decode kept on the device (one host read)."""
        if self.device_stats is not None:
            vals = dict(zip(STATS, self.device_stats.tolist()))
            self.device_stats = None
            for name, v in vals.items():
                setattr(self, name, getattr(self, name) + v)


class DraftVerify(Strategy):
    """Base of the draft-then-verify strategies; subclasses implement :meth:`make_proposer`."""

    Config = DraftVerifyConfig
    graph_safe: ClassVar[bool] = False  # syncs once per step (draft length, cache trim)
    uses_generator: ClassVar[bool] = True  # with do_sample=True

    def __init__(self, config: DraftVerifyConfig | None = None, **options):
        super().__init__(config, **options)
        self.processors = build_processors(**self.config.processor_options())
        self._fixed = False  # this decode verifies a fixed width (draft_policy="auto", set in init)

    @property
    def lagged_stops(self) -> bool:
        """At a fixed width with greedy verification a step over finished rows changes nothing: the
        loop may check stops one step late (and on the fast path replay prompt lookup's whole step)."""
        return not ((self.config.adaptive and not self._fixed) or self.config.do_sample)

    def graph_plan(self, state: DecodeState, stopping, body) -> LookupPlan | None:
        """Prompt lookup's step from CUDA graphs (:mod:`.graph_plan`) where it applies: drafts the
        proposer makes on the device, greedy verification at a fixed width, no processors, chains."""
        run: _Run = state.extra[_RUN]
        proposer = state.extra["_spec_proposer"]
        if not getattr(proposer, "device_drafts", False) or run.trees or self.processors \
                or not self.lagged_stops:
            return None
        return LookupPlan(self, state, stopping, run)

    @property
    def compactable(self) -> bool:
        """With greedy verification rows are independent and deterministic: finished rows may leave
        the batch. Speculative sampling keeps them: its draws and the batch's draft width depend on
        which rows are in the batch, so the same seed would give other tokens."""
        return not self.config.do_sample

    # ------------------------------------------------------------------ extension point
    def make_proposer(self, state: DecodeState) -> Proposer:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ protocol
    def init(self, state: DecodeState) -> DecodeState:
        proposer = self.make_proposer(state)
        proposer.start(state)
        state.extra["_spec_proposer"] = proposer
        run = state.extra[_RUN] = _Run(self.config.draft_tokens)
        run.trees = bool(getattr(proposer, "makes_trees", False)) and self.trees_supported(state)
        cfg = self.config
        # auto: a fixed width where whole steps replay (adaptive=False keeps draft_tokens, fixed anyway)
        run.fixed = self._fixed = (cfg.draft_policy == "auto" and cfg.adaptive
                                   and self._replays_steps(state, proposer, run))
        if run.fixed:
            run.k = cfg.graph_draft_tokens or self._graph_width(state)
        cost_aware = cfg.draft_policy == "cost" or (cfg.draft_policy == "auto" and not run.fixed)
        if cfg.adaptive and cost_aware and not run.trees:  # trees keep the schedule
            cost = cost_of_device(state.lm.device.type, cfg.verify_cost)
            policy = CostAwareLength(cfg.max_draft_tokens, cost, getattr(proposer, "bucket_priors", None))
            run.widths = WidthPicker(policy)
        return state

    @staticmethod
    def _graph_width(state: DecodeState) -> int:
        """``graph_draft_tokens=None``: the most drafts whose verify forward stays on the decode
        step's layer kernels (:meth:`~decodekit.fast.fused.FusedLlama.gemv_tokens`; a small model at
        batch 1: 3), at most 4, if at least 3; else 4. On an H200 the default model's prompt lookup on a
        summarisation prompt ran at 0.99-1.02x greedy with 3 drafts a step (a 4-token verify through
        the GEMV kernels) against 0.95x with 4 (a 5-token verify through cuBLAS), in three calls; and
        the verify's layers then round as greedy's do, so near-ties cannot make the output differ
        there (benchmarks/bench_gpu.py, BENCHMARKS.md)."""
        from decodekit.fast.slab import bucket  # (import cycle)

        gemv_tokens = getattr(getattr(state.cache.path, "eager_fn", None), "gemv_tokens", None)
        drafts = min((gemv_tokens() if gemv_tokens is not None else 0) // bucket(state.rows) - 1, 4)
        return drafts if drafts >= 3 else 4

    def _replays_steps(self, state: DecodeState, proposer, run: _Run) -> bool:
        """Whether this decode's whole steps can replay from CUDA graphs at a fixed width
        (:meth:`graph_plan`): a CUDA fast path with step graphs, a proposer drafting on the device,
        greedy verification, single chains, no processors."""
        from decodekit.fast.cache import FastCache  # (import cycle)

        cache = state.cache
        return (isinstance(cache, FastCache) and bool(getattr(cache.path, "step_graphs", False))
                and bool(getattr(proposer, "device_drafts", False)) and not run.trees
                and not self.processors and not state.user_processors and not self.config.do_sample)

    def step(self, state: DecodeState) -> StepOutput:
        run: _Run = state.extra[_RUN]
        proposer: Proposer = state.extra["_spec_proposer"]
        widths = run.widths
        ctx = DraftContext(self.config.do_sample, self._process, tree=run.trees, crop=widths is None)
        if widths is not None:  # cost-aware: draft the most, then pick the width (the one host sync)
            draft = widths.pick(state, proposer.propose(state, self.config.max_draft_tokens, ctx), run)
        else:
            draft = proposer.propose(state, run.k, ctx) if run.k > 0 else Draft.empty(state)
        k = draft.tokens.shape[1]
        tree = self._tree(state, draft, run) if draft.parents is not None and k > 0 else None
        active = ~state.done  # [rows]
        hidden = bool(getattr(proposer, "needs_hidden", False))
        logits = self._score(state, draft.tokens, active, hidden, tree)  # [rows, k + 1, V] raw target logits
        run.row_forwards += state.rows * int(state.pending is not None or k > 0)  # a target pass ran
        scores = self._process_block(state, logits, draft.tokens, tree)  # [rows, k + 1, V]
        if tree is None:
            v = self.verify(state, scores, draft)
            accepted = torch.where(active, v.accepted, 0)  # [rows]
            self._keep_columns(state, accepted, active, k)
        else:  # the emitted tokens' logits: those of the nodes along the accepted path
            v = tree_verify(scores, tree, self.config.do_sample, state.generator)
            accepted = torch.where(active, v.accepted, 0)  # [rows]
            keep_path_columns(state, v.path, accepted, active, state.pending is not None)
            state.extra["_spec_last_node"] = v.path.gather(1, accepted[:, None])[:, 0]  # [rows]: for proposers
            logits = logits.gather(1, v.path[..., None].expand(-1, -1, logits.shape[-1]))  # [rows, k + 1, V]
        proposer.accepted(state, draft, accepted)
        if widths is not None:
            widths.keep(draft, accepted, active)  # read with the next step's sync
        else:
            self._account(state, run, draft.count, draft.count if tree is None else tree.longest, accepted, active)
        return self.emitted(state, logits, v.tokens, accepted)

    @staticmethod
    def emitted(state: DecodeState, logits: torch.Tensor, tokens: torch.Tensor,
                accepted: torch.Tensor) -> StepOutput:
        """The step's output: each row's ``accepted [rows]`` drafts and the target's next token
        (``tokens [rows, k + 1]``), with their log-probs under ``logits [rows, k + 1, V]``; the
        logits after the last accepted draft become ``state.next_logits``. The accepted drafts are
        in the cache (``cached``); the last token is pending."""
        logprobs = DraftVerify.token_logprobs(logits, tokens)  # [rows, k + 1]
        state.next_logits = DraftVerify.logits_after(logits, accepted)  # [rows, V]
        return StepOutput(tokens, accepted + 1, logprobs, logits, cached=accepted)

    @staticmethod
    def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Log-probs ``[rows, T]`` of ``tokens [rows, T]`` under ``logits [rows, T, V]``."""
        return torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]

    @staticmethod
    def logits_after(logits: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
        """``logits [rows, T, V]`` at each row's position ``accepted [rows]``: ``[rows, V]``."""
        return logits.gather(1, accepted[:, None, None].expand(-1, 1, logits.shape[-1]))[:, 0]

    def keep_rows(self, state: DecodeState, index: torch.Tensor) -> None:
        """Finished rows leave the batch: the width picker's held verification (counted now), per-row
        tensors the step leaves for the proposer, the proposer's own per-row data (``Proposer.keep_rows``)."""
        run: _Run = state.extra[_RUN]
        if run.widths is not None:
            run.widths.keep_rows(run)
        for key in ("_spec_last_node", "_spec_hidden"):  # [rows], [rows, T, H]
            if isinstance(state.extra.get(key), torch.Tensor):
                state.extra[key] = state.extra[key].index_select(0, index)
        keep = getattr(state.extra["_spec_proposer"], "keep_rows", None)  # optional (Proposer docs)
        if keep is not None:
            keep(state, index)

    @staticmethod
    def trees_supported(state: DecodeState) -> bool:
        """Whether this decode may verify token trees: the model takes a custom 4-D mask
        (:meth:`~decodekit.lm.LM.accepts_4d_mask`) and the cache is eager (not the fast path)."""
        probe = getattr(state.lm, "accepts_4d_mask", None)
        return probe is not None and not isinstance(state.cache, FastCache) and bool(probe())

    @staticmethod
    def _tree(state: DecodeState, draft: Draft, run: _Run) -> TreeShape:
        if not run.trees or draft.probs is not None:
            raise ValueError("a proposer returned a token tree where it may not: only deterministic drafts, "
                             "and only when DraftContext.tree is True")
        run.tree_verifies += 1
        root = state.ids.gather(1, (state.end - 1)[:, None])[:, 0]  # [rows] pending or last prompt token
        return tree_shape(root, draft)

    def finalize(self, state: DecodeState) -> list[list[Candidate]]:
        run: _Run = state.extra[_RUN]
        if run.widths is not None:
            run.widths.flush(run)
        run.fold_device_stats()
        new_tokens = max(int(state.n_new.sum()), 1)
        state.extra.update({
            "stat_accepted_per_verify": run.accepted / max(run.verifies, 1),
            "stat_acceptance_rate": run.accepted / max(run.proposed, 1),
            "stat_tokens_per_step": new_tokens / max(run.row_steps, 1),
            "stat_target_forwards_per_token": (state.rows + run.row_forwards) / new_tokens,
            "stat_draft_tokens": run.k,
            "stat_tree_verifies": run.tree_verifies,
        })
        return super().finalize(state)

    def verify(self, state: DecodeState, scores: torch.Tensor, draft: Draft) -> Verified:
        """Greedy verification, or speculative sampling with ``do_sample=True``, of ``scores
        [rows, k + 1, V]`` (processed target logits); subclasses may use other criteria."""
        if self.config.do_sample:
            return sample_verify(scores.softmax(-1), draft.tokens, draft.count, draft.probs, state.generator)
        return greedy_verify(scores, draft.tokens, draft.count)

    # ------------------------------------------------------------------ pieces
    def _process(self, state: DecodeState, logits: torch.Tensor, history: History) -> torch.Tensor:
        """Caller's processors then the strategy's, on ``logits [rows, V]`` with ``history``."""
        for proc in state.user_processors:
            logits = proc(logits, history)
        return apply_processors(self.processors, logits, history) if self.processors else logits

    def _process_block(self, state: DecodeState, logits: torch.Tensor, drafts: torch.Tensor,
                       tree: TreeShape | None = None) -> torch.Tensor:
        """Processed scores ``[rows, k + 1, V]`` of ``logits [rows, k + 1, V]``: position i sees the
        row's tokens followed by ``drafts[:, :i]`` (``[rows, k]``) as its history; in a tree, node
        i's path."""
        if not self.processors and not state.user_processors:
            return logits
        if tree is not None:
            return torch.stack([self._process(state, logits[:, i], node_history(state, tree, i))
                                for i in range(logits.shape[1])], 1)
        history = DraftHistory(state, drafts.shape[1])
        history.write_all(drafts)
        return torch.stack([self._process(state, logits[:, i], history.history(i))
                            for i in range(logits.shape[1])], 1)

    @staticmethod
    def _score(state: DecodeState, drafts: torch.Tensor, active: torch.Tensor, hidden: bool,
               tree: TreeShape | None = None) -> torch.Tensor:
        """One target pass over ``[pending, drafts]``; returns logits ``[rows, k + 1, V]``.

        The new columns are masked for finished rows (they gain nothing). Without a pending token
        (first step) the prefill's ``next_logits`` give position 0. With ``hidden`` the last hidden
        states of the pass go to ``state.extra["_spec_hidden"]`` (``[rows, T, H]``, T new columns).
        With a ``tree`` each node sees only its ancestors (:func:`.tree.tree_attention`).
        """
        feed = drafts if state.pending is None else torch.cat([state.pending[:, None], drafts], 1)  # [rows, T]
        if feed.shape[1] == 0:
            return state.next_logits[:, None]  # [rows, 1, V]
        if tree is None:
            new = active.long()[:, None].expand(-1, feed.shape[1])  # [rows, T]
            mask = torch.cat([state.attention_mask, new], 1)  # [rows, S + T]
            out = state.lm.forward(feed, state.cache, mask, hidden=hidden)
        else:
            mask, attend, pos = tree_attention(state.attention_mask, tree, active, state.pending is not None)
            out = state.lm.forward(feed, state.cache, mask, hidden=hidden, attend=attend, position_ids=pos)
        state.attention_mask = mask
        if hidden:
            state.extra["_spec_hidden"] = out.hidden  # [rows, T, H]
        if state.pending is None:
            return torch.cat([state.next_logits[:, None], out.logits], 1)  # [rows, k + 1, V]
        return out.logits  # [rows, k + 1, V]

    @staticmethod
    def _keep_columns(state: DecodeState, accepted: torch.Tensor, active: torch.Tensor, k: int) -> None:
        """Keep the columns of pending + the accepted drafts; mask the rejected drafts' columns."""
        if k == 0:
            return
        T = k + int(state.pending is not None)  # new columns of this step
        keep = DraftVerify.kept_columns(accepted, active, T, k)  # [rows, T]
        state.attention_mask[:, -T:] = keep.to(state.attention_mask.dtype)

    @staticmethod
    def kept_columns(accepted: torch.Tensor, active: torch.Tensor, T: int, k: int) -> torch.Tensor:
        """Which of a step's ``T`` new columns (``[pending,] d_1..d_k``) a row keeps ([rows, T] bool):
        the pending token's and the ``accepted [rows]`` drafts', for ``active [rows]`` rows."""
        j = torch.arange(T, device=accepted.device)[None, :]  # [1, T]
        return (j < (T - k + accepted)[:, None]) & active[:, None]

    def _account(self, state, run: _Run, count, longest, accepted, active) -> None:
        """Counters, the adaptive draft length, and cropping columns no row uses (one host sync).
        ``count [rows]``: drafts (tree nodes) proposed; ``longest [rows]``: the longest candidate."""
        has = active & (count > 0)  # [rows]
        full = has & (accepted == longest)  # [rows]
        vals = torch.stack([accepted.sum(), torch.where(has, count, 0).sum(),
                            has.sum(), active.sum(), full.any().long(), trailing_unused(state.attention_mask)])
        acc, proposed, verifies, running, any_full, unused = vals.tolist()  # the step's one host sync
        run.accepted += acc
        run.proposed += proposed
        run.verifies += verifies
        run.row_steps += running
        state.attention_mask = crop_columns(state.lm, state.cache, state.attention_mask, unused)
        cfg = self.config
        if cfg.adaptive and not run.fixed and verifies:
            run.k = min(run.k + 2, cfg.max_draft_tokens) if any_full else max(run.k - 1, 1)
