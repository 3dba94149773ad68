"""compare's outputs, all built from the same column list: a rich table, JSON and CSV.

* table: one row per strategy, one column per metric;
* JSON: the settings, the prompts, the columns (key, header, help) and per strategy its config,
  metrics, totals and the per-prompt outputs (text, new tokens, mean log-prob, finish reason, and the
  other returned sequences where there are several);
* CSV: one row per strategy: ``spec``, ``strategy``, then one field per column key.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table

from decodekit import metrics
from decodekit.cli.columns import Column
from decodekit.cli.prompts import Prompt
from decodekit.cli.runs import StrategyRun
from decodekit.cli.specs import config_dict

__all__ = ["table", "print_table", "to_json", "to_csv", "dumps", "write"]

CAPTION = ("dist-n: distinct n-grams / all n-grams across outputs; rep-4: share of 4-grams repeated within "
           "an output; logp/tok: mean model log-prob per new token (all over model tokens of the best "
           "output of each prompt)")


def table(runs: Sequence[StrategyRun], columns: Sequence[Column], title: str = "") -> Table:
    """A rich table: one row per strategy run."""
    out = Table(title=title or None, caption=CAPTION, caption_justify="left", box=box.SIMPLE_HEAD)
    parts = [part for run in runs for part in run.spec.label.replace(",", ", ").split()]
    out.add_column("strategy", style="bold cyan", overflow="fold",
                   min_width=min(26, max(map(len, parts), default=8)))
    for col in columns:
        out.add_column(col.header, justify="right")
    for run in runs:  # ", " lets a long spec wrap between its options
        out.add_row(run.spec.label.replace(",", ", "), *(col.format(col.compute(run)) for col in columns))
    return out


def to_json(runs: Sequence[StrategyRun], columns: Sequence[Column], prompts: Sequence[Prompt],
            settings: dict[str, Any]) -> dict[str, Any]:
    """Everything compare measured, JSON-ready (no data = null)."""
    return {
        "settings": settings,
        "prompts": [{"prompt": p.prompt, **p.meta} for p in prompts],
        "columns": [{"key": c.key, "header": c.header, "help": c.help} for c in columns],
        "strategies": [_run_json(run, columns) for run in runs],
    }


def _run_json(run: StrategyRun, columns: Sequence[Column]) -> dict[str, Any]:
    outputs = []
    for i, cands in enumerate(run.candidates):
        best = cands[0]
        item = {"prompt": i, "text": best.text, "new_tokens": len(best.token_ids),
                "mean_logprob": _finite(metrics.mean_logprob([best.logprobs])),
                "finish_reason": best.finish_reason}
        if len(cands) > 1:
            item["alternatives"] = [c.text for c in cands[1:]]
        outputs.append(item)
    return {
        "spec": run.spec.label,
        "strategy": run.spec.name,
        "config": config_dict(run.strategy.config),
        "seed": run.seed,
        "metrics": {c.key: c.compute(run) for c in columns},
        "stats": run.stats(),
        "outputs": outputs,
    }


def to_csv(runs: Sequence[StrategyRun], columns: Sequence[Column]) -> str:
    """One CSV row per strategy (empty field = no data)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["spec", "strategy", *(c.key for c in columns)])
    for run in runs:
        values = [c.compute(run) for c in columns]
        writer.writerow([run.spec.label, run.spec.name, *("" if v is None else _num(v) for v in values)])
    return buf.getvalue()


def write(text: str, dest: str, stdout: TextIO) -> None:
    """Write ``text`` to the file ``dest``, or to ``stdout`` when ``dest`` is ``-``."""
    if dest == "-":
        stdout.write(text)
        stdout.flush()
        return
    with open(dest, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def dumps(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"


def print_table(runs: Sequence[StrategyRun], columns: Sequence[Column], title: str, stderr: bool) -> None:
    Console(stderr=stderr).print(table(runs, columns, title))


def _finite(v: float) -> float | None:
    return None if v != v else v  # nan -> None


def _num(v: float | int) -> str:
    return str(v) if isinstance(v, int) else f"{v:.6g}"
