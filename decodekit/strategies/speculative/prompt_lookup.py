"""Prompt-lookup decoding: drafts copied from the text after an earlier match of its last n-gram.

The draft for a row is found in its own tokens (prompt + generated so far): take the row's last n
tokens, find their most recent earlier occurrence, and propose the (up to) k tokens that followed
it; longer n-grams are tried first (``max_ngram`` down to ``min_ngram``). No draft model, no
training: it pays off whenever the output copies from the input (summaries, rewrites, code edits,
RAG answers). The idea is Saxena's "prompt lookup decoding" (2023,
github.com/apoorvumang/prompt-lookup-decoding), transformers' ``prompt_lookup_num_tokens``;
verification is lossless (:mod:`.verify`): with greedy verification the output equals greedy.

The search is vectorised over rows and positions (``unfold`` + compare, no Python loop over rows
or history). Each draft carries its matched n-gram's length as its bucket (``Draft.bucket``): on
the 8 grounded prompts (SmolLM2-135M, greedy) the first copied token was accepted 21% of the time
after a 1-gram match, 59% after a 2-gram and 89% after a 3-gram. By default (``draft_policy="auto"``)
the width depends on where the decode runs:

* where whole steps replay from CUDA graphs (a GPU fast path, greedy verification, no processors:
  :mod:`.graph_plan`), every step verifies ``graph_draft_tokens`` drafts -- by default as many as
  keep the verify forward on the decode step's kernels (3 for a small model at batch 1), else 4; no
  host sync, the lookup and the bookkeeping in one kernel (:mod:`decodekit.fast.lookup_step`);
* elsewhere (``draft_policy="cost"``, :mod:`.draft_length`) the strategy turns those rates, learnt
  further per decode, into the verify width: long after good matches, none (a plain one-token
  step) after poor ones or where nothing matches; the step then has one host sync.

With ``draft_policy="schedule"`` the verify pass is as wide as the longest draft under the
grow/shrink schedule.

**Tree mode** (``num_candidates > 1``): instead of betting on the best match, take up to
``num_candidates`` distinct continuations from different matches (ranked like the single one:
longer n-gram first, then the more recent), merge them into a trie (:mod:`.trie`) and verify all
of them in one pass with a tree attention mask (:mod:`.tree`; SpecInfer / Medusa style). Up to
``num_candidates * draft_tokens`` nodes per step. Where the model does not take a 4-D mask (or on
the CUDA-graph fast path) the best candidate alone is verified, as with ``num_candidates=1``.

Example:
    >>> lm = decodekit.load()                                                          # doctest: +SKIP
    >>> text = "Rewrite in the past tense: The cat sits on the mat and looks at the door."
    >>> decodekit.generate(lm, text, strategy="prompt_lookup").text                   # doctest: +SKIP
    'The cat sat on the mat and looked at the door.'
    >>> gen = decodekit.generate(lm, text, "prompt_lookup", num_candidates=4)         # doctest: +SKIP
    >>> gen.stats.extra["tree_verifies"], gen.stats.extra["accepted_per_verify"]      # doctest: +SKIP
"""

from __future__ import annotations

import torch

from decodekit.registry import register_strategy
from decodekit.state import DecodeState
from decodekit.strategies.speculative.config import PromptLookupConfig
from decodekit.strategies.speculative.proposer import Draft, DraftContext
from decodekit.strategies.speculative.strategy import DraftVerify
from decodekit.strategies.speculative.trie import merge_candidates

__all__ = ["PromptLookup", "PromptLookupProposer", "lookup", "lookup_candidates"]


