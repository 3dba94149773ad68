"""The monitor protocol: observe every step, return a verdict per row.

A monitor sees each step's new tokens with the raw logits they were chosen from, and may answer per
row: ok, flag, stop the row, roll the row back ``n`` tokens (the loop masks those tokens out of the
cache and re-decodes from the earlier prefix), or switch the row to another strategy. Verdicts are
tensors so no host sync is needed unless a row actually acts.

Two kinds of monitor run in the loop (through :class:`~decodekit.monitors.runner.MonitorRunner`):

* plain monitors: ``observe(state, out) -> Verdict | None``;
* signal monitors (:class:`SignalMonitor`): declare ``requires`` (signal names, resolved once per
  decode) and implement ``check(signals) -> Verdict | None``; every required signal is computed once
  per step, on the device, however many monitors need it (see :mod:`decodekit.monitors.signals`).

SWITCH is consumed by strategies, not by the loop: the runner ORs the rows into
``state.extra["switch"]`` (``[rows]`` bool) and a strategy that can hand rows over (e.g.
``"handover"``) reads it at its next step. Strategies that cannot, ignore it; the flag is recorded.

Example:
    >>> class StopAfterComma:
    ...     name = "stop_after_comma"
    ...     def __init__(self, comma_id): self.comma_id = comma_id
    ...     def observe(self, state, out):
    ...         hit = (out.tokens == self.comma_id).any(1)          # [rows]
    ...         return Verdict.where(hit, STOP)
    >>> class LowEntropy(SignalMonitor):
    ...     requires = ("smoothed_entropy",)
    ...     def check(self, signals):
    ...         low = signals.last("smoothed_entropy") < 0.5       # [rows]
    ...         return Verdict.where(low, FLAG, detail="smoothed_entropy < 0.5")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import torch

from decodekit.state import DecodeState, StepOutput

if TYPE_CHECKING:  # pragma: no cover
    from decodekit.monitors.signals import StepSignals

__all__ = ["OK", "FLAG", "STOP", "ROLLBACK", "SWITCH", "ACTIONS", "Verdict", "Monitor",
           "SignalMonitor", "action_code"]

OK, FLAG, STOP, ROLLBACK, SWITCH = 0, 1, 2, 3, 4
ACTIONS = {OK: "ok", FLAG: "flag", STOP: "stop", ROLLBACK: "rollback", SWITCH: "switch"}


def action_code(action: str, who: str = "monitor") -> int:
    """``"flag"`` -> FLAG, ...; a clear ValueError for anything else."""
    codes = {v: k for k, v in ACTIONS.items() if k != OK}
    if action not in codes:
        raise ValueError(f"{who}: action must be one of {', '.join(map(repr, codes))}, got {action!r}")
    return codes[action]


@dataclass(frozen=True)
class Verdict:
    """Per-row actions of one monitor at one step."""

    action: torch.Tensor  # [rows] long: OK, FLAG, STOP, ROLLBACK or SWITCH
    rollback: torch.Tensor | None = None  # [rows] long: tokens to roll back where action == ROLLBACK
    detail: str = ""  # why (goes into each Flag)

    @staticmethod
    def where(mask: torch.Tensor, action: int, rollback: int | torch.Tensor = 0, detail: str = "") -> "Verdict":
        """``action`` on the rows where ``mask [rows]`` is True, OK elsewhere."""
        act = torch.where(mask, action, OK).long()
        n = None
        if action == ROLLBACK:
            n = torch.where(mask, torch.as_tensor(rollback, device=mask.device), 0).long()
        return Verdict(act, n, detail)


@runtime_checkable
class Monitor(Protocol):
    """Anything with a ``name`` and ``observe(state, out) -> Verdict | None``."""

    name: ClassVar[str] | str

    def observe(self, state: DecodeState, out: StepOutput) -> Verdict | None: ...


class SignalMonitor:
    """Base of monitors that act on signals. Subclasses set ``requires`` and implement ``check``.

    ``requires`` is a capability attribute: the runner resolves it once per decode into an ordered
    plan of signals (unknown names raise a ValueError listing the known ones) and passes the step's
    values to ``check``.
    """

    name: ClassVar[str] = "signal_monitor"
    requires: tuple[str, ...] = ()

    def check(self, signals: "StepSignals") -> Verdict | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def verdict(self, signals: "StepSignals", hit: torch.Tensor, action: int, rollback: int | torch.Tensor = 0,
                detail: str = "", suffix: str = "hit") -> Verdict:
        """The verdict for ``hit [rows]`` (rows that gained no token are left alone). The per-token
        hits are traced as ``<monitor>_<suffix>`` (``<monitor>``: the name, ``_2``... for repeats); a
        FLAG is raised only where a stretch of hits starts, the other actions wherever a row hits."""
        hit = hit & signals.active
        key = f"{signals.monitor or self.name}_{suffix}"
        prev = signals.state.traces.get(key)
        signals.write_trace(key, hit.float()[:, None].expand_as(signals.positions))
        if action == FLAG and prev is not None:
            before = (signals.positions[:, :1] - 1).clamp_min(0)  # [rows, 1] position before the step
            was = (prev.gather(1, before)[:, 0] > 0) & (signals.positions[:, 0] > 0)  # [rows]
            hit = hit & ~was
        return Verdict.where(hit, action, rollback, detail)

    def observe(self, state: DecodeState, out: StepOutput) -> Verdict | None:
        raise TypeError(
            f"{type(self).__name__} acts on signals: pass it to decodekit.generate(..., monitors=[...]), "
            "whose loop computes the signals it requires and calls check()"
        )
