"""The metric columns of ``decodekit compare``: one :class:`Column` per value of a strategy run.

A column reads a :class:`~decodekit.cli.runs.StrategyRun` (all its generations, every returned
sequence and the per-batch stats) and gives one number. The table, the JSON and the CSV outputs are
all built from the same column list, so a new metric is one more entry:

    >>> from decodekit import metrics                                             # doctest: +SKIP
    >>> register_column(Column("self_bleu_2", "self-BLEU-2",                       # doctest: +SKIP
    ...     lambda run: metrics.self_bleu(run.candidate_ids, max_n=2),
    ...     help="BLEU-2 between the sequences returned for one prompt", group="returned"))

Strategy-specific statistics (``Generation.stats.extra``, e.g. accepted tokens per verify) become
columns by themselves: :func:`columns_for` appends one per key that any run reports, averaged over
its batches; runs that do not report it show "-". So do the monitors given to compare: one column
per monitor name, flags per 100 watched tokens.

Every column belongs to a *group*, printed as a table of its own (:data:`GROUPS`): speed and
likelihood; the best sequence of each prompt; the sequences returned for each prompt (shown when
some strategy returns several); the entropy band and monitor flags. An ``optional`` column is left
out of the table (not of the JSON / CSV) when no run has a value for it.

Text metrics are computed over the *model's token ids*: of each prompt's best sequence, or of all
the sequences returned for one prompt (``returned_*``, averaged over prompts; "-" for strategies
that return one sequence per prompt).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from decodekit import metrics
from decodekit.cli.entropy import band_rates
from decodekit.cli.runs import StrategyRun

__all__ = ["Column", "Group", "GROUPS", "COLUMNS", "register_column", "columns_for"]

REPETITION_N = 4


@dataclass(frozen=True)
class Column:
    """One metric of a strategy run: ``value(run)`` -> a number, or None when it does not apply."""

    key: str  # field name in the JSON and CSV outputs
    header: str  # table header
    value: Callable[[StrategyRun], float | int | None]
    fmt: str = "{:.3f}"
    help: str = ""
    group: str = "best"  # key in GROUPS: the table it is printed in
    optional: bool = False  # left out of the table when no run has a value

    def compute(self, run: StrategyRun) -> float | int | None:
        """The value, with nan turned into None (no data)."""
        v = self.value(run)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    def format(self, value: float | int | None) -> str:
        return "-" if value is None else self.fmt.format(value)


@dataclass(frozen=True)
class Group:
    """A table of compare's output: its title, the caption explaining its columns, and when to show it."""

    title: str
    caption: str = ""
    show: Callable[[Sequence[StrategyRun]], bool] = lambda runs: True


GROUPS: dict[str, Group] = {
    "speed": Group("speed and likelihood",
                   "new tok: new tokens per prompt (best sequence); tok/s: new tokens / wall time; logp/tok: "
                   "mean model log-prob per new token"),
    "best": Group("the best sequence of each prompt",
                  f"dist-n: distinct n-grams / all n-grams across the outputs; rep-{REPETITION_N}: share of "
                  f"{REPETITION_N}-grams repeated within an output (pooled); seq-rep-{REPETITION_N}: the same, "
                  "averaged per output; loops: share of outputs ending in a loop (>= 2 copies, >= 16 tokens)"),
    "returned": Group("between the sequences returned for each prompt",
                      "seqs: sequences per prompt; dist-n: distinct n-grams among them; self-BLEU: BLEU-4 of "
                      "each against the others; edit: token edit distance per pair (all averaged over "
                      "prompts; '-': one sequence per prompt)",
                      lambda runs: any(r.returns_several for r in runs)),
    "entropy": Group("entropy band and monitor flags",
                     "above / below band: share of tokens whose smoothed entropy lies above / below the "
                     "stable entropy zone; <monitor> /100: flags raised per 100 tokens the monitor watched"),
}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _band(run: StrategyRun, side: int) -> float | None:
    traces = run.entropy_traces()
    if traces is None or run.zone is None:
        return None
    return band_rates(traces, run.zone)[side]


def _returned(run: StrategyRun, metric: Callable[[list], float]) -> float | None:
    return metric(run.candidate_ids) if run.returns_several else None


