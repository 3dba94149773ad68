"""Text-quality metrics of generated sequences: diversity, repetition, loops, model likelihood,
and the similarity of several sequences returned for one prompt (self-BLEU, edit distance).

Pure functions over plain Python sequences. A *sequence* is any sequence of hashable items: the
token ids of one generated text (what ``decodekit compare`` uses), its words, or its characters.
Metrics over a set of sequences *pool* their counts (every n-gram / token weighs the same), so a long
sequence counts more than a short one, unless they say they average per sequence (``seq_rep_n``,
``loop_rate``). Metrics over *groups* (``groups[i]``: the sequences returned for prompt ``i``) compute
a value per group of at least two sequences and average over those groups. A set with nothing to
count gives ``nan``.

Example:
    >>> from decodekit.metrics import distinct_n, repetition_rate, mean_logprob
    >>> distinct_n([[1, 2, 1, 2]], 1)
    0.5
    >>> repetition_rate([[1, 2, 1, 2]], 2)
    0.3333333333333333
    >>> mean_logprob([[-1.0, -2.0], [-3.0]])
    -2.0
    >>> self_bleu([[[1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]])   # 1, 1 and 0
    0.6666666666666666
    >>> edit_distance("kitten", "sitting")
    3
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence

__all__ = ["ngrams", "distinct_n", "repetition_rate", "seq_rep_n", "loop_suffix", "loop_rate",
           "mean_logprob", "edit_distance", "bleu", "per_group", "group_distinct_n", "self_bleu",
           "pairwise_edit_distance"]


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


def seq_rep_n(sequences: Iterable[Sequence[Hashable]], n: int = 4) -> float:
    """seq-rep-n (Welleck et al., 2019, "Neural Text Generation with Unlikelihood Training", Eq. 8):
    per sequence ``1 - |unique n-grams| / |n-grams|``, *averaged over sequences* (sequences shorter
    than ``n`` are left out). :func:`repetition_rate` is the same ratio with the counts pooled, so a
    long looping output weighs more there; here every output weighs the same. ``nan`` if no sequence
    has an n-gram.

    Example:
        >>> seq_rep_n([[1, 2, 3, 1, 2, 3, 1], [1, 2, 3, 4, 5]])   # 1/4 and 0
        0.125
    """
    _check_n(n)
    rates = []
    for seq in sequences:
        grams = ngrams(seq, n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else math.nan


def loop_suffix(sequence: Sequence[Hashable], max_period: int = 32) -> tuple[int, int]:
    """``(span, period)`` of the longest suffix made of >= 2 consecutive copies of a unit of
    ``period <= max_period`` items (a partial copy may lead it), with the shortest period reaching
    that span; ``(0, 0)`` if the sequence does not end in a repeat. The host form of the ``loops``
    signal of :mod:`decodekit.monitors.sequence` (Ivgi et al. 2024, "From Loops to Oops").

    Example:
        >>> loop_suffix([5, 1, 2, 3, 1, 2, 3, 1, 2, 3])     # "1 2 3" three times after a 5
        (9, 3)
        >>> loop_suffix([1, 2, 3, 4])
        (0, 0)
    """
    _check_n(max_period)
    best = (0, 0)
    for p, span in _periodic_suffixes(list(sequence), max_period):
        if span > best[0]:
            best = (span, p)
    return best


def loop_rate(sequences: Iterable[Sequence[Hashable]], min_span: int = 16, max_period: int = 32,
              min_repeats: int = 2) -> float:
    """Fraction of sequences that *end in a loop*: some unit of ``p <= max_period`` items repeated
    ``>= min_repeats`` times in a row at the end, covering ``>= min_span`` items. The defaults are
    those of the ``loop`` monitor (:class:`decodekit.monitors.LoopDetector`), so this is the share
    of outputs it would flag at their last token. ``nan`` for no sequences.

    Example:
        >>> loop_rate([[9] + [1, 2, 3] * 6, list(range(20))])   # 18 looping tokens; no loop
        0.5
    """
    _check_n(min_span)
    _check_n(min_repeats)
    seqs = [list(s) for s in sequences]
    if not seqs:
        return math.nan
    loops = sum(any(span >= max(min_span, min_repeats * p) for p, span in _periodic_suffixes(s, max_period))
                for s in seqs)
    return loops / len(seqs)


def _periodic_suffixes(items: list, max_period: int) -> list[tuple[int, int]]:
    """``(p, span)`` for each period ``p <= max_period`` whose repeats (>= 2 copies) end ``items``."""
    n, out = len(items), []
    for p in range(1, max_period + 1):
        run = 0  # trailing items equal to the item p before them
        while run < n - p and items[n - 1 - run] == items[n - 1 - run - p]:
            run += 1
        if run >= p:
            out.append((p, run + p))
    return out


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


def edit_distance(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions of single items
    that turn ``a`` into ``b`` (each costs 1).

    Example:
        >>> edit_distance([1, 2, 3], [1, 3])      # delete the 2
        1
    """
    a, b = list(a), list(b)
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))  # distances from a[:i] to every prefix of b
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def bleu(hypothesis: Sequence[Hashable], references: Sequence[Sequence[Hashable]], max_n: int = 4,
         epsilon: float = 0.1) -> float:
    """Sentence BLEU-``max_n`` (Papineni et al., 2002) of one hypothesis against references, with
    uniform weights and smoothing "method 1" of Chen & Cherry (2014): an n-gram order with no match
    gets precision ``epsilon / count`` instead of 0. This is NLTK's ``sentence_bleu`` with
    ``SmoothingFunction().method1``, the form self-BLEU uses (Zhu et al., 2018, Texygen).

    * modified precision ``p_n``: each hypothesis n-gram counts at most as often as it occurs in the
      one reference that has it most often (*clipping*), over the hypothesis' n-gram count (at least 1);
    * brevity penalty: ``1`` if the hypothesis is longer than the reference length closest to its own
      (the shorter on a tie), else ``exp(1 - r / c)``;
    * ``BLEU = BP * exp(mean_n log p_n)``; 0 when no unigram matches (or the hypothesis is empty).

    Example:
        >>> bleu([1, 2, 3, 4], [[1, 2, 3, 4, 5, 6, 7, 8]])   # all n-grams match; BP = exp(1 - 8/4)
        0.36787944117144233
    """
    _check_n(max_n)
    hyp = list(hypothesis)
    refs = [list(r) for r in references]
    if not refs:
        raise ValueError("bleu needs at least one reference")
    if not hyp:
        return 0.0
    log_sum = 0.0
    for n in range(1, max_n + 1):
        counts = Counter(ngrams(hyp, n))
        most: Counter = Counter()
        for ref in refs:
            most |= Counter(ngrams(ref, n))  # | keeps the larger count of each n-gram
        matched = sum(min(c, most[g]) for g, c in counts.items())
        total = max(1, sum(counts.values()))
        if matched == 0 and n == 1:
            return 0.0
        log_sum += math.log((matched if matched else epsilon) / total) / max_n
    c = len(hyp)
    r = min((len(ref) for ref in refs), key=lambda length: (abs(length - c), length))
    bp = 1.0 if c > r else math.exp(1.0 - r / c)
    return bp * math.exp(log_sum)