def lookup(
    ids: torch.Tensor,  # [rows, W] long: row r's tokens are ids[r, start[r]:end[r]]
    start: torch.Tensor,  # [rows] long
    end: torch.Tensor,  # [rows] long
    k: int,
    max_ngram: int,
    min_ngram: int,
) -> Draft:
    """Per row: the ``k`` tokens following the most recent earlier match of its longest matching
    suffix n-gram (``max_ngram`` .. ``min_ngram``); ``count`` is 0 where nothing matches;
    ``bucket`` is the matched n-gram's length (0 = none).

    >>> ids = torch.tensor([[5, 6, 7, 8, 9, 5, 6]])
    >>> d = lookup(ids, torch.tensor([0]), torch.tensor([7]), k=3, max_ngram=2, min_ngram=1)
    >>> d.tokens, d.count, d.bucket
    (tensor([[7, 8, 9]]), tensor([3]), tensor([2]))
    """
    rows, W = ids.shape
    device = ids.device
    cont = torch.full((rows,), -1, dtype=torch.long, device=device)  # [rows] where the copy starts
    size = torch.zeros(rows, dtype=torch.long, device=device)  # [rows] the matched n-gram's length
    for n in range(max_ngram, min_ngram - 1, -1):
        if W < n + 1:
            continue
        windows = ids.unfold(1, n, 1)  # [rows, W - n + 1, n]
        first = torch.arange(W - n + 1, device=device)  # [W - n + 1] window starts
        suffix_cols = (end[:, None] - n + torch.arange(n, device=device)).clamp(0, W - 1)  # [rows, n]
        suffix = ids.gather(1, suffix_cols)  # [rows, n]: the row's last n tokens
        # a window must lie in the row and be followed by at least one token (so not the suffix itself)
        valid = (first[None, :] >= start[:, None]) & (first[None, :] + n < end[:, None])  # [rows, W - n + 1]
        valid &= (end - start >= n)[:, None]
        match = (windows == suffix[:, None, :]).all(-1) & valid  # [rows, W - n + 1]
        latest = torch.where(match, first[None, :], -1).max(1).values  # [rows], -1 = none
        found = (cont < 0) & (latest >= 0)  # [rows]
        cont = torch.where(found, latest + n, cont)  # [rows]
        size = torch.where(found, n, size)  # [rows]
    count = torch.where(cont >= 0, (end - cont).clamp(max=k), 0)  # [rows]
    cols = (cont.clamp_min(0)[:, None] + torch.arange(k, device=device)).clamp(max=W - 1)  # [rows, k]
    return Draft(ids.gather(1, cols), count, bucket=size)


