"""Blockwise parallel decoding (Stern, Shazeer, Uszkoreit, NeurIPS 2018, arXiv:1811.03115).

Prediction heads on the target's last hidden state (:mod:`.heads`) propose the next tokens; the target
verifies them in one pass, and — Stern's *combined scoring and proposal* — the same pass yields the
hidden state from which the heads propose the next block, so each step costs one target call plus
the heads. The hidden state used is the one at the position that predicted the step's last token
(the correction / bonus token, which becomes pending): head i proposes the token i positions after it.

Acceptance criteria (Stern §4):

* ``exact`` (default): greedy verification; the output equals greedy decoding whatever the heads say;
* ``top_k``: accept a proposal if it is among the target's ``accept_top_k`` most likely tokens
  (``accept_top_k=1`` is exact); faster, no longer equal to greedy;
* ``min_block``: accept at least ``min_block`` tokens per step even when verification fails
  (``min_block=1`` is exact).

``do_sample=True`` uses the heads' (processed) distributions as q in lossless speculative sampling.

``tree_top_k > 1`` (Medusa-style, :mod:`.heads_tree`): also draft the heads' 2nd..k-th guesses
and verify all candidates in one pass as a token tree (exact criterion; where the model takes a 4-D
mask, else the best chain as above).

Example:
    >>> heads, _ = load_heads("heads.safetensors")                                  # doctest: +SKIP
    >>> decodekit.generate(lm, "Explain ...", "blockwise", heads=heads).stats.extra  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from decodekit.config import check
from decodekit.registry import register_strategy
from decodekit.state import DecodeState
from decodekit.strategies.speculative.config import DraftVerifyConfig
from decodekit.strategies.speculative.heads import BlockwiseHeads, load_heads
from decodekit.strategies.speculative.heads_tree import heads_tree
from decodekit.strategies.speculative.proposer import Draft, DraftContext, DraftHistory
from decodekit.strategies.speculative.strategy import DraftVerify
from decodekit.strategies.speculative.verify import Verified, race

__all__ = ["Blockwise", "BlockwiseConfig", "HeadsProposer", "stern_verify"]


@dataclass(frozen=True)
class BlockwiseConfig(DraftVerifyConfig):
    strategy_name = "blockwise"
    heads: Any = field(default=None, metadata={"help": "BlockwiseHeads or a .safetensors path (None: untrained zero-init heads)"})
    num_heads: int = field(default=4, metadata={"help": "heads to create when heads=None"})
    draft_tokens: int = field(default=4, metadata={"help": "proposals per step (at most the number of heads)"})
    adaptive: bool = field(default=False, metadata={"help": "adapt the block size (heads bound it)"})
    criterion: Literal["exact", "top_k"] = field(default="exact", metadata={"help": "Stern's acceptance criterion"})
    accept_top_k: int = field(default=2, metadata={"help": "criterion=top_k: accept proposals among the target's top k"})
    min_block: int = field(default=1, metadata={"help": "accept at least this many tokens per step (1 = exact)"})
    tree_top_k: int = field(default=1, metadata={
        "help": "Medusa-style token tree: also verify each head's top-k alternatives (1 = a chain)"})

    def validate(self) -> None:
        super().validate()
        check(self.num_heads >= 1, f"blockwise: num_heads must be >= 1, got {self.num_heads}")
        check(self.accept_top_k >= 1, f"blockwise: accept_top_k must be >= 1, got {self.accept_top_k}")
        check(self.min_block >= 1, f"blockwise: min_block must be >= 1, got {self.min_block}")
        approximate = self.criterion != "exact" or self.min_block > 1
        check(not (approximate and self.do_sample),
              "blockwise: criterion='top_k' and min_block > 1 are greedy criteria; not with do_sample=True")
        check(1 <= self.tree_top_k <= 8, f"blockwise: tree_top_k must be in 1..8, got {self.tree_top_k}")
        check(not (approximate and self.tree_top_k > 1),
              "blockwise: tree_top_k > 1 verifies token trees exactly; not with criterion='top_k' or min_block > 1")
        check(self.heads is None or isinstance(self.heads, (BlockwiseHeads, str)) or hasattr(self.heads, "__fspath__"),
              f"blockwise: heads must be BlockwiseHeads or a path, got {type(self.heads).__name__}")


def stern_verify(
    scores: torch.Tensor,  # [rows, k + 1, V] processed target logits
    drafts: torch.Tensor,  # [rows, k] long
    count: torch.Tensor,  # [rows] long
    top_k: int = 1,
    min_block: int = 1,
) -> Verified:
    """Stern's criteria: accept while each proposal is in the target's top ``top_k``; at least
    ``min_block - 1`` proposals are kept; then the target's argmax. ``top_k = min_block = 1`` is exact.

    >>> s = torch.tensor([[[0., 2, 1], [3, 0, 2], [0, 0, 1]]])       # argmax 1, 0, 2; 2nd best 2, 2
    >>> stern_verify(s, torch.tensor([[2, 2]]), torch.tensor([2]), top_k=2).tokens
    tensor([[2, 2, 2]])
    """
    k = drafts.shape[1]
    target = scores.argmax(-1)  # [rows, k + 1]
    if top_k > 1:
        top = scores[:, :k].topk(min(top_k, scores.shape[-1]), -1).indices  # [rows, k, top_k]
        ok = (top == drafts[..., None]).any(-1)  # [rows, k]
    else:
        ok = drafts == target[:, :k]  # [rows, k]
    ok &= torch.arange(k, device=drafts.device)[None, :] < count[:, None]
    accepted = ok.long().cumprod(1).sum(1)  # [rows]
    accepted = torch.maximum(accepted, count.clamp(max=min_block - 1))  # [rows]
    j = torch.arange(k + 1, device=drafts.device)[None, :]  # [1, k + 1]
    padded = torch.cat([drafts, drafts.new_zeros(drafts.shape[0], 1)], 1)  # [rows, k + 1]
    return Verified(torch.where(j < accepted[:, None], padded, target), accepted)


class HeadsProposer:
    """Proposals from the heads on the hidden state that predicted each row's pending token."""

    gives_probs = True
    needs_hidden = True

    def __init__(self, heads: BlockwiseHeads, tree_top_k: int = 1):
        self.heads = heads
        self.tree_top_k = tree_top_k
        self.makes_trees = tree_top_k > 1  # Medusa-style trees where the strategy allows them

    def start(self, state: DecodeState) -> None:
        if self.heads.hidden_size != state.lm.config.hidden_size:
            raise ValueError(f"blockwise: the heads are for hidden size {self.heads.hidden_size}, the "
                             f"model's is {state.lm.config.hidden_size}")
        state.extra["_bpd_hidden"] = None  # [rows, H] once a target pass has run

    def propose(self, state: DecodeState, k: int, ctx: DraftContext) -> Draft:
        h = state.extra["_bpd_hidden"]
        n = min(k, self.heads.num_heads)
        if h is None or n == 0:
            return Draft.empty(state)
        if ctx.tree and self.tree_top_k > 1:
            return heads_tree(self.heads, state, h, n, self.tree_top_k, ctx)
        lm_head, embed = state.lm.model.get_output_embeddings(), state.lm.model.get_input_embeddings()
        dtype = self.heads.blocks[0].linear.weight.dtype
        history = DraftHistory(state, n)
        tokens, probs = [], []
        prev = state.pending  # [rows] the token the hidden state predicted; head 1 predicts the next
        for i in range(n):
            with torch.inference_mode():
                x = self.heads.step(i, h.to(dtype), embed(prev).to(dtype) if self.heads.sequential else None)
                logits = lm_head(x.to(lm_head.weight.dtype)).float()  # [rows, V]
            scores = ctx.process(state, logits, history.history(i))  # [rows, V]
            if ctx.sample:
                probs.append(scores.softmax(-1))
                tokens.append(race(probs[-1], state.generator))
            else:
                tokens.append(scores.argmax(-1))
            history.write(i, tokens[-1])
            prev = tokens[-1]
        count = torch.full_like(state.n_new, n)  # [rows]
        return Draft(torch.stack(tokens, 1), count, torch.stack(probs, 1) if probs else None)

    def keep_rows(self, state: DecodeState, index: torch.Tensor) -> None:
        if state.extra["_bpd_hidden"] is not None:  # [rows, H]
            state.extra["_bpd_hidden"] = state.extra["_bpd_hidden"].index_select(0, index)

    def accepted(self, state: DecodeState, draft: Draft, accepted: torch.Tensor) -> None:
        hidden = state.extra.pop("_spec_hidden", None)  # [rows, T, H]: T = k + 1 (pending + drafts)
        last = state.extra.pop("_spec_last_node", None)  # [rows]: a tree's final node (its column)
        if hidden is None or hidden.shape[1] != draft.tokens.shape[1] + 1:
            return  # first step (nothing pending was fed): no hidden state yet
        at = accepted if last is None else last  # [rows]: the column that predicted the new pending token
        index = at[:, None, None].expand(-1, 1, hidden.shape[-1])  # [rows, 1, H]
        state.extra["_bpd_hidden"] = hidden.gather(1, index)[:, 0]  # [rows, H]


