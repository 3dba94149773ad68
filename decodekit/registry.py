"""Name -> strategy / monitor registries, filled by decorators and by entry points.

Third-party packages register strategies under the entry-point group ``decodekit.strategies``
(``name = "package.module:StrategyClass"``) and monitors under ``decodekit.monitors``.

Example:
    >>> from decodekit.registry import register_strategy
    >>> @register_strategy("my_greedy")            # doctest: +SKIP
    ... class MyGreedy(Greedy): ...
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from typing import Any

__all__ = ["Registry", "STRATEGIES", "MONITORS", "register_strategy", "register_monitor"]


class Registry:
    """A name -> class map with decorator registration and lazy entry-point discovery."""

    def __init__(self, kind: str, group: str):
        self.kind = kind
        self.group = group
        self._items: dict[str, type] = {}
        self._loaded_entry_points = False

    def register(self, name: str):
        def deco(cls: type) -> type:
            if name in self._items and self._items[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self._items[name]!r}")
            cls.name = name
            self._items[name] = cls
            return cls
        return deco

    def _discover(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for ep in importlib.metadata.entry_points(group=self.group):
            if ep.name not in self._items:
                self.register(ep.name)(ep.load())

    def get(self, name: str) -> type:
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        self._discover()
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            raise ValueError(f"unknown {self.kind} {name!r}; available: {known}")
        return self._items[name]

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._items


STRATEGIES = Registry("strategy", "decodekit.strategies")
MONITORS = Registry("monitor", "decodekit.monitors")
register_strategy = STRATEGIES.register
register_monitor = MONITORS.register


def config_fields(config_cls: type) -> list[dict[str, Any]]:
    """The fields of a frozen config dataclass: name, type (as written) and default."""
    out = []
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append({"name": f.name, "type": str(f.type), "default": default,
                    "help": f.metadata.get("help", "")})
    return out
