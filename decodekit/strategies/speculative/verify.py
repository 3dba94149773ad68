"""Verification shared by every proposer: greedy verification and lossless speculative sampling.

Both take the target's scores at the k + 1 positions of one verify pass (after the row's tokens and
after each of its drafts d_1..d_k) and return, per row, how many drafts were accepted (``a``) and
the emitted tokens ``tokens[:, :a + 1]``: the accepted drafts followed by one token of the target
(the correction at the first rejection, or the *bonus* token when every draft was accepted).

* **Greedy verification** (Stern et al. 2018, arXiv:1811.03115, exact criterion; the temperature-0
  case of Leviathan et al. 2023): accept the longest prefix where ``d_i == argmax p_i``; the target's
  argmax at the next position is the correction / bonus token. The output equals greedy decoding
  whatever the drafts are.
* **Speculative sampling** (Leviathan, Kalman, Matias, ICML 2023, arXiv:2211.17192, Alg. 1; Chen et
  al. 2023, arXiv:2302.01318): accept d_i with probability ``min(1, p_i(d_i) / q_i(d_i))``; at the
  first rejection emit a token from the normalised residual ``(p_i - q_i)+``; when all k are accepted
  emit a bonus token from ``p_{k+1}``. The emitted tokens are distributed exactly as the target's
  ``p`` (after temperature / top-k / top-p, applied to both p and q by the caller). Drafts with no
  distribution (n-gram lookup) are verified as if ``q_i`` were one-hot on d_i: accept with
  probability ``p_i(d_i)``, on rejection sample from ``p_i`` without d_i.

No host syncs: the accepted length is a cumprod over the match mask; draws use the exponential race.

Example:
    >>> import torch
    >>> scores = torch.tensor([[[0., 5, 0], [0, 0, 5], [5, 0, 0]]])   # argmax 1, 2, 0
    >>> v = greedy_verify(scores, torch.tensor([[1, 0]]), torch.tensor([2]))
    >>> v.accepted, v.tokens                # d_1 = 1 accepted, d_2 = 0 rejected: correction 2
    (tensor([1]), tensor([[1, 2, 0]]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Verified", "greedy_verify", "sample_verify", "race"]


@dataclass(frozen=True)
class Verified:
    """Result of verifying one block of drafts per row."""

    tokens: torch.Tensor  # [rows, k + 1] long: emitted tokens, valid up to accepted + 1
    accepted: torch.Tensor  # [rows] long: accepted drafts, 0..count
    # [rows, k + 1] long: tree verification: the node (fed index) each emitted token was chosen at;
    # None for a chain (token i at position i)
    path: torch.Tensor | None = None


def race(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw one index per row from unnormalised ``probs [rows, V]`` (>= 0): ``argmax(probs / E)``,
    ``E ~ Exp(1)`` (the exponential race; no normalisation, no host sync). Returns ``[rows]`` long.

    >>> race(torch.tensor([[0.0, 2.0, 0.0]]), torch.Generator().manual_seed(0))
    tensor([1])
    """
    e = torch.empty_like(probs).exponential_(1.0, generator=generator)  # [rows, V]
    return torch.argmax(probs / e.clamp_min(torch.finfo(probs.dtype).tiny), dim=-1)  # [rows]


def _valid(drafts: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """[rows, k] bool: which draft slots hold a proposal (``count [rows]``)."""
    return torch.arange(drafts.shape[1], device=drafts.device)[None, :] < count[:, None]


def greedy_verify(
    scores: torch.Tensor,  # [rows, k + 1, V] processed target logits at each position
    drafts: torch.Tensor,  # [rows, k] long
    count: torch.Tensor,  # [rows] long: valid drafts per row
) -> Verified:
    """Accept the longest draft prefix equal to the target's argmax; then the target's own token.

    The emitted tokens are simply the target's argmax at positions 0..a (they equal the drafts before
    position a).
    """
    target = scores.argmax(-1)  # [rows, k + 1]
    match = (drafts == target[:, :-1]) & _valid(drafts, count)  # [rows, k]
    accepted = match.long().cumprod(1).sum(1)  # [rows]
    return Verified(target, accepted)


def sample_verify(
    p: torch.Tensor,  # [rows, k + 1, V] target probabilities (processed: temperature, top-k/p ...)
    drafts: torch.Tensor,  # [rows, k] long
    count: torch.Tensor,  # [rows] long: valid drafts per row
    q: torch.Tensor | None,  # [rows, k, V] draft probabilities the drafts were drawn from; None = one-hot
    generator: torch.Generator | None,
) -> Verified:
    """Speculative sampling (Leviathan et al. 2023, Alg. 1): lossless accept / residual / bonus."""
    rows, k = drafts.shape
    if k == 0:
        return Verified(race(p[:, 0], generator)[:, None], count.new_zeros(rows))
    p_x = p[:, :k].gather(-1, drafts[..., None])[..., 0]  # [rows, k]: p_i(d_i)
    q_x = q.gather(-1, drafts[..., None])[..., 0] if q is not None else torch.ones_like(p_x)  # [rows, k]
    u = torch.rand(rows, k, generator=generator, device=p.device, dtype=p.dtype)  # [rows, k] U[0, 1)
    ok = (u * q_x < p_x) & _valid(drafts, count)  # [rows, k]: u < p/q
    accepted = ok.long().cumprod(1).sum(1)  # [rows]
    V = p.shape[-1]
    p_a = p.gather(1, accepted[:, None, None].expand(rows, 1, V))[:, 0]  # [rows, V]
    slot = accepted.clamp_max(k - 1)  # [rows] the rejected draft's slot (if any)
    if q is not None:
        q_a = q.gather(1, slot[:, None, None].expand(rows, 1, V))[:, 0]  # [rows, V]
    else:
        q_a = torch.zeros_like(p_a).scatter_(1, drafts.gather(1, slot[:, None]), 1.0)  # [rows, V] one-hot
    rejected = (accepted < count).to(p.dtype)[:, None]  # [rows, 1]: else the bonus comes from p_{a+1}
    residual = (p_a - q_a * rejected).clamp_min(0)  # [rows, V] (p - q)+, or p for the bonus
    # rounding can reject where p == q (zero residual): fall back to p there (a probability-0 event)
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_a)  # [rows, V]
    last = race(residual, generator)  # [rows]
    tokens = torch.cat([drafts, drafts.new_zeros(rows, 1)], 1)  # [rows, k + 1]
    tokens = tokens.scatter(1, accepted[:, None], last[:, None])  # [rows, k + 1]
    return Verified(tokens, accepted)
