"""Loop detector: a row whose generated text ends in a verbatim repeated block.

Fallback behaviour #1 of Ivgi et al. 2024, "From Loops to Oops" (arXiv:2407.06071): under
uncertainty, models fall back to repeating themselves. The detector fires when, for some period
``p <= max_period``, the generation ends in ``>= min_repeats`` consecutive copies of a ``p``-token unit
covering ``>= min_span`` tokens (signal ``loops``, see :mod:`decodekit.monitors.sequence`).

``action="rollback"`` removes the repeats (keeps one copy); pair it with a stochastic strategy or
``"handover"`` -- greedy would decode the same loop again.

Example:
    >>> gen = decodekit.generate(lm, "List colours:", max_new_tokens=128,           # doctest: +SKIP
    ...                          monitors=[LoopDetector(action="stop")])
    >>> gen.flags          # [Flag(prompt=0, step=57, monitor='loop', action='stop', ...)]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decodekit.config import StrategyConfig, check
from decodekit.monitors.base import SignalMonitor, Verdict, action_code
from decodekit.monitors.sequence import Loops
from decodekit.registry import register_monitor

__all__ = ["LoopDetector"]


@register_monitor("loop")
@dataclass(frozen=True)
class LoopDetector(SignalMonitor, StrategyConfig):
    strategy_name = "loop detector"
    requires = ("loops", "loop_span", "loop_period")
    max_period: int = 32
    min_repeats: int = 2
    min_span: int = 16
    action: str = "flag"

    def validate(self) -> None:
        check(1 <= self.max_period <= Loops.max_period,
              f"loop detector: max_period must be in [1, {Loops.max_period}], got {self.max_period}")
        check(self.min_repeats >= 2, f"loop detector: min_repeats must be >= 2, got {self.min_repeats}")
        check(self.min_span >= 2, f"loop detector: min_span must be >= 2, got {self.min_span}")
        action_code(self.action, self.strategy_name)

    def check(self, signals) -> Verdict:
        spans = signals["loops"][:, : self.max_period]  # [rows, P]
        p = torch.arange(1, spans.shape[1] + 1, device=spans.device)  # [P]
        ok = (spans >= self.min_span) & (spans >= self.min_repeats * p)  # [rows, P]
        hit = ok.any(1)  # [rows]
        first = ok.long().argmax(1)  # [rows] smallest firing period - 1
        repeats = spans.gather(1, first[:, None])[:, 0] - (first + 1)  # [rows] tokens past one copy
        return self.verdict(signals, hit, action_code(self.action), repeats,
                            f">= {self.min_repeats} repeats covering >= {self.min_span} tokens")
