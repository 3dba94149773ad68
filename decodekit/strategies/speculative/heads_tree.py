"""Token trees from prediction heads (Medusa-style top-k, Cai et al., ICML 2024, arXiv:2401.10774).

A chain of head proposals fails at its first wrong token; a head's second or third guess is often
right. With ``tree_top_k = K > 1`` the blockwise proposer drafts ``1 + n (K - 1)`` candidates over
``n`` heads: the heads' best chain, and for every depth d and rank j = 2..K the chain that takes the
head's j-th best token at depth d and continues with the best ones after it (sequential heads see
that token). The candidates are merged into a trie (:mod:`.trie`) and verified in one target pass
(:mod:`.tree`): losslessly, with greedy verification or sampling, since the drafts are
deterministic.

Example:
    >>> decodekit.generate(lm, prompt, "blockwise", heads=heads, tree_top_k=3)      # doctest: +SKIP
"""

from __future__ import annotations

import torch

from decodekit.processors import History
from decodekit.state import DecodeState
from decodekit.strategies.speculative.proposer import Draft, DraftContext
from decodekit.strategies.speculative.trie import merge_candidates

__all__ = ["deviations", "heads_tree"]


def deviations(n: int, top_k: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per candidate: the depth where it leaves the best chain (-1: never) and the rank it takes
    there (0 = best). Candidate 0 is the best chain; ``[C]`` long each, ``C = 1 + n (top_k - 1)``.

    >>> deviations(2, 3)
    (tensor([-1,  0,  0,  1,  1]), tensor([0, 1, 2, 1, 2]))
    """
    depth = [-1] + [d for d in range(n) for _ in range(top_k - 1)]
    rank = [0] + [j for _ in range(n) for j in range(1, top_k)]
    return torch.tensor(depth, device=device), torch.tensor(rank, device=device)


def heads_tree(heads, state: DecodeState, h: torch.Tensor, n: int, top_k: int, ctx: DraftContext) -> Draft:
    """The heads' candidate tree for every row, from the hidden state ``h [rows, H]`` that predicted
    the pending token; ``n`` heads deep. One host sync (the tree width)."""
    rows, C = state.rows, 1 + n * (top_k - 1)
    dev = h.device
    dev_depth, dev_rank = deviations(n, top_k, dev)  # [C] each
    lm_head, embed = state.lm.model.get_output_embeddings(), state.lm.model.get_input_embeddings()
    dtype = heads.blocks[0].linear.weight.dtype
    hc = h.to(dtype)[:, None, :].expand(rows, C, -1).reshape(rows * C, -1)  # [rows * C, H]
    ids = torch.cat([state.ids, state.ids.new_zeros(rows, n)], 1).repeat_interleave(C, 0)  # [rows * C, W + n]
    start, end = state.start.repeat_interleave(C), state.end.repeat_interleave(C)  # [rows * C]
    prev = state.pending.repeat_interleave(C)  # [rows * C]
    tokens = []
    for i in range(n):
        with torch.inference_mode():
            x = heads.step(i, hc, embed(prev).to(dtype) if heads.sequential else None)
            logits = lm_head(x.to(lm_head.weight.dtype)).float()  # [rows * C, V]
        scores = ctx.process(state, logits, History(ids, start, end + i))  # [rows * C, V]
        top = scores.topk(top_k, -1).indices.view(rows, C, top_k)  # [rows, C, top_k]
        rank = torch.where(dev_depth == i, dev_rank, 0)  # [C]
        tok = top.gather(2, rank[None, :, None].expand(rows, -1, 1))[..., 0]  # [rows, C]
        tokens.append(tok)
        prev = tok.reshape(rows * C)
        ids.scatter_(1, (end + i)[:, None], prev[:, None])
    cands = torch.stack(tokens, 2)  # [rows, C, n]
    tree = merge_candidates(cands, torch.full((rows, C), n, device=dev))
    width = int(tree.count.max())  # host sync: the verify pass is only as wide as the largest tree
    return Draft(tree.tokens[:, :width], tree.count, parents=tree.parents[:, :width])