def lookup_candidates(
    ids: torch.Tensor,  # [rows, W] long: row r's tokens are ids[r, start[r]:end[r]]
    start: torch.Tensor,  # [rows] long
    end: torch.Tensor,  # [rows] long
    k: int,
    max_ngram: int,
    min_ngram: int,
    num: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``num`` distinct continuations per row (``[rows, num, k]`` tokens, ``[rows, num]``
    lengths, 0 = none), from different matches ranked as in :func:`lookup` (longer n-gram, then
    more recent): candidate 0 is :func:`lookup`'s draft. A continuation that is a prefix of a better
    ranked one is skipped.

    >>> ids = torch.tensor([[5, 6, 7, 5, 8, 5, 6, 9, 5]])
    >>> c, n = lookup_candidates(ids, torch.tensor([0]), torch.tensor([9]), 2, 2, 1, num=3)
    >>> [c[0, i, :n[0, i]].tolist() for i in range(3)]
    [[6, 9], [8, 5], [6, 7]]
    """
    rows, W = ids.shape
    device = ids.device
    j = torch.arange(W + 1, device=device)  # [W + 1] continuation starts
    score = torch.full((rows, W + 1), -1, dtype=torch.long, device=device)  # [rows, W + 1]
    for n in range(max_ngram, min_ngram - 1, -1):
        if W < n + 1:
            continue
        windows = ids.unfold(1, n, 1)  # [rows, W - n + 1, n]
        first = torch.arange(W - n + 1, device=device)  # [W - n + 1]
        suffix_cols = (end[:, None] - n + torch.arange(n, device=device)).clamp(0, W - 1)  # [rows, n]
        suffix = ids.gather(1, suffix_cols)  # [rows, n]
        valid = (first[None, :] >= start[:, None]) & (first[None, :] + n < end[:, None])  # [rows, W - n + 1]
        valid &= (end - start >= n)[:, None]
        match = (windows == suffix[:, None, :]).all(-1) & valid  # [rows, W - n + 1]
        at = torch.cat([match.new_zeros(rows, n), match], 1)  # [rows, W + 1]: by continuation start
        score = torch.where(at, torch.maximum(score, n * (W + 1) + j), score)
    M = min(W + 1, 4 * num)  # look at a few more matches than needed: some repeat others
    best, cont = score.topk(M, 1)  # [rows, M] each, best first
    count = torch.where(best >= 0, (end[:, None] - cont).clamp(0, k), 0)  # [rows, M]
    d = torch.arange(k, device=device)  # [k]
    tokens = ids.gather(1, (cont[..., None] + d).clamp(max=W - 1).view(rows, M * k)).view(rows, M, k)
    # m repeats m' < m when m's tokens are a prefix of m''s
    eq = (tokens[:, :, None, :] == tokens[:, None, :, :]) | (d >= count[:, :, None, None])  # [rows, M, M', k]
    covered = eq.all(-1) & (count[:, :, None] <= count[:, None, :])  # [rows, M, M']
    covered &= torch.ones(M, M, dtype=torch.bool, device=device).tril(-1)  # only better-ranked m'
    keep = (count > 0) & ~covered.any(-1)  # [rows, M]
    rank = torch.where(keep & (keep.long().cumsum(1) <= num), keep.long().cumsum(1) - 1, num)  # [rows, M]
    out = tokens.new_zeros(rows, num + 1, k).scatter_(1, rank[..., None].expand(-1, -1, k), tokens)
    lengths = count.new_zeros(rows, num + 1).scatter_(1, rank, count)  # [rows, num + 1]
    return out[:, :num], lengths[:, :num]


class PromptLookupProposer:
    """Drafts by n-gram lookup in each row's prompt and generated text (deterministic drafts)."""

    gives_probs = False
    # prior (p_first, p_next) acceptance by matched n-gram length, measured on the 8 grounded prompts
    # (SmolLM2-135M, greedy, all positions): 1-gram 0.21 / ~0.65, 2-gram 0.59 / ~0.8, 3-gram 0.89 / ~0.93
    PRIORS = {1: (0.3, 0.65), 2: (0.6, 0.8), 3: (0.85, 0.9)}  # longer n-grams: as 3

    def __init__(self, max_ngram: int, min_ngram: int, num_candidates: int = 1):
        self.bucket_priors = {n: self.PRIORS[min(n, 3)] for n in range(min_ngram, max_ngram + 1)}
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.num_candidates = num_candidates
        self.makes_trees = num_candidates > 1  # token trees where the strategy allows them
        self.device_drafts = num_candidates == 1  # propose(crop=False) reads nothing on the host

    def start(self, state: DecodeState) -> None:
        pass

    def propose(self, state: DecodeState, k: int, ctx: DraftContext) -> Draft:
        if ctx.tree and self.num_candidates > 1:
            return self._propose_tree(state, k)
        draft = lookup(state.ids, state.start, state.end, k, self.max_ngram, self.min_ngram)
        count = torch.where(state.done, 0, draft.count)  # [rows] finished rows need no drafts
        if not ctx.crop:  # the strategy picks the width (draft_policy="cost")
            return Draft(draft.tokens, count, bucket=draft.bucket)
        width = int(count.max())  # host sync: the verify pass is only as wide as the longest draft
        return Draft(draft.tokens[:, :width], count, bucket=draft.bucket)

    def _propose_tree(self, state: DecodeState, k: int) -> Draft:
        cands, lengths = lookup_candidates(state.ids, state.start, state.end, k, self.max_ngram,
                                           self.min_ngram, self.num_candidates)  # [rows, C, k], [rows, C]
        lengths = torch.where(state.done[:, None], 0, lengths)  # finished rows need no drafts
        tree = merge_candidates(cands, lengths)
        width = int(tree.count.max())  # host sync: the verify pass is only as wide as the largest tree
        if width == 0:
            return Draft.empty(state)
        return Draft(tree.tokens[:, :width], tree.count, parents=tree.parents[:, :width])

    def accepted(self, state: DecodeState, draft: Draft, accepted: torch.Tensor) -> None:
        pass

    def keep_rows(self, state: DecodeState, index: torch.Tensor) -> None:
        pass  # no per-row data: drafts come from state.ids


@register_strategy("prompt_lookup")
class PromptLookup(DraftVerify):
    """Prompt-lookup decoding: n-gram drafts from the prompt and the generated text, verified by the
    target (greedy, or lossless speculative sampling with ``do_sample=True``).

    Example:
        >>> decodekit.generate(lm, passage_prompt, "prompt_lookup", max_ngram=2)  # doctest: +SKIP
        >>> decodekit.generate(lm, passage_prompt, "prompt_lookup", num_candidates=4)  # a token tree  # doctest: +SKIP
    """

    Config = PromptLookupConfig

    def make_proposer(self, state: DecodeState) -> PromptLookupProposer:
        c = self.config
        return PromptLookupProposer(c.max_ngram, c.min_ngram, c.num_candidates)
