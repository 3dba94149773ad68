"""decodekit.metrics: hand-computed values for each metric and its edge cases."""

from __future__ import annotations

import math

import pytest

from decodekit.metrics import distinct_n, mean_logprob, ngrams, repetition_rate


def test_ngrams():
    assert ngrams([1, 2, 3], 2) == [(1, 2), (2, 3)]
    assert ngrams([1, 2, 3], 3) == [(1, 2, 3)]
    assert ngrams([1, 2], 3) == []
    assert ngrams("abc", 1) == [("a",), ("b",), ("c",)]


def test_distinct_n_hand_computed():
    seqs = [[1, 2, 3, 1], [1, 2, 4]]
    # unigrams: 1 2 3 1 1 2 4 -> 7 total, distinct {1, 2, 3, 4} = 4
    assert distinct_n(seqs, 1) == pytest.approx(4 / 7)
    # bigrams: (1,2) (2,3) (3,1) (1,2) (2,4) -> 5 total, 4 distinct
    assert distinct_n(seqs, 2) == pytest.approx(4 / 5)
    # trigrams: (1,2,3) (2,3,1) (1,2,4) -> all distinct
    assert distinct_n(seqs, 3) == 1.0


def test_distinct_n_counts_repeats_across_sequences():
    assert distinct_n([[5, 6], [5, 6]], 2) == 0.5
    assert distinct_n([[7, 7, 7, 7]], 1) == 0.25


def test_repetition_rate_hand_computed():
    # 2-grams of [1,2,1,2,3]: (1,2) (2,1) (1,2) (2,3): one repeats an earlier one -> 1/4
    assert repetition_rate([[1, 2, 1, 2, 3]], 2) == pytest.approx(0.25)
    # pooled: [a a a] has bigrams (a,a)(a,a): 1 repeat of 2; [b c] has 1 bigram, no repeat -> 1/3
    assert repetition_rate([["a", "a", "a"], ["b", "c"]], 2) == pytest.approx(1 / 3)
    # 4-grams (the default n) of a loop: [1 2 3 1 2 3 1]: 4 grams, (1,2,3,1) twice -> 1/4
    assert repetition_rate([[1, 2, 3, 1, 2, 3, 1]]) == pytest.approx(0.25)


def test_repetition_rate_ignores_repeats_across_sequences():
    assert repetition_rate([[1, 2], [1, 2]], 2) == 0.0
    assert repetition_rate([[1, 2, 3, 4, 5]], 1) == 0.0


def test_mean_logprob_is_token_weighted():
    # (-1 - 2 - 3) / 3, not the mean of the per-sequence means (-1.5 and -3)
    assert mean_logprob([[-1.0, -2.0], [-3.0]]) == pytest.approx(-2.0)
    assert mean_logprob([[-0.5]]) == -0.5


def test_no_data_gives_nan():
    assert math.isnan(distinct_n([], 1))
    assert math.isnan(distinct_n([[1]], 2))
    assert math.isnan(repetition_rate([[1, 2, 3]], 4))
    assert math.isnan(mean_logprob([[], []]))


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_bad_n(n):
    with pytest.raises(ValueError, match="n must be"):
        distinct_n([[1, 2]], n)
    with pytest.raises(ValueError, match="n must be"):
        repetition_rate([[1, 2]], n)
