"""Entropy band monitor: act when the (smoothed) entropy leaves the stable entropy zone.

Arora et al. 2023 (arXiv:2302.06784): human text keeps the model's smoothed entropy inside a narrow,
flat band; leaving it below goes with repetition and copying (greedy's "entropy drop"), above with
incoherence. This monitor watches ``smoothed_entropy`` (or raw ``entropy``) against a band file's
zone ``mean -+ a * std`` or explicit ``lower`` / ``upper`` bounds, and answers ``below`` / ``above``
actions ("flag", "stop", "rollback" with ``rollback`` tokens, "switch", or "ok" to ignore a side).
Violation rates (ELVR / EUVR) come from the result's traces with
:func:`decodekit.monitors.band.violation_rates`.

Example:
    >>> mon = EntropyBand(lower=0.3, upper=4.0, below="flag", above="ok")
    >>> mon = EntropyBand(band="band.json", a=1.5, zone="position")   # calibrated  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from decodekit.config import StrategyConfig, check
from decodekit.monitors.band import Band, default_band_path
from decodekit.monitors.base import OK, ROLLBACK, SignalMonitor, Verdict, action_code
from decodekit.monitors.threshold import violations
from decodekit.registry import register_monitor

__all__ = ["EntropyBand", "band_bounds"]


def band_bounds(band: Band | None, t: torch.Tensor, a: float, zone: str,
                lower: float | None, upper: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lower, upper)`` shaped like ``t``: explicit bounds where given, the band's zone otherwise."""
    if band is None:
        lo = torch.full(t.shape, -float("inf"), device=t.device)
        hi = torch.full(t.shape, float("inf"), device=t.device)
    else:
        lo, hi = band.bounds(t, a, zone)
    if lower is not None:
        lo = torch.full_like(lo, lower)
    if upper is not None:
        hi = torch.full_like(hi, upper)
    return lo, hi


def load_band(band: str | None, lower: float | None, upper: float | None) -> tuple[Band | None, str]:
    """The band a config names: a file, the shipped default (when no explicit bounds are given), or
    none (both bounds explicit). Errors (missing / malformed file) surface at construction."""
    if band is None and lower is not None and upper is not None:
        return None, ""
    path = str(band) if band is not None else str(default_band_path())
    return Band.load(path), path


@register_monitor("entropy_band")
@dataclass(frozen=True)
class EntropyBand(SignalMonitor, StrategyConfig):
    strategy_name = "entropy band monitor"
    band: str | None = None
    a: float = 1.5
    zone: Literal["flat", "position"] = "position"
    lower: float | None = None
    upper: float | None = None
    smoothed: bool = True
    below: str = "flag"
    above: str = "flag"
    rollback: int = 0
    patience: int = 1
    min_tokens: int = 0
    _band: Any = field(default=None, init=False, repr=False, compare=False)
    _path: str = field(default="", init=False, repr=False, compare=False)

    @property
    def signal(self) -> str:
        return "smoothed_entropy" if self.smoothed else "entropy"

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.signal,)

    def validate(self) -> None:
        codes = [OK if x == "ok" else action_code(x, self.strategy_name) for x in (self.below, self.above)]
        check(ROLLBACK not in codes or self.rollback >= 1, "entropy band monitor: 'rollback' needs rollback >= 1")
        check(self.patience >= 1 and self.min_tokens >= 0, "entropy band monitor: patience >= 1, min_tokens >= 0")
        band, path = load_band(self.band, self.lower, self.upper)
        object.__setattr__(self, "_band", band)
        object.__setattr__(self, "_path", path)

    def check(self, signals) -> Verdict:
        checked = signals.memory(f"{signals.monitor}:band")
        if self._band is not None and not checked:  # once per decode: the model may differ next time
            self._band.check(signals.state.lm, self._path)
            checked["ok"] = True
        t = signals.positions.gather(1, (signals.out.count - 1).clamp_min(0)[:, None])[:, 0]  # [rows]
        lo, hi = band_bounds(self._band, t, self.a, self.zone, self.lower, self.upper)
        verdicts = []
        for side, act in (("below", self.below), ("above", self.above)):
            if act == "ok":
                continue
            hit = violations(signals, self.signal, None, None, self.patience, self.min_tokens,
                             lower=lo if side == "below" else None, upper=hi if side == "above" else None)
            verdicts.append(self.verdict(signals, hit, action_code(act), self.rollback,
                                         f"{self.signal} {side} the band", suffix=side))
        return _merge(verdicts, f"{self.signal} outside the band")


def _merge(verdicts: list[Verdict], both: str) -> Verdict | None:
    """Per row, the first side that acts (the two sides never hold at once)."""
    if not verdicts:
        return None
    action = torch.zeros_like(verdicts[0].action)  # [rows]
    rollback = torch.zeros_like(verdicts[0].action)  # [rows]
    for v in verdicts:
        take = (action == OK) & (v.action != OK)
        action = torch.where(take, v.action, action)
        if v.rollback is not None:
            rollback = torch.where(take, v.rollback, rollback)
    return Verdict(action, rollback, verdicts[0].detail if len(verdicts) == 1 else both)
