"""compare's entropy traces: what it records, the band zone, violation rates and the PNG plot.

When band metrics or plots are asked for, every batch of every strategy decodes with
``Record(("entropy",))`` (a monitor that never acts, so the outputs do not change): the loop traces
the entropy of the model's raw next-token distribution at each generated token of every decoded row.
For each prompt compare then takes the trace of its *best* returned sequence: the decoded row that
shares the longest prefix with it. The entropy at position ``t`` depends only on the tokens before
``t``, so the row's values are exact up to one past the shared prefix; for greedy and sampling the
row is the sequence itself; for beam search a finished hypothesis is covered as far as a surviving
beam shares it, and never at its last token (at that step no row gains a token, so no monitor sees
it). ``traced_tokens`` in the JSON says how many tokens were covered.

The values are smoothed as in the band (trailing mean over ``band.width`` tokens including the
current one, Arora et al. 2023, arXiv:2302.06784) and compared with the zone
``band.bounds(t, a, zone)``: above the upper bound / below the lower bound (EUVR / ELVR).

Example:
    >>> zone = BandZone(Band.load(default_band_path()), a=1.5, zone="position")      # doctest: +SKIP
    >>> traces = best_traces(run.generations, zone.width)      # [prompt][position]   # doctest: +SKIP
    >>> band_rates(traces, zone)                                # (above, below)       # doctest: +SKIP
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from decodekit.monitors.band import Band, default_band_path
from decodekit.monitors.signals import SmoothedEntropy
from decodekit.monitors.threshold import Record
from decodekit.state import Candidate, Generation

__all__ = ["SIGNAL", "BandZone", "recorder", "find_band", "smooth", "candidate_trace", "best_traces",
           "band_rates", "mean_by_position", "write_plots"]

SIGNAL = "entropy"  # what compare records; smoothed here with the band's width
DEFAULT_WIDTH = SmoothedEntropy.width


@dataclass(frozen=True)
class BandZone:
    """A band and the zone compare measures against: ``bounds(t, a, zone)`` of the band."""

    band: Band
    a: float = 1.5
    zone: str = "position"
    path: str = ""

    @property
    def width(self) -> int:
        return self.band.width

    def bounds(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)``, each ``[length]``: the zone at generated positions 0..length-1."""
        lo, hi = self.band.bounds(torch.arange(length), self.a, self.zone)
        return lo.numpy().astype(float), hi.numpy().astype(float)

    def describe(self) -> str:
        return f"{self.band.model} band, {self.zone} zone, ±{self.a:g} std"


def recorder() -> Record:
    """The monitor compare adds to trace the model's entropy (it never acts)."""
    return Record((SIGNAL,))


def find_band(option: str | None, lm, *, a: float, zone: str) -> BandZone | None:
    """The zone for ``--band``: ``"none"``: no band; a file: that band, which must fit ``lm``
    (ValueError otherwise); ``None``: the shipped band if it was calibrated for ``lm``, else none."""
    if option is not None and option.lower() == "none":
        return None
    if option is not None:
        return BandZone(Band.load(option).check(lm, option), a, zone, option)
    path = default_band_path()
    band = Band.load(path)
    try:
        band.check(lm, path)
    except ValueError:  # another model: no band unless --band gives one
        return None
    return BandZone(band, a, zone, str(path))


def smooth(values: Sequence[float], width: int = DEFAULT_WIDTH) -> list[float]:
    """Trailing mean over ``width`` values including the current one (fewer at the start).

    >>> smooth([1.0, 2.0, 3.0, 4.0], 2)
    [1.0, 1.5, 2.5, 3.5]
    """
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out


def candidate_trace(gen: Generation, prompt: int, cand: Candidate, signal: str = SIGNAL) -> list[float]:
    """``signal`` at the first positions of ``cand`` (a sequence returned for ``prompt`` of ``gen``),
    from the decoded row sharing the longest prefix with it; ``[]`` if none was traced."""
    best: list[float] = []
    for tr in gen.traces:
        if tr.prompt != prompt or signal not in tr.signals:
            continue
        shared = 0
        for x, y in zip(tr.token_ids, cand.token_ids):
            if x != y:
                break
            shared += 1
        n = min(shared + 1, len(tr.signals[signal]), len(cand.token_ids))  # position `shared` is exact too
        if n > len(best):
            best = list(tr.signals[signal][:n])
    return best


def best_traces(generations: Sequence[Generation], width: int = DEFAULT_WIDTH) -> list[list[float]]:
    """``[prompt][position]`` smoothed entropy of each prompt's best sequence, over all batches."""
    out = []
    for gen in generations:
        for p, cands in enumerate(gen.candidates):
            out.append(smooth(candidate_trace(gen, p, cands[0]), width))
    return out


def band_rates(traces: Sequence[Sequence[float]], zone: BandZone) -> tuple[float, float]:
    """``(above, below)``: fractions of the traced tokens whose smoothed entropy lies above the zone's
    upper bound / below its lower bound, pooled over prompts (nan: nothing traced)."""
    above = below = total = 0
    for values in traces:
        v = np.asarray(values, dtype=float)
        if v.size == 0:
            continue
        lo, hi = zone.bounds(v.size)
        above += int((v > hi).sum())
        below += int((v < lo).sum())
        total += v.size
    return (above / total, below / total) if total else (math.nan, math.nan)


def mean_by_position(traces: Sequence[Sequence[float]]) -> np.ndarray:
    """``[positions]`` mean over the traces that reach each position."""
    length = max((len(t) for t in traces), default=0)
    table = np.full((max(len(traces), 1), max(length, 1)), np.nan)
    for i, t in enumerate(traces):
        table[i, : len(t)] = t
    with warnings.catch_warnings():  # all-nan columns ("mean of empty slice") give nan
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(table, 0)[:length]


def write_plots(series: Mapping[str, np.ndarray], directory: str | os.PathLike, *, zone: BandZone | None,
                width: int, prompts: int) -> list[Path]:
    """Write ``entropy.png`` (one line per strategy over the band's zone) and ``entropy.csv`` (the same
    series, one column per strategy) into ``directory`` (created if needed). Returns the paths."""
    from decodekit.monitors.plot import plot_series

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    title = (f"smoothed entropy of the best sequence (trailing mean of {width}), mean over {prompts} "
             f"prompts" + (f"\nzone: {zone.describe()}" if zone else ""))
    png = plot_series(series, out / "entropy.png", band=zone.band if zone else None,
                      a=zone.a if zone else 1.5, zone=zone.zone if zone else "flat", title=title)
    length = max((len(v) for v in series.values()), default=0)
    with open(out / "entropy.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["position", *series])
        for t in range(length):
            writer.writerow([t, *(f"{v[t]:.6g}" if t < len(v) and not math.isnan(v[t]) else ""
                                  for v in series.values())])
    return [png, out / "entropy.csv"]
