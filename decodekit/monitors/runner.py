"""MonitorRunner: resolves what the monitors require once, then per step computes each required
signal once and asks every monitor for its verdict.

The loop owns one runner per decode::

    runner = MonitorRunner(monitors)                 # resolves signal names (clear errors) up front
    for monitor, verdict in runner.observe(state, out):
        _act(state, monitor, verdict, flags)         # the loop applies flag / stop / rollback
    Generation(..., traces=runner.traces(state))     # per-token signal values of every row

SWITCH verdicts are left to strategies: the runner ORs them into ``state.extra["switch"]``
(``[rows]`` bool), which a strategy that can hand rows over reads (see ``strategies/handover.py``).

Example:
    >>> from decodekit.monitors import EntropyBand, LoopDetector
    >>> runner = MonitorRunner([EntropyBand(lower=0.5), LoopDetector()])
    >>> [s.name for s in runner.plan]
    ['log_probs', 'entropy', 'smoothed_entropy', 'loops', 'loop_span', 'loop_period']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from decodekit.monitors.base import SWITCH, Verdict
from decodekit.monitors.signals import StepSignals, resolve
from decodekit.state import DecodeState, StepOutput, Trace

__all__ = ["MonitorRunner", "uses_signals"]


def uses_signals(monitor: Any) -> bool:
    """Capability check: a monitor that declares ``requires`` and implements ``check(signals)``."""
    return isinstance(getattr(monitor, "requires", None), (tuple, list)) and callable(getattr(monitor, "check", None))


class MonitorRunner:
    """Runs ``monitors`` (plain or signal monitors) over each step of one decode."""

    def __init__(self, monitors: Sequence[Any] = ()):
        self.monitors = tuple(monitors)
        names: list[str] = []
        for m in self.monitors:
            if uses_signals(m):
                names.extend(m.requires)
            elif not callable(getattr(m, "observe", None)):
                raise TypeError(f"a monitor needs observe(state, out) or requires + check(signals); "
                                f"got {type(m).__name__}")
        self.plan = resolve(names)  # ValueError listing the known signals on an unknown name
        self.keys = _unique_keys(self.monitors)  # trace / memory key of each monitor
        self.memory: dict[str, Any] = {}
        self.computed: Counter[str] = Counter()  # signal name -> times computed (one per step)

    @property
    def compactable(self) -> bool:
        """Whether finished rows may leave the batch (:mod:`decodekit.compaction`): every monitor and
        signal keeps its per-row data in ``state.traces`` (which moves with the rows). Signal
        monitors and signals do unless they say ``compactable = False``; plain monitors only when
        they say ``compactable = True``."""
        return (all(getattr(m, "compactable", uses_signals(m)) for m in self.monitors)
                and all(getattr(s, "compactable", True) for s in self.plan))

    def observe(self, state: DecodeState, out: StepOutput) -> list[tuple[Any, Verdict | None]]:
        """Compute the plan's signals for this step, then each monitor's verdict, in order."""
        if not self.monitors:
            return []
        signals = StepSignals(state, out, self.memory)
        for sig in self.plan:
            value = sig.compute(signals)
            signals.values[sig.name] = value
            self.computed[sig.name] += 1
            if sig.traced:
                signals.write_trace(sig.name, value)
        verdicts = []
        for m, key in zip(self.monitors, self.keys):
            signals.monitor = key
            verdict = m.check(signals) if uses_signals(m) else m.observe(state, out)
            if verdict is not None:
                switch = verdict.action == SWITCH  # [rows]
                state.extra["switch"] = switch | state.extra.get("switch", torch.zeros_like(switch))
            verdicts.append((m, verdict))
        return verdicts

    @staticmethod
    def traces(state: DecodeState) -> list[Trace]:
        """Every row's per-token values of everything in ``state.traces`` (empty if nothing traced)."""
        if not state.traces:
            return []
        n_new = state.n_new.tolist()
        width = max(n_new, default=0)
        values = {k: v[:, :width].tolist() for k, v in sorted(state.traces.items())}
        prompts = state.prompt_of_row.tolist()
        return [Trace(prompts[r], r, state.tokens_of(r), {k: v[r][:n] for k, v in values.items()})
                for r, n in enumerate(n_new)]


def _unique_keys(monitors) -> list[str]:
    """Each monitor's name; repeated names get ``_2``, ``_3``, ... in order."""
    seen: Counter[str] = Counter()
    keys = []
    for m in monitors:
        name = str(getattr(m, "name", type(m).__name__))
        seen[name] += 1
        keys.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return keys
