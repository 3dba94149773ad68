"""Speculative decoding with a draft model (Leviathan et al. ICML 2023, arXiv:2211.17192; Chen et al.
2023, arXiv:2302.01318): a small LM with the target's tokenizer drafts k tokens autoregressively,
the target verifies them in one pass.

The draft keeps its own KV cache, with the same column discipline as the target (per-row attention
mask, holes for rejected drafts). It tracks how many of each row's tokens it holds (``held``); each
propose first *catches up* on the row's tokens it has not seen (the first call is its prefill; after
a verify it is the target's correction / bonus token, plus the last draft when all were accepted),
fed as one right-aligned block whose unused leading columns are masked. After verification the
columns of rejected drafts are masked; if the loop clipped tokens (EOS, length) or a monitor rolled
a row back, the catch-up masks what the draft holds beyond the row's tokens.

With ``do_sample=True`` the draft samples from its processed distribution q (same temperature /
top-k / top-p as the target) and hands q to speculative sampling; otherwise it proposes its argmax.

Example:
    >>> target = decodekit.load("path/to/big")                                  # doctest: +SKIP
    >>> draft = decodekit.load("path/to/small")         # same tokenizer         # doctest: +SKIP
    >>> decodekit.generate(target, "Hello", "speculative", draft=draft, draft_tokens=4)  # doctest: +SKIP
"""

from __future__ import annotations

import torch

from decodekit.registry import register_strategy
from decodekit.state import DecodeState
from decodekit.strategies.speculative.columns import crop_columns, mask_newest, trailing_unused
from decodekit.strategies.speculative.config import SpeculativeConfig
from decodekit.strategies.speculative.proposer import Draft, DraftContext, DraftHistory
from decodekit.strategies.speculative.strategy import DraftVerify
from decodekit.strategies.speculative.verify import race

__all__ = ["Speculative", "DraftModelProposer", "DraftCache", "check_same_vocab"]


def check_same_vocab(target, draft) -> None:
    """ValueError unless ``draft`` (an LM) shares ``target``'s vocabulary (size and token strings)."""
    if draft.vocab_size != target.vocab_size:
        raise ValueError(
            f"speculative: the draft's vocabulary has {draft.vocab_size} tokens, the target's "
            f"{target.vocab_size}; the draft must use the target's tokenizer")
    if target.tokenizer is draft.tokenizer:
        return
    vt, vd = (getattr(lm.tokenizer, "get_vocab", None) for lm in (target, draft))
    if vt is not None and vd is not None:
        if vt() != vd():
            raise ValueError("speculative: the draft's tokenizer maps tokens to different ids than the "
                             "target's; the draft must use the target's tokenizer")
    elif type(target.tokenizer) is not type(draft.tokenizer):
        raise ValueError(f"speculative: the draft's tokenizer ({type(draft.tokenizer).__name__}) differs "
                         f"from the target's ({type(target.tokenizer).__name__})")


