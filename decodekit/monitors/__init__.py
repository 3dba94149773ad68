"""Monitors: in-loop observers of every decoding step that may flag, stop or roll back rows."""

from decodekit.monitors.base import ACTIONS, FLAG, OK, ROLLBACK, STOP, Monitor, Verdict

__all__ = ["ACTIONS", "FLAG", "OK", "ROLLBACK", "STOP", "Monitor", "Verdict"]