@register_strategy("blockwise")
class Blockwise(DraftVerify):
    """Blockwise parallel decoding with prediction heads (train them with ``decodekit train-heads``).

    Example:
        >>> decodekit.generate(lm, prompt, "blockwise", heads="heads.safetensors")  # doctest: +SKIP
        >>> decodekit.generate(lm, prompt, "blockwise", heads="heads.safetensors", tree_top_k=3)  # doctest: +SKIP
    """

    Config = BlockwiseConfig

    def __init__(self, config: BlockwiseConfig | None = None, **options):
        super().__init__(config, **options)
        heads = self.config.heads
        self.heads = load_heads(heads)[0] if heads is not None and not isinstance(heads, BlockwiseHeads) else heads

    def make_proposer(self, state: DecodeState) -> HeadsProposer:
        if self.heads is None:  # untrained: every head starts as the model's own head
            self.heads = BlockwiseHeads(state.lm.config.hidden_size, self.config.num_heads)
        self.heads.to(device=state.lm.device).eval()
        return HeadsProposer(self.heads, self.config.tree_top_k)

    def verify(self, state: DecodeState, scores: torch.Tensor, draft: Draft) -> Verified:
        c = self.config
        if c.do_sample or (c.criterion == "exact" and c.min_block == 1):
            return super().verify(state, scores, draft)
        top_k = c.accept_top_k if c.criterion == "top_k" else 1
        return stern_verify(scores, draft.tokens, draft.count, top_k, c.min_block)
