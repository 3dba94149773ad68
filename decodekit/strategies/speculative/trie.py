"""Merging candidate continuations into a token tree (a trie) for tree verification.

Several candidates of one row that share a prefix share its nodes: the tree has one node per
distinct candidate prefix. Nodes are numbered depth first-major (all depth-1 nodes, then depth 2,
...; within a depth in candidate order), so parents precede children and candidate 0's nodes come
first at every depth. The result is a :class:`~decodekit.strategies.speculative.proposer.Draft`
with ``parents`` (0 = the pending token, j + 1 = node j), verified by :mod:`.tree`.

Vectorised over rows (no host sync; the caller trims the width to the largest node count).

Example (candidates "7 8 9" and "7 5" share the node 7):
    >>> import torch
    >>> d = merge_candidates(torch.tensor([[[7, 8, 9], [7, 5, 0]]]), torch.tensor([[3, 2]]))
    >>> d.tokens[0, :4].tolist(), d.parents[0, :4].tolist(), d.count.tolist()
    ([7, 8, 5, 9], [0, 1, 1, 2], [4])
"""

from __future__ import annotations

import torch

from decodekit.strategies.speculative.proposer import Draft

__all__ = ["merge_candidates"]


def merge_candidates(
    candidates: torch.Tensor,  # [rows, C, k] long: candidate continuations, valid up to counts
    counts: torch.Tensor,  # [rows, C] long: length of each candidate (0 = none)
) -> Draft:
    """The trie of each row's candidates: ``tokens``/``parents`` ``[rows, C * k]``, ``count [rows]``."""
    rows, C, k = candidates.shape
    dev = candidates.device
    depth = torch.arange(k, device=dev)  # [k]
    valid = depth[None, None, :] < counts[..., None]  # [rows, C, k]
    same = (candidates[:, :, None, :] == candidates[:, None, :, :]).long().cumprod(-1) > 0  # [rows, C, C', k]
    # the candidate whose prefix (up to depth d) node stands for (c, d): the first valid one equal to it
    owner = (same & valid[:, None, :, :]).long().argmax(2)  # [rows, C, k]
    new = valid & (owner == torch.arange(C, device=dev)[None, :, None])  # [rows, C, k]: (c, d) is a node
    flat = new.transpose(1, 2).reshape(rows, k * C)  # [rows, k * C], depth-major order
    number = (flat.long().cumsum(1) - 1).view(rows, k, C)  # [rows, k, C]: node index of (d, c) if new
    node = number.gather(2, owner.transpose(1, 2))  # [rows, k, C]: the node standing for (c, d)
    parent = torch.cat([node.new_zeros(rows, 1, C), node[:, :-1] + 1], 1)  # [rows, k, C]
    slot = torch.where(flat, number.reshape(rows, k * C), k * C)  # [rows, k * C]; k * C = discard
    width = k * C + 1
    tokens = candidates.new_zeros(rows, width).scatter_(1, slot, candidates.transpose(1, 2).reshape(rows, k * C))
    parents = candidates.new_zeros(rows, width).scatter_(1, slot, parent.reshape(rows, k * C))
    return Draft(tokens[:, :-1], flat.sum(1), parents=parents[:, :-1])