class DraftCache:
    """A draft LM's KV cache for the rows of one decode."""

    def __init__(self, lm, state: DecodeState):
        self.lm = lm
        self.cache = lm.new_cache()
        self.mask = state.attention_mask.new_zeros(state.rows, 0)  # [rows, S_d] long
        self.held = torch.zeros_like(state.n_new)  # [rows] long: row tokens in the draft cache
        self.forwards = 0

    def catch_up(self, state: DecodeState) -> torch.Tensor:
        """Feed each row's tokens the draft has not seen; returns next-token logits ``[rows, V]``."""
        total = state.end - state.start  # [rows] row tokens, the pending one included
        excess = (self.held - total).clamp_min(0)  # [rows] clipped / rolled back since
        self.mask = mask_newest(self.mask, excess)
        self.held = self.held - excess
        missing = total - self.held  # [rows]
        T = max(int(missing.max()), 1)  # host sync: block width
        j = torch.arange(T, device=total.device)[None, :]  # [1, T]
        cols = (state.end[:, None] - T + j).clamp_min(0)  # [rows, T] right-aligned on the row's end
        block = state.ids.gather(1, cols)  # [rows, T]
        fresh = (j >= T - missing[:, None]).long()  # [rows, T]: leading unused columns masked
        self.held = self.held + fresh.sum(1)
        return self._forward(block, fresh)

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one draft token per row (``tokens [rows]``); returns next-token logits ``[rows, V]``."""
        self.held = self.held + 1
        return self._forward(tokens[:, None], torch.ones_like(tokens)[:, None])

    def keep(self, fed: int, kept: torch.Tensor) -> None:
        """Of the ``fed`` drafts just fed, keep the first ``kept [rows]``; mask the others' columns."""
        if fed > 0:
            drop = fed - kept.clamp(max=fed)  # [rows]
            self.mask = mask_newest(self.mask, drop)
            self.held = self.held - drop
        unused = int(trailing_unused(self.mask))  # host sync
        self.mask = crop_columns(self.lm, self.cache, self.mask, unused)

    def keep_rows(self, index: torch.Tensor) -> None:
        """Keep rows ``index [rows']`` (finished rows left the batch)."""
        self.lm.select_rows(self.cache, index)
        self.mask = self.mask.index_select(0, index)  # [rows', S_d]
        self.held = self.held.index_select(0, index)  # [rows']
        unused = int(trailing_unused(self.mask))  # host sync (only when rows left)
        self.mask = crop_columns(self.lm, self.cache, self.mask, unused)

    def _forward(self, ids: torch.Tensor, new_mask: torch.Tensor) -> torch.Tensor:
        mask = torch.cat([self.mask, new_mask], 1)  # [rows, S_d + T]
        out = self.lm.forward(ids, self.cache, mask)
        self.mask = mask
        self.forwards += 1
        return out.logits[:, -1]  # [rows, V]


class DraftModelProposer:
    """Drafts ``k`` tokens autoregressively with a draft LM (its own cache in ``state.extra``)."""

    gives_probs = True

    def __init__(self, draft):
        self.draft = draft

    def start(self, state: DecodeState) -> None:
        check_same_vocab(state.lm, self.draft)
        state.extra["_spec_draft_cache"] = DraftCache(self.draft, state)

    def propose(self, state: DecodeState, k: int, ctx: DraftContext) -> Draft:
        dc: DraftCache = state.extra["_spec_draft_cache"]
        logits = dc.catch_up(state)  # [rows, V]
        history = DraftHistory(state, k)
        tokens, probs = [], []
        for i in range(k):
            scores = ctx.process(state, logits, history.history(i))  # [rows, V]
            if ctx.sample:
                q = scores.softmax(-1)  # [rows, V]
                t = race(q, state.generator)  # [rows]
                probs.append(q)
            else:
                t = scores.argmax(-1)  # [rows]
            history.write(i, t)
            tokens.append(t)
            if i < k - 1:
                logits = dc.feed(t)
        state.extra["stat_draft_forward_passes"] = dc.forwards
        count = torch.full_like(state.n_new, k)  # [rows]
        return Draft(torch.stack(tokens, 1), count, torch.stack(probs, 1) if probs else None)

    def accepted(self, state: DecodeState, draft: Draft, accepted: torch.Tensor) -> None:
        k = draft.tokens.shape[1]
        state.extra["_spec_draft_cache"].keep(max(k - 1, 0), accepted)

    def keep_rows(self, state: DecodeState, index: torch.Tensor) -> None:
        state.extra["_spec_draft_cache"].keep_rows(index)


@register_strategy("speculative")
class Speculative(DraftVerify):
    """Speculative decoding / sampling with a draft LM that shares the target's tokenizer.

    Example:
        >>> decodekit.generate(lm, "Hi", "speculative", draft=small_lm, do_sample=True, seed=0)  # doctest: +SKIP
    """

    Config = SpeculativeConfig

    def __init__(self, config: SpeculativeConfig | None = None, **options):
        super().__init__(config, **options)
        self._draft = None

    def make_proposer(self, state: DecodeState) -> DraftModelProposer:
        if self._draft is None:
            from decodekit.lm import load

            self._draft = load(self.config.draft, device=state.lm.device)
        return DraftModelProposer(self._draft)