COLUMNS: list[Column] = [
    Column("prompts", "prompts", lambda r: len(r.best), "{:d}", "number of prompts", "speed"),
    Column("new_tokens_mean", "new tok", lambda r: _mean([len(c.token_ids) for c in r.best]), "{:.1f}",
           "mean number of new tokens per prompt (best sequence)", "speed"),
    Column("tokens_per_s", "tok/s", lambda r: r.tokens_per_s, "{:.1f}",
           "new tokens / wall time, prefill included, over all batches", "speed"),
    Column("distinct_1", "dist-1", lambda r: metrics.distinct_n(r.token_ids, 1), "{:.3f}",
           "distinct unigrams / all unigrams, across the outputs (metrics.distinct_n)"),
    Column("distinct_2", "dist-2", lambda r: metrics.distinct_n(r.token_ids, 2), "{:.3f}",
           "distinct bigrams / all bigrams, across the outputs (metrics.distinct_n)"),
    Column("repetition_rate", f"rep-{REPETITION_N}",
           lambda r: metrics.repetition_rate(r.token_ids, REPETITION_N), "{:.3f}",
           f"fraction of {REPETITION_N}-grams repeating one earlier in the same output, pooled over "
           "outputs (metrics.repetition_rate)"),
    Column("mean_logprob", "logp/tok", lambda r: metrics.mean_logprob(r.logprobs), "{:.3f}",
           "mean model log-prob per new token (metrics.mean_logprob)", "speed"),
    Column("seq_rep_4", f"seq-rep-{REPETITION_N}", lambda r: metrics.seq_rep_n(r.token_ids, REPETITION_N),
           "{:.3f}", f"per output 1 - unique / all {REPETITION_N}-grams, averaged over outputs "
           "(Welleck et al. 2019; metrics.seq_rep_n)"),
    Column("loop_rate", "loops", lambda r: metrics.loop_rate(r.token_ids), "{:.3f}",
           "fraction of outputs ending in a loop: >= 2 copies of a unit of <= 32 tokens covering >= 16 "
           "tokens, as the loop monitor fires (metrics.loop_rate)"),
    Column("returned_per_prompt", "seqs", lambda r: _mean([len(c) for c in r.candidates]), "{:.1f}",
           "mean number of sequences returned per prompt", "returned"),
    Column("returned_distinct_1", "dist-1", lambda r: _returned(r, lambda g: metrics.group_distinct_n(g, 1)),
           "{:.3f}", "distinct-1 among the sequences returned for one prompt, averaged over prompts "
           "(metrics.group_distinct_n)", "returned"),
    Column("returned_distinct_2", "dist-2", lambda r: _returned(r, lambda g: metrics.group_distinct_n(g, 2)),
           "{:.3f}", "distinct-2 among the sequences returned for one prompt, averaged over prompts "
           "(metrics.group_distinct_n)", "returned"),
    Column("self_bleu", "self-BLEU", lambda r: _returned(r, metrics.self_bleu), "{:.3f}",
           "mean BLEU-4 of each returned sequence against the others of its prompt, on token ids, "
           "method-1 smoothing, averaged over prompts (metrics.self_bleu)", "returned"),
    Column("edit_distance", "edit", lambda r: _returned(r, metrics.pairwise_edit_distance), "{:.1f}",
           "mean token edit distance (Levenshtein) between two sequences returned for one prompt, "
           "averaged over pairs and prompts (metrics.pairwise_edit_distance)", "returned"),
    Column("band_above", "above band", lambda r: _band(r, 0), "{:.3f}",
           "fraction of traced tokens of the best sequences whose smoothed entropy lies above the "
           "band's upper bound (EUVR, Arora et al. 2023)", "entropy", optional=True),
    Column("band_below", "below band", lambda r: _band(r, 1), "{:.3f}",
           "fraction of traced tokens of the best sequences whose smoothed entropy lies below the "
           "band's lower bound (ELVR)", "entropy", optional=True),
]


def register_column(column: Column, *, before: str | None = None) -> Column:
    """Add a column to every compare output (before the column with key ``before``, else last)."""
    if any(c.key == column.key for c in COLUMNS):
        raise ValueError(f"a compare column {column.key!r} is already registered")
    keys = [c.key for c in COLUMNS]
    COLUMNS.insert(keys.index(before) if before in keys else len(COLUMNS), column)
    return column


def columns_for(runs: Sequence[StrategyRun]) -> list[Column]:
    """The registered columns, one per ``stats.extra`` key reported by any of ``runs``, and one per
    monitor the runs were given (flags per 100 watched tokens)."""
    cols = list(COLUMNS)
    taken = {c.key for c in cols}
    for key in dict.fromkeys(k for run in runs for k in run.extra_keys()):
        name = key if key not in taken else f"extra_{key}"
        taken.add(name)
        cols.append(Column(name, key.replace("_", " "), lambda r, k=key: r.extra_mean(k), "{:.3g}",
                           f"strategy statistic {key!r} (stats.extra), mean over batches", "speed"))
    for mon in dict.fromkeys(m for run in runs for m in run.monitor_names()):
        cols.append(Column(f"flags_{mon}", f"{mon} /100", lambda r, m=mon: r.flags_per_100(m), "{:.2f}",
                           f"flags raised by monitor {mon!r} per 100 tokens it watched (every decoded "
                           "row, beams included)", "entropy", optional=True))
    return cols
