"""Frozen strategy configs: typed fields checked at construction, with clear errors.

Each strategy declares ``@dataclass(frozen=True) class Config(StrategyConfig)`` and adds its own
range checks in ``validate``. Field names follow transformers' ``GenerationConfig`` where one exists.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar

__all__ = ["StrategyConfig", "check"]


def check(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``."""
    if not ok:
        raise ValueError(message)


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (tuple, list):
        return isinstance(value, origin)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


@dataclasses.dataclass(frozen=True)
class StrategyConfig:
    """Base of every strategy config: type-checks each field, then calls ``validate``."""

    strategy_name: ClassVar[str] = "strategy"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _matches(value, hints[f.name]):
                raise ValueError(
                    f"{self.strategy_name}: {f.name} must be {_describe(hints[f.name])}, got {value!r}"
                )
            if isinstance(value, int) and hints[f.name] is float:
                object.__setattr__(self, f.name, float(value))
        self.validate()

    def validate(self) -> None:
        """Range checks of a concrete config; raise ValueError with the field's name."""

    @classmethod
    def from_kwargs(cls, strategy: str, kwargs: dict[str, Any]):
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise ValueError(
                f"strategy {strategy!r} has no option {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(names) or 'none'}"
            )
        return cls(**kwargs)


def _describe(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if args:
        return " or ".join(_describe(a) for a in args)
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))
