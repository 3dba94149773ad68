"""Medusa-style token trees from blockwise heads: exactness, more accepted tokens, seeds, errors."""

from __future__ import annotations

import pytest

import decodekit
from decodekit.strategies.speculative import BlockwiseHeads, train_heads
from tests.strategies.speculative.helpers import lm_without_4d_masks

TRAIN = ["hello hello hello world", "abcabcabcabc", "the cat sat on the mat. the cat", "one two three four",
         "Zebras are striped.", "aaa bbb aaa bbb", "The quick brown fox", "1, 2, 3, 4, 5"]
PROMPTS = TRAIN[:3] + ["the dog sat on the log. the dog", "abab abab abab"]
NEW = 30


@pytest.fixture(scope="module")
def trained(tiny_lm):
    ids = [[b + 3 for b in t.encode()] for t in TRAIN]
    return train_heads(tiny_lm, ids, num_heads=3, steps=150, max_new_tokens=32, batch_positions=128)


@pytest.fixture(scope="module")
def greedy(tiny_lm):
    return decodekit.generate(tiny_lm, PROMPTS, "greedy", max_new_tokens=NEW, chat=False).token_ids


def _blockwise(lm, prompts, heads, **options):
    return decodekit.generate(lm, prompts, "blockwise", heads=heads, num_heads=3, draft_tokens=3,
                              max_new_tokens=NEW, chat=False, **options)


@pytest.mark.parametrize("heads", ["untrained", "random", "trained"])
def test_heads_tree_equals_greedy(tiny_lm, trained, greedy, heads):
    h = {"untrained": None, "random": BlockwiseHeads(64, 3, init="random"), "trained": trained}[heads]
    got = _blockwise(tiny_lm, PROMPTS, h, tree_top_k=3)
    assert got.token_ids == greedy and got.stats.extra["tree_verifies"] > 0
    for i in (1, 3):
        assert _blockwise(tiny_lm, PROMPTS[i], h, tree_top_k=3).token_ids[0] == greedy[i]


def test_heads_tree_accepts_more_than_the_chain(tiny_lm, trained):
    chain = _blockwise(tiny_lm, PROMPTS, trained).stats.extra
    tree = _blockwise(tiny_lm, PROMPTS, trained, tree_top_k=3).stats.extra
    assert chain["tree_verifies"] == 0
    assert tree["accepted_per_verify"] > chain["accepted_per_verify"]


def test_heads_tree_sampling_is_seeded(tiny_lm, trained):
    a, b, c = (_blockwise(tiny_lm, PROMPTS, trained, tree_top_k=2, do_sample=True, seed=s) for s in (3, 3, 4))
    assert a.token_ids == b.token_ids != c.token_ids
    assert a.stats.extra["tree_verifies"] > 0


def test_heads_tree_falls_back_to_the_chain(greedy, trained):
    lm = lm_without_4d_masks("raise")
    tree = _blockwise(lm, PROMPTS, trained, tree_top_k=3)
    chain = _blockwise(lm, PROMPTS, trained)
    assert tree.token_ids == greedy and tree.stats.extra == chain.stats.extra


@pytest.mark.parametrize("options, message", [
    ({"tree_top_k": 0}, "tree_top_k must be in 1..8"),
    ({"tree_top_k": 9}, "tree_top_k must be in 1..8"),
    ({"tree_top_k": 2, "criterion": "top_k"}, "verifies token trees exactly"),
    ({"tree_top_k": 2, "min_block": 2}, "verifies token trees exactly"),
])
def test_bad_heads_tree_config(options, message):
    with pytest.raises(ValueError, match=message):
        decodekit.strategies.get("blockwise")(**options)
