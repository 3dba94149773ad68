"""Tree verification: several candidate continuations verified in one target pass.

A proposer that has several guesses (n-gram matches, the top-k of prediction heads) merges them
into a token tree (:mod:`.trie`) instead of betting on one: ``Draft.parents`` gives each node's
parent. The target then scores every node at once, as in SpecInfer (Miao et al., ASPLOS 2024,
arXiv:2305.09781), Medusa (Cai et al., ICML 2024, arXiv:2401.10774) and the verification tree of
S⁴C (He et al. 2025, arXiv:2506.14158):

* **Feeding** (:func:`tree_attention`): the pending token (the root, node 0) and the N nodes, in an
  order where parents precede children, are T new cache columns. Each sees the row's own columns
  plus its ancestors only (a 4-D mask ``[rows, 1, T, S + T]``) at position ``row length + depth``,
  so its logits are exactly those of the row continued by its root-to-node path. This needs a model
  that honours a custom 4-D mask (:meth:`decodekit.lm.LM.accepts_4d_mask`, eager cache); otherwise
  the strategy asks its proposer for a chain (its best single candidate).
* **Verification** (:func:`tree_verify`), lossless: at each node take the target's choice (the
  argmax of the processed scores; with ``do_sample=True`` a draw from the processed distribution);
  descend to the child carrying that token if there is one, else stop. The emitted tokens are the
  path's tokens followed by the target's choice at the last node (correction or bonus token). With
  sampling each emitted token is a fresh draw from the target given the tokens before it, so the
  output distribution is the target's exactly (deterministic drafts; draft models, whose drafts
  come with q, keep chain verification and speculative sampling).
* **Keeping** (:func:`keep_path_columns`): the row keeps the columns of its accepted root-to-node
  path and masks the others; ancestors precede descendants, so the positions later derived from the
  mask's cumsum stay consistent. Processors with a history (penalties, n-gram bans) see, at every
  node, the row's tokens followed by the node's own path (:func:`node_history`).

No host syncs: the descent is pointer doubling over a "next node" table.

Example (a root with children 5 and 7, and 7 -> 8; the target wants 7, then 8, then 9):
    >>> import torch
    >>> from decodekit.strategies.speculative.proposer import Draft
    >>> draft = Draft(torch.tensor([[5, 7, 8]]), torch.tensor([3]), parents=torch.tensor([[0, 0, 2]]))
    >>> tree = tree_shape(torch.tensor([4]), draft)
    >>> tree.depth
    tensor([[0, 1, 1, 2]])
    >>> scores = torch.nn.functional.one_hot(torch.tensor([[7, 0, 8, 9]]), 10).float()  # [1, 4, 10]
    >>> v = tree_verify(scores, tree, sample=False, generator=None)
    >>> v.accepted, v.tokens, v.path     # 7, 8 accepted, then the bonus 9; path root -> 2 -> 3
    (tensor([2]), tensor([[7, 8, 9, 0]]), tensor([[0, 2, 3, 3]]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decodekit.processors import History
from decodekit.state import DecodeState
from decodekit.strategies.speculative.proposer import Draft
from decodekit.strategies.speculative.verify import Verified, race

__all__ = ["TreeShape", "tree_shape", "tree_attention", "tree_verify", "keep_path_columns", "node_history"]


@dataclass(frozen=True)
class TreeShape:
    """One step's token trees; node 0 is the root (the row's last token), node i + 1 draft node i."""

    tokens: torch.Tensor  # [rows, N + 1] long: the root's token, then the nodes'
    parent: torch.Tensor  # [rows, N + 1] long: each node's parent (the root's: itself; invalid: the root)
    valid: torch.Tensor  # [rows, N + 1] bool: the root and the row's first ``count`` nodes
    ancestors: torch.Tensor  # [rows, N + 1, N + 1] bool: [r, i, j] = j is i or an ancestor of i
    depth: torch.Tensor  # [rows, N + 1] long: edges from the root
    paths: torch.Tensor  # [rows, N + 1, N] long: [r, i, d - 1] = the token at depth d on i's path

    @property
    def longest(self) -> torch.Tensor:  # [rows] long: depth of the row's deepest valid node
        return torch.where(self.valid, self.depth, 0).max(1).values


def tree_shape(root: torch.Tensor, draft: Draft) -> TreeShape:
    """The structure of ``draft``'s trees (``draft.parents`` set) under ``root [rows]`` (long)."""
    rows, N = draft.tokens.shape
    dev = draft.tokens.device
    idx = torch.arange(N + 1, device=dev)  # [N + 1]
    ar = torch.arange(rows, device=dev)  # [rows]
    valid = torch.cat([torch.ones(rows, 1, dtype=torch.bool, device=dev),
                       idx[None, :N] < draft.count[:, None]], 1)  # [rows, N + 1]
    parent = torch.where(valid[:, 1:], torch.minimum(draft.parents, idx[None, :N]).clamp_min(0), 0)  # [rows, N]
    parent = torch.cat([parent.new_zeros(rows, 1), parent], 1)  # [rows, N + 1]
    anc = torch.eye(N + 1, dtype=torch.bool, device=dev).repeat(rows, 1, 1)  # [rows, N + 1, N + 1]
    for i in range(1, N + 1):  # parents precede children: a parent's row is final when read
        anc[:, i] |= anc[ar, parent[:, i]]
    depth = anc.sum(-1) - 1  # [rows, N + 1]
    tokens = torch.cat([root[:, None], draft.tokens], 1)  # [rows, N + 1]
    slot = torch.where(anc & (idx > 0), depth[:, None, :] - 1, N)  # [rows, N + 1, N + 1]; N = discard
    paths = tokens.new_zeros(rows, N + 1, N + 1).scatter_(2, slot, tokens[:, None, :].expand(-1, N + 1, -1))
    return TreeShape(tokens, parent, valid, anc, depth, paths[..., :N])


