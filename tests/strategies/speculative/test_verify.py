"""Verification functions alone: greedy exactness, and the distribution laws of speculative sampling
(algorithms.md §8.4 oracles 2-4) on context-free categorical p, q with 1e5 rows at once."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from decodekit.strategies.speculative.verify import greedy_verify, race, sample_verify

P = torch.tensor([0.40, 0.25, 0.15, 0.12, 0.08])  # target, |V| = 5
Q = torch.tensor([0.10, 0.20, 0.30, 0.25, 0.15])  # draft
ROWS, K = 100_000, 3


def _onehot_scores(argmax: list[list[int]], V: int = 4) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(argmax), V).float()  # [rows, k + 1, V]


def test_greedy_verify_prefix_correction_bonus_and_count():
    scores = _onehot_scores([[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3]])  # target argmax 1, 2, 3
    drafts = torch.tensor([[1, 2], [1, 0], [0, 2], [1, 2]])
    v = greedy_verify(scores, drafts, torch.tensor([2, 2, 2, 1]))
    assert v.accepted.tolist() == [2, 1, 0, 1]  # all + bonus; partial; none; limited by count
    assert v.tokens.tolist() == [[1, 2, 3]] * 4  # target argmax: drafts before a, then correction


def _draws(p_rows, q_rows, seed=0, one_hot=False):
    g = torch.Generator().manual_seed(seed)
    p = p_rows.expand(ROWS, K + 1, -1)  # [rows, k + 1, V]
    q = q_rows.expand(ROWS, K, -1)  # [rows, k, V]
    drafts = race(q.reshape(-1, q.shape[-1]), g).view(ROWS, K)  # [rows, k] d_i ~ q
    if one_hot:  # deterministic drafts: always propose token 2
        drafts = torch.full((ROWS, K), 2)
    return sample_verify(p, drafts, torch.full((ROWS,), K), None if one_hot else q, g)


def _chi2_pvalue(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    return float(stats.chisquare(counts.numpy(), (probs.double() * counts.sum()).numpy()).pvalue)


@pytest.mark.parametrize("one_hot", [False, True])
def test_first_emitted_token_is_distributed_as_p(one_hot):
    v = _draws(P, Q, one_hot=one_hot)
    first = v.tokens[:, 0]  # accepted d_1, or the residual draw at position 0
    assert _chi2_pvalue(first, P) > 1e-3


def test_every_emitted_position_is_distributed_as_p():
    """Context-free p: the token at emitted position j (given the row emitted > j) is ~ p."""
    v = _draws(P, Q, seed=1)
    for j in range(K + 1):
        rows = v.accepted >= j
        assert _chi2_pvalue(v.tokens[rows, j], P) > 1e-3, j


def test_accepted_length_law():
    """Leviathan et al. Thm 3.8: E[tokens per iteration] = (1 - a^(k+1)) / (1 - a), a = sum min(p, q)."""
    alpha = float(torch.minimum(P, Q).sum())
    want = (1 - alpha ** (K + 1)) / (1 - alpha)
    got = float((_draws(P, Q, seed=2).accepted + 1).double().mean())
    assert math.isclose(got, want, rel_tol=0.01), (got, want)


def test_p_equal_q_accepts_everything_plus_bonus():
    v = _draws(P, P, seed=3)
    assert bool((v.accepted == K).all())  # k + 1 tokens per iteration: the bonus token is there
    assert _chi2_pvalue(v.tokens[:, K], P) > 1e-3


def test_no_drafts_samples_the_target():
    g = torch.Generator().manual_seed(4)
    v = sample_verify(P.expand(ROWS, 1, -1), torch.zeros(ROWS, 0, dtype=torch.long),
                      torch.zeros(ROWS, dtype=torch.long), None, g)
    assert v.tokens.shape == (ROWS, 1) and _chi2_pvalue(v.tokens[:, 0], P) > 1e-3


def test_same_seed_same_draws():
    a, b = _draws(P, Q, seed=5), _draws(P, Q, seed=5)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.accepted, b.accepted)
