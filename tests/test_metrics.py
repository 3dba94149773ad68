"""decodekit.metrics: hand-computed values for each metric and its edge cases."""

from __future__ import annotations

import math

import pytest

from decodekit.metrics import (bleu, distinct_n, edit_distance, group_distinct_n, loop_rate, loop_suffix,
                               mean_logprob, ngrams, pairwise_edit_distance, repetition_rate, self_bleu,
                               seq_rep_n)
from decodekit.monitors.sequence import loop_detect


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


# ------------------------------------------------------------------ repetition and loops
def test_seq_rep_n_averages_per_sequence():
    # [1 2 3 1 2 3 1]: 4-grams (1,2,3,1) (2,3,1,2) (3,1,2,3) (1,2,3,1): 3 unique of 4 -> 1/4
    # [1 2 3 4 5]: no repeat -> 0; [1 2]: no 4-gram, left out. Mean 1/8 (pooled rep-4 would be 1/6)
    seqs = [[1, 2, 3, 1, 2, 3, 1], [1, 2, 3, 4, 5], [1, 2]]
    assert seq_rep_n(seqs, 4) == pytest.approx(1 / 8)
    assert repetition_rate(seqs, 4) == pytest.approx(1 / 6)
    assert seq_rep_n([[7, 7, 7]], 1) == pytest.approx(2 / 3)
    assert math.isnan(seq_rep_n([[1, 2, 3]], 4))


def test_loop_suffix_and_rate():
    assert loop_suffix([9] + [1, 2, 3] * 6) == (18, 3)
    assert loop_suffix([4, 7, 7, 7, 7]) == (4, 1)
    assert loop_suffix([1, 2, 3, 4]) == (0, 0)
    assert loop_suffix([1, 2, 1]) == (0, 0)  # one copy and a bit: not two copies
    # defaults (those of the loop monitor): >= 2 copies covering >= 16 tokens
    seqs = [[9] + [1, 2, 3] * 6, list(range(20)), [5] * 10, [8] + [1, 2, 3, 4, 5, 6, 7, 8, 9] * 2]
    assert loop_rate(seqs) == pytest.approx(2 / 4)  # 18 tokens of period 3; 18 of period 9
    assert loop_rate(seqs, min_span=8) == pytest.approx(3 / 4)  # [5] * 10 now counts
    assert loop_rate(seqs, min_repeats=3) == pytest.approx(1 / 4)  # period 9: only 2 copies
    assert math.isnan(loop_rate([]))


@pytest.mark.parametrize("seed", range(20))
def test_loop_rate_agrees_with_the_monitor_reference(seed):
    import random

    rng = random.Random(seed)
    unit = [rng.randrange(4) for _ in range(rng.randrange(1, 6))]
    seq = [rng.randrange(4) for _ in range(rng.randrange(0, 6))] + unit * rng.randrange(1, 8)
    for min_span in (2, 6, 16):
        assert loop_rate([seq], min_span=min_span) == float(loop_detect(seq, 32, 2, min_span)[0])


# ------------------------------------------------------------------ edit distance
def test_edit_distance_hand_computed():
    assert edit_distance("kitten", "sitting") == 3  # k->s, e->i, +g
    assert edit_distance([1, 2, 3], [1, 3]) == 1
    assert edit_distance([], [4, 5, 6]) == 3
    assert edit_distance([1, 2, 3], [3, 2, 1]) == 2
    assert edit_distance([1, 2], [1, 2]) == 0
    assert edit_distance([1, 2, 3, 4], [2, 3, 4, 5]) == edit_distance([2, 3, 4, 5], [1, 2, 3, 4]) == 2


def test_pairwise_edit_distance():
    # pairs: ([1,2,3],[1,2,4]) = 1, ([1,2,3],[5]) = 3, ([1,2,4],[5]) = 3 -> 7/3; second prompt: 0
    assert pairwise_edit_distance([[[1, 2, 3], [1, 2, 4], [5]], [[6], [6]]]) == pytest.approx((7 / 3 + 0) / 2)
    assert math.isnan(pairwise_edit_distance([[[1, 2, 3]], [[4]]]))  # one sequence per prompt


