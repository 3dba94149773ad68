"""Prompt-lookup decoding: drafts copied from the text after an earlier match of its last n-gram.

The draft for a row is found in its own tokens (prompt + generated so far): take the row's last n
tokens, find their most recent earlier occurrence, and propose the (up to) k tokens that followed
it; longer n-grams are tried first (``max_ngram`` down to ``min_ngram``). No draft model, no
training: it pays off whenever the output copies from the input (summaries, rewrites, code edits,
RAG answers). The idea is Saxena's "prompt lookup decoding" (2023,
github.com/apoorvumang/prompt-lookup-decoding), transformers' ``prompt_lookup_num_tokens``;
verification is lossless (:mod:`.verify`): with greedy verification the output equals greedy.

The search is vectorised over rows and positions (``unfold`` + compare); one host sync per step
reads the longest draft, so the verify pass is no wider than needed (no match anywhere = a plain
one-token step).

Example:
    >>> lm = decodekit.load()                                                          # doctest: +SKIP
    >>> text = "Rewrite in the past tense: The cat sits on the mat and looks at the door."
    >>> decodekit.generate(lm, text, strategy="prompt_lookup").text                   # doctest: +SKIP
    'The cat sat on the mat and looked at the door.'
"""

from __future__ import annotations

import torch

from decodekit.registry import register_strategy
from decodekit.state import DecodeState
from decodekit.strategies.speculative.config import PromptLookupConfig
from decodekit.strategies.speculative.proposer import Draft, DraftContext
from decodekit.strategies.speculative.strategy import DraftVerify

__all__ = ["PromptLookup", "PromptLookupProposer", "lookup"]


def lookup(
    ids: torch.Tensor,  # [rows, W] long: row r's tokens are ids[r, start[r]:end[r]]
    start: torch.Tensor,  # [rows] long
    end: torch.Tensor,  # [rows] long
    k: int,
    max_ngram: int,
    min_ngram: int,
) -> Draft:
    """Per row: the ``k`` tokens following the most recent earlier match of its longest matching
    suffix n-gram (``max_ngram`` .. ``min_ngram``); ``count`` is 0 where nothing matches.

    >>> ids = torch.tensor([[5, 6, 7, 8, 9, 5, 6]])
    >>> d = lookup(ids, torch.tensor([0]), torch.tensor([7]), k=3, max_ngram=2, min_ngram=1)
    >>> d.tokens, d.count
    (tensor([[7, 8, 9]]), tensor([3]))
    """
    rows, W = ids.shape
    device = ids.device
    cont = torch.full((rows,), -1, dtype=torch.long, device=device)  # [rows] where the copy starts
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
        cont = torch.where((cont < 0) & (latest >= 0), latest + n, cont)  # [rows]
    count = torch.where(cont >= 0, (end - cont).clamp(max=k), 0)  # [rows]
    cols = (cont.clamp_min(0)[:, None] + torch.arange(k, device=device)).clamp(max=W - 1)  # [rows, k]
    return Draft(ids.gather(1, cols), count)


class PromptLookupProposer:
    """Drafts by n-gram lookup in each row's prompt and generated text (deterministic drafts)."""

    gives_probs = False

    def __init__(self, max_ngram: int, min_ngram: int):
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def start(self, state: DecodeState) -> None:
        pass

    def propose(self, state: DecodeState, k: int, ctx: DraftContext) -> Draft:
        draft = lookup(state.ids, state.start, state.end, k, self.max_ngram, self.min_ngram)
        count = torch.where(state.done, 0, draft.count)  # [rows] finished rows need no drafts
        width = int(count.max())  # host sync: the verify pass is only as wide as the longest draft
        return Draft(draft.tokens[:, :width], count)

    def accepted(self, state: DecodeState, draft: Draft, accepted: torch.Tensor) -> None:
        pass


@register_strategy("prompt_lookup")
class PromptLookup(DraftVerify):
    """Prompt-lookup decoding: n-gram drafts from the prompt and the generated text, verified by the
    target (greedy, or lossless speculative sampling with ``do_sample=True``).

    Example:
        >>> decodekit.generate(lm, passage_prompt, "prompt_lookup", max_ngram=2)  # doctest: +SKIP
    """

    Config = PromptLookupConfig

    def make_proposer(self, state: DecodeState) -> PromptLookupProposer:
        return PromptLookupProposer(self.config.max_ngram, self.config.min_ngram)
