"""Prompt lookup: the n-gram search, and greedy exactness (alone, batched, clipped, with processors)."""

from __future__ import annotations

import pytest
import torch

import decodekit
from decodekit.strategies.speculative.prompt_lookup import lookup
from tests.strategies.speculative.helpers import check_cache_content, run_steps

PROMPTS = ["hello hello hello world", "abcabcabcabc", "the cat sat on the mat. the cat", "x"]


def _lookup(row: list[int], k=4, max_ngram=3, min_ngram=1, pad=2):
    ids = torch.tensor([[0] * pad + row + [0] * 3])  # left padding and unwritten columns
    d = lookup(ids, torch.tensor([pad]), torch.tensor([pad + len(row)]), k, max_ngram, min_ngram)
    return d.tokens[0, : int(d.count[0])].tolist()


def test_lookup_prefers_longest_ngram_then_latest_match():
    assert _lookup([1, 2, 3, 9, 2, 3, 8, 1, 2, 3]) == [9, 2, 3, 8]  # 3-gram "1 2 3" beats later "2 3"
    assert _lookup([5, 6, 7, 5, 6, 8, 5, 6]) == [8, 5, 6]  # latest "5 6", up to the row's end
    assert _lookup([4, 7, 1, 5, 7]) == [1, 5, 7]  # 1-gram fallback
    assert _lookup([4, 7, 1, 5, 7], min_ngram=2) == []  # no 2-gram match
    assert _lookup([1, 2, 3]) == []  # nothing earlier: no draft
    assert _lookup([0, 1, 0, 1], pad=3) == [0, 1]  # padding (token 0 too) is never matched


def test_lookup_rows_are_independent():
    ids = torch.tensor([[0, 0, 7, 8, 9, 7], [1, 2, 1, 2, 3, 1]])
    d = lookup(ids, torch.tensor([2, 0]), torch.tensor([6, 6]), 2, 2, 1)
    assert d.count.tolist() == [2, 2] and d.tokens.tolist() == [[8, 9], [2, 3]]


@pytest.fixture(scope="module")
def greedy(tiny_lm):
    return decodekit.generate(tiny_lm, PROMPTS, "greedy", max_new_tokens=40, chat=False)


def test_no_configuration_needed_and_equals_greedy_batched(tiny_lm, greedy):
    got = decodekit.generate(tiny_lm, PROMPTS, strategy="prompt_lookup", max_new_tokens=40, chat=False)
    assert got.token_ids == greedy.token_ids
    assert got.stats.extra["acceptance_rate"] > 0 and got.stats.extra["target_forwards_per_token"] < 1


@pytest.mark.parametrize("options", [{"adaptive": False, "draft_tokens": 3}, {"max_ngram": 1},
                                     {"draft_tokens": 1, "max_draft_tokens": 32}])
def test_each_row_alone_equals_greedy(tiny_lm, greedy, options):
    for i, prompt in enumerate(PROMPTS):
        got = decodekit.generate(tiny_lm, prompt, "prompt_lookup", max_new_tokens=40, chat=False, **options)
        assert got.token_ids[0] == greedy.token_ids[i]


def test_eos_inside_accepted_drafts_is_clipped(tiny_lm, greedy):
    """An EOS among the accepted drafts ends the row there; the cache stays consistent."""
    eos = greedy.token_ids[1][12]  # a token of the repetitive row: drafts contain it
    want = decodekit.generate(tiny_lm, PROMPTS, "greedy", max_new_tokens=40, chat=False, eos_token_id=eos)
    got = decodekit.generate(tiny_lm, PROMPTS, "prompt_lookup", max_new_tokens=40, chat=False, eos_token_id=eos)
    assert got.token_ids == want.token_ids and got.finish_reasons == want.finish_reasons


def test_cache_invariant_holds_every_step(tiny_lm):
    strategy = decodekit.strategies.get("prompt_lookup")()
    state = run_steps(tiny_lm, strategy, PROMPTS, 37, eos=(int(tiny_lm.encode([[0]]).ids[0, 0]) + 50,))
    check_cache_content(state)


def test_processors_are_applied_per_position(tiny_lm):
    options = {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3}
    want = decodekit.generate(tiny_lm, PROMPTS, "greedy", max_new_tokens=30, chat=False, **options)
    got = decodekit.generate(tiny_lm, PROMPTS, "prompt_lookup", max_new_tokens=30, chat=False, **options)
    assert got.token_ids == want.token_ids
