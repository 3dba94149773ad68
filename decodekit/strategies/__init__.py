"""Decoding strategies. Each module registers its strategy by name on import."""

from __future__ import annotations

from decodekit.registry import STRATEGIES, config_fields
from decodekit.strategies import greedy, sampling  # noqa: F401  (registration)
from decodekit.strategies import beam, diverse_beam  # noqa: F401  (registration)
from decodekit.strategies import entropy_aware, handover  # noqa: F401  (registration)
from decodekit.strategies import speculative  # noqa: F401  (registration)
from decodekit.strategies.base import Strategy

__all__ = ["Strategy", "available", "get"]


def get(name: str) -> type[Strategy]:
    """The strategy class registered under ``name`` (ValueError listing the names otherwise)."""
    return STRATEGIES.get(name)


def available() -> dict[str, list[dict]]:
    """Every registered strategy with its config fields (name, type, default, help).

    Example:
        >>> import decodekit
        >>> sorted(decodekit.strategies.available())[:2]
        ['greedy', 'sample']
    """
    return {name: config_fields(STRATEGIES.get(name).Config) for name in STRATEGIES.names()}
