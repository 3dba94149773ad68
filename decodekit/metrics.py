"""Text-quality metrics of generated sequences: diversity, repetition, model likelihood.

Pure functions over plain Python sequences. A *sequence* is any sequence of hashable items: the
token ids of one generated text (what ``decodekit compare`` uses), its words, or its characters.
Metrics over a set of sequences *pool* their counts (every n-gram / token weighs the same), so a long
sequence counts more than a short one. A set with nothing to count gives ``nan``.

Example:
    >>> from decodekit.metrics import distinct_n, repetition_rate, mean_logprob
    >>> distinct_n([[1, 2, 1, 2]], 1)
    0.5
    >>> repetition_rate([[1, 2, 1, 2]], 2)
    0.3333333333333333
    >>> mean_logprob([[-1.0, -2.0], [-3.0]])
    -2.0
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence

__all__ = ["ngrams", "distinct_n", "repetition_rate", "mean_logprob"]


def ngrams(sequence: Sequence[Hashable], n: int) -> list[tuple]:
    """The ``len(sequence) - n + 1`` contiguous n-grams of one sequence, in order (none if shorter)."""
    _check_n(n)
    items = list(sequence)
    return [tuple(items[i: i + n]) for i in range(len(items) - n + 1)]


def distinct_n(sequences: Iterable[Sequence[Hashable]], n: int) -> float:
    """Distinct-n (Li et al., 2016, "A Diversity-Promoting Objective Function for Neural Conversation
    Models"): the number of *distinct* n-grams across all sequences divided by the total number of
    n-grams they contain.

    1.0 means no n-gram occurs twice anywhere in the set; values near 0 mean the sequences keep
    reusing the same n-grams (within a sequence or across sequences). ``nan`` if there are no n-grams.

    Example:
        >>> distinct_n([[1, 2, 3], [1, 2, 4]], 2)   # bigrams (1,2) (2,3) (1,2) (2,4): 3 distinct of 4
        0.75
    """
    _check_n(n)
    seen: set[tuple] = set()
    total = 0
    for seq in sequences:
        grams = ngrams(seq, n)
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else math.nan


def repetition_rate(sequences: Iterable[Sequence[Hashable]], n: int = 4) -> float:
    """Repetition rate, rep-n (Welleck et al., 2019, "Neural Text Generation with Unlikelihood
    Training"): the fraction of n-grams that repeat an n-gram seen *earlier in the same sequence*.

    For one sequence with ``N`` n-grams of which ``U`` are distinct, ``N - U`` n-grams are repeats,
    so rep-n = ``1 - U / N``. Over a set the counts are pooled: ``sum(N_i - U_i) / sum(N_i)``.
    Unlike :func:`distinct_n`, repeats *across* sequences do not count: it measures degenerate loops
    ("the cat the cat the cat"), not similarity between outputs. 0.0 means no n-gram repeats within
    any sequence; ``nan`` if there are no n-grams.

    Example:
        >>> repetition_rate([[7, 8, 7, 8, 7]], 2)   # (7,8) (8,7) (7,8) (8,7): 2 repeats of 4
        0.5
    """
    _check_n(n)
    repeated = total = 0
    for seq in sequences:
        grams = ngrams(seq, n)
        total += len(grams)
        repeated += len(grams) - len(set(grams))
    return repeated / total if total else math.nan


def mean_logprob(logprobs: Iterable[Sequence[float]]) -> float:
    """Mean log-probability per token: the sum of every token's log-prob under the model divided by
    the number of tokens, pooled over all sequences (``logprobs[i][t]``: token ``t`` of sequence ``i``).

    Higher (closer to 0) means the model found the text more likely; ``-mean_logprob`` is the
    log-perplexity of the generated tokens. ``nan`` if there are no tokens.

    Example:
        >>> mean_logprob([[-0.5, -1.5]])
        -1.0
    """
    total = 0.0
    count = 0
    for seq in logprobs:
        total += float(sum(seq))
        count += len(seq)
    return total / count if count else math.nan


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
