"""Entropy traces per strategy as a PNG (matplotlib, the ``plot`` extra).

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
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from decodekit.monitors.band import Band
from decodekit.state import Generation

__all__ = ["mean_trace", "plot_traces"]


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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    longest = 1
    for label, gen in runs.items():
        y = mean_trace(gen, signal)
        longest = max(longest, len(y))
        ax.plot(np.arange(len(y)), y, label=label, linewidth=1.4)
    if band is not None and not math.isinf(a):
        t = torch.arange(longest)
        lo, hi = band.bounds(t, a, zone)
        ax.fill_between(t.numpy(), lo.numpy(), hi.numpy(), color="grey", alpha=0.2,
                        label=f"stable entropy zone (±{a:g} std)")
    ax.set_xlabel("generated token")
    ax.set_ylabel(f"{signal} (nats)")
    ax.set_title(title or f"{signal} per strategy (mean over prompts)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