def per_group(groups: Iterable[Sequence[Sequence[Hashable]]],
              value: Callable[[list[list[Hashable]]], float]) -> float:
    """Mean of ``value(group)`` over the groups of at least two sequences (nan values left out);
    ``nan`` if there is none. The building block of the metrics between returned sequences."""
    values = []
    for group in groups:
        seqs = [list(s) for s in group]
        if len(seqs) >= 2:
            v = value(seqs)
            if not math.isnan(v):
                values.append(v)
    return sum(values) / len(values) if values else math.nan


def group_distinct_n(groups: Iterable[Sequence[Sequence[Hashable]]], n: int) -> float:
    """:func:`distinct_n` of the sequences of each group (the outputs returned for one prompt),
    averaged over groups: 1.0 when the returned outputs share no n-gram (nor repeat one).

    Example:
        >>> group_distinct_n([[[1, 2], [1, 3]], [[5, 5], [5, 5]]], 1)   # 3/4 and 1/4
        0.5
    """
    _check_n(n)
    return per_group(groups, lambda seqs: distinct_n(seqs, n))


def self_bleu(groups: Iterable[Sequence[Sequence[Hashable]]], max_n: int = 4) -> float:
    """Self-BLEU (Zhu et al., 2018, "Texygen: A Benchmarking Platform for Text Generation Models"):
    within each group, the mean over its sequences of :func:`bleu` of the sequence against the
    *other* sequences of the group; averaged over groups. 1.0: the outputs are copies of each other;
    near 0: they share almost no n-grams.

    Example:
        >>> self_bleu([[[1, 2, 3, 4], [1, 2, 3, 4]]])
        1.0
    """
    def one(seqs: list[list[Hashable]]) -> float:
        return sum(bleu(s, seqs[:i] + seqs[i + 1:], max_n) for i, s in enumerate(seqs)) / len(seqs)

    return per_group(groups, one)


def pairwise_edit_distance(groups: Iterable[Sequence[Sequence[Hashable]]]) -> float:
    """Mean :func:`edit_distance` over the unordered pairs of sequences of each group, averaged over
    groups (in items, e.g. tokens: how many edits separate two returned outputs).

    Example:
        >>> pairwise_edit_distance([[[1, 2, 3], [1, 2, 4], [5]]])    # (1 + 3 + 3) / 3
        2.3333333333333335
    """
    def one(seqs: list[list[Hashable]]) -> float:
        pairs = [(i, j) for i in range(len(seqs)) for j in range(i + 1, len(seqs))]
        return sum(edit_distance(seqs[i], seqs[j]) for i, j in pairs) / len(pairs)

    return per_group(groups, one)


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
