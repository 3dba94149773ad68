"""compare's outputs, all built from the same column list: rich tables, JSON and CSV.

* tables: one per column group (:data:`~decodekit.cli.columns.GROUPS`), one row per strategy;
* JSON: the settings, the prompts, the columns (key, header, group, help) and per strategy its config,
  metrics, totals, the mean smoothed entropy by position (when traced) and the per-prompt outputs
  (text, new tokens, mean log-prob, finish reason, the other returned sequences where there are
  several, and the monitors' flags when compare was given monitors);
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
from decodekit.cli.columns import GROUPS, Column
from decodekit.cli.entropy import mean_by_position
from decodekit.cli.prompts import Prompt
from decodekit.cli.runs import StrategyRun
from decodekit.cli.specs import config_dict

__all__ = ["table", "tables", "print_table", "to_json", "to_csv", "dumps", "write"]


def tables(runs: Sequence[StrategyRun], columns: Sequence[Column]) -> list[Table]:
    """One table per column group that has something to show, in :data:`GROUPS` order: optional
    columns without any value are left out, and so are groups whose ``show(runs)`` is false."""
    out = []
    for key, group in GROUPS.items():
        cols = [c for c in columns if c.group == key and not (c.optional and all(c.compute(r) is None for r in runs))]
        if cols and group.show(runs):
            out.append(table(runs, cols, group.title, group.caption))
    rest = [c for c in columns if c.group not in GROUPS]
    if rest:
        out.append(table(runs, rest, "other"))
    return out


def table(runs: Sequence[StrategyRun], columns: Sequence[Column], title: str = "", caption: str = "") -> Table:
    """A rich table: one row per strategy run."""
    out = Table(title=title or None, caption=caption or None, caption_justify="left", box=box.SIMPLE_HEAD,
                title_justify="left", title_style="bold")
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
        "columns": [{"key": c.key, "header": c.header, "group": c.group, "help": c.help} for c in columns],
        "strategies": [_run_json(run, columns) for run in runs],
    }


def _run_json(run: StrategyRun, columns: Sequence[Column]) -> dict[str, Any]:
    outputs = []
    flags = run.prompt_flags()
    for i, cands in enumerate(run.candidates):
        best = cands[0]
        item = {"prompt": i, "text": best.text, "new_tokens": len(best.token_ids),
                "mean_logprob": _finite(metrics.mean_logprob([best.logprobs])),
                "finish_reason": best.finish_reason}
        if len(cands) > 1:
            item["alternatives"] = [c.text for c in cands[1:]]
        if run.monitors:
            item["flags"] = [{"step": f.step, "monitor": f.monitor, "action": f.action, "detail": f.detail}
                             for f in flags[i]]
        outputs.append(item)
    out = {
        "spec": run.spec.label,
        "strategy": run.spec.name,
        "config": config_dict(run.strategy.config),
        "seed": run.seed,
        "metrics": {c.key: c.compute(run) for c in columns},
        "stats": run.stats(),
    }
    if run.monitors:
        out["stats"]["monitored_tokens"] = run.monitored_tokens
    traces = run.entropy_traces()
    if traces is not None:
        out["entropy"] = {"traced_tokens": sum(map(len, traces)),
                          "mean_smoothed_entropy": [_finite(float(v)) for v in mean_by_position(traces)]}
    out["outputs"] = outputs
    return out


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
    """Print ``title`` and the tables of :func:`tables`."""
    console = Console(stderr=stderr)
    console.print(title, style="bold")
    for t in tables(runs, columns):
        console.print()
        console.print(t)


def _finite(v: float) -> float | None:
    return None if v != v else v  # nan -> None


def _num(v: float | int) -> str:
    return str(v) if isinstance(v, int) else f"{v:.6g}"
