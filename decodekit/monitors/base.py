"""The monitor protocol: observe every step, return a verdict per row.

A monitor sees each step's new tokens with the raw logits they were chosen from, and may answer per
row: ok, flag, stop the row, or roll the row back ``n`` tokens (the loop masks those tokens out of the
cache and re-decodes from the earlier prefix). Verdicts are tensors so no host sync is needed unless a
row actually acts.

Example:
    >>> class StopAfterComma:
    ...     name = "stop_after_comma"
    ...     def __init__(self, comma_id): self.comma_id = comma_id
    ...     def observe(self, state, out):
    ...         hit = (out.tokens == self.comma_id).any(1)          # [rows]
    ...         return Verdict.where(hit, STOP)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch

from decodekit.state import DecodeState, StepOutput

__all__ = ["OK", "FLAG", "STOP", "ROLLBACK", "ACTIONS", "Verdict", "Monitor"]

OK, FLAG, STOP, ROLLBACK = 0, 1, 2, 3
ACTIONS = {OK: "ok", FLAG: "flag", STOP: "stop", ROLLBACK: "rollback"}


@dataclass(frozen=True)
class Verdict:
    """Per-row actions of one monitor at one step."""

    action: torch.Tensor  # [rows] long: OK, FLAG, STOP or ROLLBACK
    rollback: torch.Tensor | None = None  # [rows] long: tokens to roll back where action == ROLLBACK

    @staticmethod
    def where(mask: torch.Tensor, action: int, rollback: int | torch.Tensor = 0) -> "Verdict":
        """``action`` on the rows where ``mask [rows]`` is True, OK elsewhere."""
        act = torch.where(mask, action, OK).long()
        n = None
        if action == ROLLBACK:
            n = torch.where(mask, torch.as_tensor(rollback, device=mask.device), 0).long()
        return Verdict(act, n)


@runtime_checkable
class Monitor(Protocol):
    """Anything with a ``name`` and ``observe(state, out) -> Verdict | None``."""

    name: ClassVar[str] | str

    def observe(self, state: DecodeState, out: StepOutput) -> Verdict | None: ...
