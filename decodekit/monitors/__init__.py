"""Monitors: in-loop observers of every decoding step that may flag, stop, roll back or switch rows.

* :mod:`~decodekit.monitors.base`: the protocol, verdicts, :class:`SignalMonitor`;
* :mod:`~decodekit.monitors.signals` / :mod:`~decodekit.monitors.sequence`: signals with declared
  dependencies, computed once per step on the device;
* :mod:`~decodekit.monitors.runner`: what the loop runs (signals once, then every monitor);
* built-in monitors: ``threshold``, ``record``, ``entropy_band``, ``loop``, ``nontermination``
  (also by name: ``decodekit.MONITORS.get("loop")(action="stop")``);
* :mod:`~decodekit.monitors.band` / :mod:`~decodekit.monitors.calibration`: the stable entropy band
  (``decodekit calibrate-entropy``); :mod:`~decodekit.monitors.plot`: entropy traces as PNG.

Example:
    >>> import decodekit
    >>> from decodekit.monitors import EntropyBand, LoopDetector
    >>> gen = decodekit.generate(lm, "Once upon a time", max_new_tokens=64,           # doctest: +SKIP
    ...                          monitors=[EntropyBand(lower=0.5, upper=5.0), LoopDetector()])
    >>> gen.flags, gen.traces[0].signals["smoothed_entropy"][:5]                      # doctest: +SKIP
"""

from decodekit.monitors.base import (ACTIONS, FLAG, OK, ROLLBACK, STOP, SWITCH, Monitor, SignalMonitor,
                                     Verdict)
from decodekit.monitors.band import Band, violation_rates
from decodekit.monitors.entropy_band import EntropyBand
from decodekit.monitors.loops import LoopDetector
from decodekit.monitors.nontermination import NonTermination
from decodekit.monitors.runner import MonitorRunner
from decodekit.monitors.signals import Signal, StepSignals, known_signals, register_signal
from decodekit.monitors.threshold import Record, Threshold

__all__ = ["ACTIONS", "FLAG", "OK", "ROLLBACK", "STOP", "SWITCH", "Band", "EntropyBand", "LoopDetector",
           "Monitor", "MonitorRunner", "NonTermination", "Record", "Signal", "SignalMonitor", "StepSignals",
           "Threshold", "Verdict", "known_signals", "register_signal", "violation_rates"]
