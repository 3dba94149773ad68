"""The draft-length policies on scripted acceptance sequences, and the cost-aware width end to end."""

from __future__ import annotations

import math

import pytest

import decodekit
from decodekit.strategies.speculative.draft_length import (
    CPU_COST, CUDA_COST, CostAwareLength, Schedule, VerifyCost, cost_of_device,
)
from decodekit.strategies.speculative.width import _weights

FREE = VerifyCost(row=0.0, overhead=0.0, token=0.0)
PRIORS = {1: (0.3, 0.65), 3: (0.85, 0.9)}


def test_verify_cost_model():
    c = VerifyCost(row=0.25, overhead=0.5, token=0.1)
    assert c.of(1, 0) == 1.0 and c.of(4, 0) == pytest.approx(1.75)
    assert c.of(1, 4) == pytest.approx(1.9) and c.of(4, 2) == pytest.approx(1.75 + 0.5 + 0.8)
    assert cost_of_device("cpu") == CPU_COST and cost_of_device("cuda") == CUDA_COST
    assert cost_of_device("cpu", (0, 1, 2)) == VerifyCost(0.0, 1.0, 2.0)


def test_expected_accepted_is_geometric():
    p = CostAwareLength(8, CPU_COST, {3: (0.8, 0.5)})
    assert p.expected(3, 0) == 0 and p.expected(3, 1) == pytest.approx(0.8)
    assert p.expected(3, 3) == pytest.approx(0.8 * (1 + 0.5 + 0.25))


def test_good_matches_are_verified_long_poor_ones_not_at_all():
    p = CostAwareLength(10, CPU_COST, PRIORS)
    assert p.choose([10], [3], [1.0]) == 10
    assert p.choose([4], [3], [1.0]) == 4  # never wider than the drafts
    assert p.choose([10], [1], [1.0]) == 0  # a 1-gram match does not pay for the pass
    assert p.choose([0], [0], [1.0]) == 0  # no match: a plain one-token step


def test_estimates_follow_scripted_acceptances():
    p = CostAwareLength(8, CPU_COST, PRIORS)
    for _ in range(20):  # 1-gram drafts turn out to be accepted whole
        p.observe([8], [8], [1])
    assert p.choose([8], [1], [1.0]) == 8
    for _ in range(20):  # 3-gram drafts turn out to be rejected at once
        p.observe([8], [0], [3])
    assert p.choose([8], [3], [1.0]) == 0
    q = CostAwareLength(8, CPU_COST, PRIORS)
    for _ in range(100):  # the first draft always passes, the second never: verify one
        q.observe([8], [1], [3])
    assert q.choose([8], [3], [1.0]) == 1


def test_free_verification_takes_every_draft():
    p = CostAwareLength(16, FREE)
    assert p.choose([5, 12, 0], [0, 0, 0], [1.0, 1.0, 1.0]) == 12


def test_batch_width_counts_every_row_and_weights():
    p = CostAwareLength(8, CPU_COST, PRIORS)
    cost = VerifyCost(row=0.3, overhead=0.3, token=0.1)
    q = CostAwareLength(8, cost, PRIORS)
    assert q.choose([8, 8, 8, 8], [3, 3, 3, 3], [1.0] * 4) > 0
    # the only row with a good match is far ahead of the slowest (weight ~0): no drafts
    assert q.choose([8, 0, 0, 0], [3, 0, 0, 0], [0.0, 1.0, 1.0, 1.0]) == 0
    assert p.choose([8, 0], [3, 0], [1.0, 0.0]) == 8  # the other row is finished


def test_lagging_rows_weigh_most():
    w = _weights([10, 12, 12, 0], [0, 0, 0, 1])
    assert w[1] == w[2] == 1.0 and w[3] == 0.0 and w[0] == pytest.approx(math.exp(-1))


def test_schedule_grows_on_full_acceptance_and_shrinks_otherwise():
    s = Schedule(start=4, max_tokens=7)
    s.observe([4, 2], [1, 2], [0, 0])  # a row accepted its whole (shorter) draft
    assert s.k == 6
    s.observe([6], [6], [0])
    assert s.k == 7
    s.observe([7, 0], [3, 0], [0, 0])
    assert s.k == 6
    s.observe([0], [0], [0])  # no drafts verified: unchanged
    assert s.k == 6 and s.choose([3], [0], [1.0]) == 3


PROMPTS = ["hello hello hello world", "abcabcabcabc", "the cat sat on the mat. the cat", "x"]


@pytest.mark.parametrize("options", [{}, {"draft_policy": "schedule"}, {"verify_cost": (0, 0, 0)},
                                     {"verify_cost": (0.3, 5.0, 1.0)}, {"max_draft_tokens": 3, "draft_tokens": 2}])
def test_prompt_lookup_widths_equal_greedy(tiny_lm, options):
    want = decodekit.generate(tiny_lm, PROMPTS, "greedy", max_new_tokens=30, chat=False)
    got = decodekit.generate(tiny_lm, PROMPTS, "prompt_lookup", max_new_tokens=30, chat=False, **options)
    assert got.token_ids == want.token_ids
    alone = [decodekit.generate(tiny_lm, p, "prompt_lookup", max_new_tokens=30, chat=False, **options).token_ids[0]
             for p in PROMPTS]
    assert alone == want.token_ids


def test_expensive_verification_never_drafts(tiny_lm):
    gen = decodekit.generate(tiny_lm, PROMPTS, "prompt_lookup", max_new_tokens=20, chat=False,
                             verify_cost=(0.3, 50.0, 1.0))
    assert gen.stats.extra["acceptance_rate"] == 0 and gen.stats.extra["accepted_per_verify"] == 0
    assert gen.stats.extra["target_forwards_per_token"] >= 1  # every step one token per row


@pytest.mark.parametrize("cost, message", [((1, 2), "verify_cost"), ((1, -1, 0), "verify_cost"),
                                           (("a", 1, 1), "verify_cost")])
def test_bad_verify_cost(cost, message):
    with pytest.raises(ValueError, match=message):
        decodekit.strategies.get("prompt_lookup")(verify_cost=cost)


def test_bad_policy():
    with pytest.raises(ValueError, match="draft_policy"):
        decodekit.strategies.get("prompt_lookup")(draft_policy="fast")