# ------------------------------------------------------------------ BLEU and self-BLEU
def test_bleu_brevity_penalty_hand_computed():
    # hyp [1 2 3 4 5] vs ref [1 2 3 4 6 7 8 9]: p1 = 4/5, p2 = 3/4, p3 = 2/3, p4 = 1/2;
    # c = 5 < r = 8: BP = exp(1 - 8/5)
    expected = math.exp(1 - 8 / 5) * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert expected == pytest.approx(0.367012, abs=1e-6)
    assert bleu([1, 2, 3, 4, 5], [[1, 2, 3, 4, 6, 7, 8, 9]]) == pytest.approx(expected)
    # all n-grams match, only the penalty remains: exp(1 - 8/4)
    assert bleu([1, 2, 3, 4], [[1, 2, 3, 4, 5, 6, 7, 8]]) == pytest.approx(math.exp(-1))
    # the other way round the hypothesis is longer: no penalty; p = 4/8, 3/7, 2/6, 1/5
    assert bleu([1, 2, 3, 4, 6, 7, 8, 9], [[1, 2, 3, 4, 5]]) == pytest.approx(
        (4 / 8 * 3 / 7 * 2 / 6 * 1 / 5) ** 0.25)


def test_bleu_closest_reference_length_ties_go_to_the_shorter():
    # refs of lengths 3 and 5 are both 1 away from c = 4: r = 3 < c, BP = 1 (r = 5 would give
    # exp(1 - 5/4)); every n-gram of the hypothesis is in the second reference
    assert bleu([1, 2, 3, 4], [[1, 2, 3], [1, 2, 3, 4, 5]]) == pytest.approx(1.0)
    assert bleu([1, 2, 3, 4], [[1, 2, 3, 4, 5]]) == pytest.approx(math.exp(1 - 5 / 4))


def test_bleu_clips_counts_and_smooths_missing_orders():
    # "the the the ..." against "the cat is on the mat": the unigram 1 counts at most twice (p1 = 2/7,
    # not 7/7); no bigram/trigram/4-gram matches: smoothed to 0.1 / count (6, 5 and 4 n-grams)
    hyp, ref = [1] * 7, [1, 2, 3, 4, 1, 5]
    expected = math.exp((math.log(2 / 7) + math.log(0.1 / 6) + math.log(0.1 / 5) + math.log(0.1 / 4)) / 4)
    assert bleu(hyp, [ref]) == pytest.approx(expected)
    # clipping takes the largest count in any one reference (1 here), not their sum (2)
    expected = math.exp((math.log(1 / 4) + math.log(0.1 / 3) + math.log(0.1 / 2) + math.log(0.1 / 1)) / 4)
    assert bleu([1, 1, 1, 1], [[1, 2], [1, 3]]) == pytest.approx(expected)


def test_bleu_edge_cases():
    assert bleu([1, 2, 3, 4, 5], [[1, 2, 3, 4, 5]]) == pytest.approx(1.0)
    assert bleu([1, 2, 3], [[4, 5, 6]]) == 0.0  # no unigram matches
    assert bleu([], [[1, 2]]) == 0.0
    # shorter than 4: the missing orders have no n-gram (count 0 -> 1): 0.1 / 1 each
    assert bleu([1, 2], [[1, 2]]) == pytest.approx((1 * 1 * 0.1 * 0.1) ** 0.25)
    with pytest.raises(ValueError, match="reference"):
        bleu([1], [])


def test_self_bleu_hand_computed():
    a, c = [1, 2, 3, 4, 5], [6, 7, 8, 9, 10]
    # a vs (a, c): 1; a vs (a, c): 1; c vs (a, a): no unigram match, 0 -> 2/3
    assert self_bleu([[a, a, c]]) == pytest.approx(2 / 3)
    # two sequences: BLEU is not symmetric (brevity penalty on the shorter one only)
    x, y = [1, 2, 3, 4, 5], [1, 2, 3, 4, 6, 7, 8, 9]
    xy = math.exp(1 - 8 / 5) * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    yx = (4 / 8 * 3 / 7 * 2 / 6 * 1 / 5) ** 0.25
    assert self_bleu([[x, y]]) == pytest.approx((xy + yx) / 2)
    # averaged over prompts; prompts with one sequence are left out
    assert self_bleu([[a, a, c], [x, y], [a]]) == pytest.approx((2 / 3 + (xy + yx) / 2) / 2)
    assert math.isnan(self_bleu([[a], [c]]))


def test_group_distinct_n():
    # prompt 0: unigrams 1 2 1 3 -> 3/4; prompt 1: 5 5 5 5 -> 1/4; prompt 2 has one sequence
    groups = [[[1, 2], [1, 3]], [[5, 5], [5, 5]], [[7, 8]]]
    assert group_distinct_n(groups, 1) == pytest.approx(0.5)
    # bigrams: (1,2) (1,3) -> 1; (5,5) (5,5) -> 1/2
    assert group_distinct_n(groups, 2) == pytest.approx(0.75)
    assert math.isnan(group_distinct_n([[[1, 2]]], 1))