def tree_attention(
    mask: torch.Tensor,  # [rows, S] long: the rows' cache columns before the pass
    tree: TreeShape,
    active: torch.Tensor,  # [rows] bool: running rows (finished ones see no new column)
    with_root: bool,  # the root (pending token) is fed too; else it is the row's last cache column
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs of the pass that feeds the tree: the 2-D mask ``[rows, S + T]`` (the rows own the new
    columns until verification), ``attend [rows, T, S + T]`` (own columns + ancestors) and the
    position ids ``[rows, T]`` (row length + depth); T = N + 1 with the root, else N."""
    first = 0 if with_root else 1
    new = tree.ancestors[:, first:, first:] & active[:, None, None]  # [rows, T, T]
    T = new.shape[1]
    attend = torch.cat([(mask > 0)[:, None, :].expand(-1, T, -1), new], -1)  # [rows, T, S + T]
    positions = mask.sum(-1, keepdim=True) + tree.depth[:, first:] - first  # [rows, T]
    return torch.cat([mask, active.to(mask.dtype)[:, None].expand(-1, T)], 1), attend, positions


def tree_verify(
    scores: torch.Tensor,  # [rows, N + 1, V] processed target logits at the root and every node
    tree: TreeShape,
    sample: bool,
    generator: torch.Generator | None,
) -> Verified:
    """Descend the tree along the target's choices (see the module docstring).

    Returns the emitted tokens ``[rows, N + 1]`` (valid up to ``accepted + 1``), the accepted node
    count ``[rows]`` (the final node's depth) and ``path [rows, N + 1]``: the node each emitted token
    was chosen at (root, ..., final node; the final node repeated after it).
    """
    rows, T, V = scores.shape
    idx = torch.arange(T, device=scores.device)  # [T]
    if sample:
        choice = race(scores.softmax(-1).reshape(rows * T, V), generator).view(rows, T)  # [rows, T]
    else:
        choice = scores.argmax(-1)  # [rows, T]
    child = (tree.parent[:, None, :] == idx[None, :, None]) & tree.valid[:, None, :] & (idx > 0)  # [rows, T, T]
    hit = child & (tree.tokens[:, None, :] == choice[:, :, None])  # [rows, i, j]: j carries i's choice
    nxt = torch.where(hit.any(-1), hit.long().argmax(-1), idx[None, :])  # [rows, T]; stop = stay
    for _ in range(max(T - 1, 1).bit_length()):  # pointer doubling: nxt^(2^m), 2^m > max depth
        nxt = nxt.gather(1, nxt)
    final = nxt[:, 0]  # [rows]
    accepted = tree.depth.gather(1, final[:, None])[:, 0]  # [rows]
    N = T - 1
    tokens = torch.cat([tree.paths.gather(1, final[:, None, None].expand(-1, 1, N))[:, 0],
                        choice.new_zeros(rows, 1)], 1)  # [rows, N + 1]
    tokens = tokens.scatter(1, accepted[:, None], choice.gather(1, final[:, None]))
    on_path = tree.ancestors.gather(1, final[:, None, None].expand(-1, 1, T))[:, 0]  # [rows, T]
    slot = torch.where(on_path, tree.depth, T)  # [rows, T]; T = discard
    path = final[:, None].repeat(1, T + 1).scatter_(1, slot, idx[None, :].expand(rows, -1))[:, :T]
    return Verified(tokens, accepted, path)


def keep_path_columns(
    state: DecodeState,
    path: torch.Tensor,  # [rows, N + 1] long: nodes of the accepted path (tree_verify)
    accepted: torch.Tensor,  # [rows] long: accepted nodes (0 for finished rows)
    active: torch.Tensor,  # [rows] bool
    with_root: bool,
) -> None:
    """Keep the new columns of the root-to-final-node path of each running row; mask the rest."""
    rows, T = path.shape
    on = torch.arange(T, device=path.device)[None, :] <= accepted[:, None]  # [rows, T]
    keep = torch.zeros(rows, T + 1, dtype=torch.bool, device=path.device)
    keep.scatter_(1, torch.where(on, path, T), True)
    keep = keep[:, (0 if with_root else 1):T] & active[:, None]  # [rows, new columns]
    state.attention_mask[:, -keep.shape[1]:] = keep.to(state.attention_mask.dtype)


def node_history(state: DecodeState, tree: TreeShape, i: int) -> History:
    """The history node ``i``'s next token is predicted from: the row's tokens, then i's path."""
    N = tree.paths.shape[2]
    ids = torch.cat([state.ids, state.ids.new_zeros(state.rows, N)], 1)  # [rows, W + N]
    cols = state.end[:, None] + torch.arange(N, device=ids.device)  # [rows, N]
    ids.scatter_(1, cols, tree.paths[:, i])
    return History(ids, state.start, state.end + tree.depth[:, i])
