"""The metric columns of ``decodekit compare``: one :class:`Column` per value of a strategy run.

A column reads a :class:`~decodekit.cli.runs.StrategyRun` (all its generations, every returned
sequence and the per-batch stats) and gives one number. The table, the JSON and the CSV outputs are
all built from the same column list, so a new metric is one more entry:

    >>> from decodekit import metrics                                             # doctest: +SKIP
    >>> register_column(Column("self_bleu", "self-BLEU",                           # doctest: +SKIP
    ...     lambda run: metrics.self_bleu([[c.token_ids for c in cands] for cands in run.candidates]),
    ...     help="similarity between the sequences returned for one prompt"))

Strategy-specific statistics (``Generation.stats.extra``, e.g. accepted tokens per verify) become
columns by themselves: :func:`columns_for` appends one per key that any run reports, averaged over
its batches; runs that do not report it show "-".

Text metrics are computed over the *model's token ids* of each prompt's best sequence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from decodekit import metrics
from decodekit.cli.runs import StrategyRun

__all__ = ["Column", "COLUMNS", "register_column", "columns_for"]

REPETITION_N = 4


@dataclass(frozen=True)
class Column:
    """One metric of a strategy run: ``value(run)`` -> a number, or None when it does not apply."""

    key: str  # field name in the JSON and CSV outputs
    header: str  # table header
    value: Callable[[StrategyRun], float | int | None]
    fmt: str = "{:.3f}"
    help: str = ""

    def compute(self, run: StrategyRun) -> float | int | None:
        """The value, with nan turned into None (no data)."""
        v = self.value(run)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    def format(self, value: float | int | None) -> str:
        return "-" if value is None else self.fmt.format(value)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


COLUMNS: list[Column] = [
    Column("prompts", "prompts", lambda r: len(r.best), "{:d}", "number of prompts"),
    Column("new_tokens_mean", "new tok", lambda r: _mean([len(c.token_ids) for c in r.best]), "{:.1f}",
           "mean number of new tokens per prompt (best sequence)"),
    Column("tokens_per_s", "tok/s", lambda r: r.tokens_per_s, "{:.1f}",
           "new tokens / wall time, prefill included, over all batches"),
    Column("distinct_1", "dist-1", lambda r: metrics.distinct_n(r.token_ids, 1), "{:.3f}",
           "distinct unigrams / all unigrams, across the outputs (metrics.distinct_n)"),
    Column("distinct_2", "dist-2", lambda r: metrics.distinct_n(r.token_ids, 2), "{:.3f}",
           "distinct bigrams / all bigrams, across the outputs (metrics.distinct_n)"),
    Column("repetition_rate", f"rep-{REPETITION_N}",
           lambda r: metrics.repetition_rate(r.token_ids, REPETITION_N), "{:.3f}",
           f"fraction of {REPETITION_N}-grams repeating one earlier in the same output "
           "(metrics.repetition_rate)"),
    Column("mean_logprob", "logp/tok", lambda r: metrics.mean_logprob(r.logprobs), "{:.3f}",
           "mean model log-prob per new token (metrics.mean_logprob)"),
]


def register_column(column: Column, *, before: str | None = None) -> Column:
    """Add a column to every compare output (before the column with key ``before``, else last)."""
    if any(c.key == column.key for c in COLUMNS):
        raise ValueError(f"a compare column {column.key!r} is already registered")
    keys = [c.key for c in COLUMNS]
    COLUMNS.insert(keys.index(before) if before in keys else len(COLUMNS), column)
    return column


def columns_for(runs: Sequence[StrategyRun]) -> list[Column]:
    """The registered columns plus one per ``stats.extra`` key reported by any of ``runs``."""
    cols = list(COLUMNS)
    taken = {c.key for c in cols}
    for key in dict.fromkeys(k for run in runs for k in run.extra_keys()):
        name = key if key not in taken else f"extra_{key}"
        taken.add(name)
        cols.append(Column(name, key.replace("_", " "), lambda r, k=key: r.extra_mean(k), "{:.3g}",
                           f"strategy statistic {key!r} (stats.extra), mean over batches"))
    return cols
