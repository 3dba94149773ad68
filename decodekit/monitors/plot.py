"""Entropy traces per strategy as a PNG (matplotlib).

For each strategy, the mean over rows of a traced signal (default ``smoothed_entropy``) at every
generated position, over the stable entropy zone of a band (Arora et al. 2023, arXiv:2302.06784):
greedy's entropy drops below the zone, sampling's rises above it, entropy-aware decoding stays in it.

Example:
    >>> runs = {name: decodekit.generate(lm, prompts, name, max_new_tokens=128, chat=False, seed=0,   # doctest: +SKIP
    ...                                  monitors=[Record()]) for name in ("greedy", "eas")}
    >>> plot_traces(runs, "entropy.png", band=Band.load(default_band_path()))                      # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from decodekit.monitors.band import Band
from decodekit.state import Generation

__all__ = ["mean_trace", "plot_traces", "plot_series"]


def mean_trace(gen: Generation, signal: str) -> np.ndarray:
    """``[positions]`` mean of ``signal`` over the rows that reached each position (nan: none)."""
    rows = [t.signals[signal] for t in gen.traces if signal in t.signals]
    if not rows:
        raise ValueError(f"{gen.strategy}: no trace of {signal!r}; decode with monitors=[Record(({signal!r},))]")
    table = np.full((len(rows), max(map(len, rows)) or 1), np.nan)
    for i, r in enumerate(rows):
        table[i, : len(r)] = r
    with np.errstate(invalid="ignore"):
        return np.nanmean(table, 0) if table.size else table[0]


def plot_traces(runs: Mapping[str, Generation], path: str | os.PathLike, *, signal: str = "smoothed_entropy",
                band: Band | None = None, a: float = 1.5, zone: str = "flat", title: str = "") -> Path:
    """Write one PNG with a line per strategy (``runs``: label -> Generation) and the band's zone."""
    series = {label: mean_trace(gen, signal) for label, gen in runs.items()}
    return plot_series(series, path, band=band, a=a, zone=zone, ylabel=f"{signal} (nats)",
                       title=title or f"{signal} per strategy (mean over prompts)")


def plot_series(series: Mapping[str, Sequence[float] | np.ndarray], path: str | os.PathLike, *,
                band: Band | None = None, a: float = 1.5, zone: str = "flat", title: str = "",
                ylabel: str = "smoothed entropy (nats)") -> Path:
    """Write one PNG with a line per entry of ``series`` (label -> ``[positions]`` values, nan = no
    data) over the band's zone ``bounds(t, a, zone)`` (none if ``band`` is None). Returns the path.

    Example:
        >>> plot_series({"greedy": [2.0, 1.5, 1.1], "sample": [2.2, 2.6, 2.9]}, "h.png")  # doctest: +SKIP
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    longest = 1
    for label, values in series.items():
        y = np.asarray(values, dtype=float)
        longest = max(longest, len(y))
        ax.plot(np.arange(len(y)), y, label=label, linewidth=1.4)
    if band is not None and not math.isinf(a):
        t = torch.arange(longest)
        lo, hi = band.bounds(t, a, zone)
        ax.fill_between(t.numpy(), lo.numpy(), hi.numpy(), color="grey", alpha=0.2,
                        label=f"stable entropy zone ({zone}, ±{a:g} std)")
    ax.set_xlabel("generated token")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "per strategy (mean over prompts)", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    out = Path(path)
    fig.savefig(out, bbox_inches="tight")  # the legend sits below the axes
    plt.close(fig)
    return out
