"""Monitors on the command line: ``NAME[:key=value,...]`` specs, as ``decodekit compare --monitor`` takes.

A spec names a registered monitor (``decodekit.MONITORS``: ``entropy_band``, ``loop``,
``nontermination``, ``threshold``, ``record``, and third-party ones) and sets fields of its config,
converted with the field types as strategy specs are (see :mod:`decodekit.cli.specs`). The monitor
is built, and so validated, before any model loads.

Example:
    >>> spec = parse_monitor("loop:min_span=8,action=flag")
    >>> spec.name, spec.options
    ('loop', {'min_span': 8, 'action': 'flag'})
    >>> build_monitor(spec).min_span
    8
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

import click

from decodekit.cli.specs import coerce, split_spec
from decodekit.registry import MONITORS

__all__ = ["MonitorSpec", "monitor_hints", "parse_monitor", "build_monitor"]


@dataclass(frozen=True)
class MonitorSpec:
    """A monitor name with the options set for it."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        parts = [f"{k}={v}" for k, v in self.options.items()]
        return self.name + (":" + ",".join(parts) if parts else "")


def monitor_hints(name: str) -> dict[str, Any]:
    """``{field: type hint}`` of a registered monitor's settable fields (ValueError for unknown names)."""
    cls = MONITORS.get(name)  # unknown -> ValueError listing the registered monitors
    if not dataclasses.is_dataclass(cls):
        return {}
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}


def parse_monitor(text: str) -> MonitorSpec:
    """``"entropy_band:a=1.0,below=flag"`` -> ``MonitorSpec("entropy_band", {"a": 1.0, "below": "flag"})``."""
    name, raw = split_spec(text, "monitor", "loop:min_span=8")
    hints = monitor_hints(name)
    unknown = [k for k in raw if k not in hints]
    if unknown:
        raise click.UsageError(f"monitor {name!r} has no option {', '.join(unknown)} "
                               f"(its options: {', '.join(hints) or 'none'})")
    return MonitorSpec(name, {k: coerce(v, hints[k], k) for k, v in raw.items()})


def build_monitor(spec: MonitorSpec, defaults: dict[str, Any] | None = None) -> Any:
    """The monitor object; ``defaults`` fill the fields the spec leaves unset (those the monitor has).
    Invalid values raise the monitor's own ValueError."""
    hints = monitor_hints(spec.name)
    options = {k: v for k, v in (defaults or {}).items() if k in hints and k not in spec.options}
    return MONITORS.get(spec.name)(**options, **spec.options)
