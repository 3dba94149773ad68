"""A threshold monitor over any traced signal, and a recorder that only traces signals.

Example:
    >>> mon = Threshold("max_prob", below=0.2, patience=3, action="stop")   # 3 unsure tokens in a row
    >>> mon.requires
    ('max_prob',)
    >>> rec = Record(("entropy", "margin"))             # traces only: gen.traces[i].signals["margin"]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decodekit.config import StrategyConfig, check
from decodekit.monitors.base import ROLLBACK, SignalMonitor, Verdict, action_code
from decodekit.monitors.signals import resolve
from decodekit.registry import register_monitor

__all__ = ["Threshold", "Record"]


def _check_traced(who: str, names) -> None:
    for sig in resolve(names):  # unknown names: ValueError listing the known ones
        if sig.name in names and not sig.traced:
            raise ValueError(f"{who}: signal {sig.name!r} is an intermediate (not one value per token); "
                             "use a per-token signal")


@register_monitor("threshold")
@dataclass(frozen=True)
class Threshold(SignalMonitor, StrategyConfig):
    """Act when ``signal`` is above ``above`` or below ``below`` for ``patience`` tokens in a row.

    ``action``: "flag" (once per stretch), "stop", "rollback" (``rollback`` tokens) or "switch".
    Tokens before ``min_tokens`` are ignored.
    """

    strategy_name = "threshold monitor"
    signal: str = "entropy"
    above: float | None = None
    below: float | None = None
    action: str = "flag"
    rollback: int = 0
    patience: int = 1
    min_tokens: int = 0

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.signal,)

    def validate(self) -> None:
        _check_traced(self.strategy_name, (self.signal,))
        check(self.above is not None or self.below is not None, "threshold monitor: give above=, below= or both")
        code = action_code(self.action, self.strategy_name)
        check(code != ROLLBACK or self.rollback >= 1, "threshold monitor: action 'rollback' needs rollback >= 1")
        check(self.patience >= 1, f"threshold monitor: patience must be >= 1, got {self.patience}")
        check(self.min_tokens >= 0, f"threshold monitor: min_tokens must be >= 0, got {self.min_tokens}")

    def check(self, signals) -> Verdict:
        hit = violations(signals, self.signal, self.above, self.below, self.patience, self.min_tokens)
        bound = " or ".join(x for x in (f"> {self.above}" if self.above is not None else "",
                                        f"< {self.below}" if self.below is not None else "") if x)
        return self.verdict(signals, hit, action_code(self.action), self.rollback,
                            f"{self.signal} {bound} for {self.patience} token(s)")


def violations(signals, name: str, above, below, patience: int = 1, min_tokens: int = 0,
               lower: torch.Tensor | None = None, upper: torch.Tensor | None = None) -> torch.Tensor:
    """``[rows]`` bool: the last ``patience`` tokens (all at positions >= ``min_tokens``) of each row
    are outside the bounds (constants ``above``/``below`` or per-row tensors ``upper``/``lower``)."""
    trace = signals.trace(name)  # [rows, L]
    last = signals.positions.gather(1, (signals.out.count - 1).clamp_min(0)[:, None])  # [rows, 1]
    idx = last - torch.arange(patience, device=last.device)  # [rows, patience]
    vals = trace.gather(1, idx.clamp_min(0))  # [rows, patience]
    bad = torch.zeros_like(vals, dtype=torch.bool)
    hi = upper[:, None] if upper is not None else above
    lo = lower[:, None] if lower is not None else below
    if hi is not None:
        bad |= vals > hi
    if lo is not None:
        bad |= vals < lo
    return (bad & (idx >= min_tokens)).all(1)


@register_monitor("record")
@dataclass(frozen=True)
class Record(SignalMonitor, StrategyConfig):
    """Never acts: makes the loop compute and trace ``signals`` (for plots and metrics)."""

    strategy_name = "record monitor"
    signals: tuple = ("entropy", "smoothed_entropy")

    @property
    def requires(self) -> tuple[str, ...]:
        return tuple(self.signals)

    def validate(self) -> None:
        check(all(isinstance(s, str) for s in self.signals), "record monitor: signals must be names")
        _check_traced(self.strategy_name, tuple(self.signals))

    def check(self, signals) -> None:
        return None
