"""Strategy options on the command line: typed click options, ``key=value`` pairs and specs.

Three spellings reach the same config fields (see ``decodekit strategies``):

* ``--top-p 0.9``: one click option per config field of any registered strategy (their union);
* ``-o top_p=0.9``: a generic fallback, e.g. for fields whose names clash with a common option;
* ``sample:temperature=0.7,top_p=0.9``: a spec, as ``decodekit compare -s`` takes.

Values are converted with the chosen strategy's field types (bool, int, float, str, Literal,
Optional, tuples as JSON lists); the config itself checks ranges when the strategy is built.

Example:
    >>> parse_spec("sample:temperature=0.7,top_p=0.9")          # doctest: +SKIP
    Spec(name='sample', options={'temperature': 0.7, 'top_p': 0.9}, seed=None)
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import click

from decodekit import strategies
from decodekit.api import make_strategy
from decodekit.strategies.base import Strategy

__all__ = ["Spec", "StrategyOptions", "field_hints", "coerce", "parse_assignments", "split_spec", "parse_spec",
           "check_options", "build_strategy", "config_dict"]

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}
_NONE = {"none", "null"}


@dataclass(frozen=True)
class Spec:
    """A strategy name with the options set for it (and, in compare, its own seed)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None

    @property
    def label(self) -> str:
        """``name:key=value,...`` (the form parse_spec reads)."""
        parts = [f"{k}={_show(v)}" for k, v in self.options.items()]
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        return self.name + (":" + ",".join(parts) if parts else "")


def field_hints(name: str) -> dict[str, Any]:
    """``{field: type hint}`` of a registered strategy's config (ValueError for unknown names)."""
    config = strategies.get(name).Config
    hints = typing.get_type_hints(config)
    return {f.name: hints[f.name] for f in dataclasses.fields(config)}


def coerce(text: str, hint: Any, key: str = "value") -> Any:
    """Convert command-line ``text`` to a value of type ``hint`` (ValueError naming ``key``)."""
    if not isinstance(text, str):
        return text
    s = text.strip()
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return _guess(s)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and s.lower() in _NONE:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(s, arg, key)
            except ValueError:
                continue
        raise ValueError(f"{key}: cannot read {text!r} as {_describe(hint)}")
    if origin is typing.Literal:
        for choice in args:
            if s == str(choice) or (isinstance(choice, bool) and s.lower() in (_TRUE if choice else _FALSE)):
                return choice
        raise ValueError(f"{key} must be one of {', '.join(map(str, args))}, got {text!r}")
    if hint is bool:
        if s.lower() in _TRUE | _FALSE:
            return s.lower() in _TRUE
        raise ValueError(f"{key} must be true or false, got {text!r}")
    if hint in (int, float):
        try:
            return hint(s)
        except ValueError:
            kind = "an integer" if hint is int else "a number"
            raise ValueError(f"{key} must be {kind}, got {text!r}") from None
    if hint is str:
        return text
    if origin in (tuple, list) or hint in (tuple, list):
        value = _guess(s if s.startswith("[") else f"[{s}]")
        if not isinstance(value, list):
            raise ValueError(f"{key} must be a list such as [1,2], got {text!r}")
        return (origin or hint)(value)
    return _guess(s)


def parse_assignments(pairs: typing.Iterable[str], what: str = "-o") -> dict[str, str]:
    """``["top_p=0.9", "top-k=5"]`` -> ``{"top_p": "0.9", "top_k": "5"}`` (values stay strings)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise click.UsageError(f"{what} takes key=value, got {pair!r}")
        if key in out:
            raise click.UsageError(f"option {key!r} given twice")
        out[key] = value
    return out


def parse_spec(text: str) -> Spec:
    """``"beam:num_beams=4"`` -> ``Spec("beam", {"num_beams": 4})``; ``seed=N`` sets the spec's seed."""
    name, raw = split_spec(text, "strategy", "sample:temperature=0.7")
    hints = field_hints(name)  # unknown strategy -> ValueError listing the names
    seed = raw.pop("seed", None)
    options = convert(name, raw, hints)
    return Spec(name, options, None if seed is None else _seed(seed))


def split_spec(text: str, kind: str = "strategy", example: str = "sample:temperature=0.7"
               ) -> tuple[str, dict[str, str]]:
    """``"NAME:k=v,k2=[1,2]"`` -> ``("NAME", {"k": "v", "k2": "[1,2]"})`` (values stay strings)."""
    name, _, rest = text.strip().partition(":")
    name = name.strip()
    if not name:
        raise click.UsageError(f"empty {kind} in spec {text!r}; write e.g. {example}")
    # split on commas that start a new key=value (so list values like [1,2] keep their commas)
    pairs = [p for p in re.split(r",(?=\s*[A-Za-z_][\w-]*\s*=)", rest) if p.strip()] if rest else []
    return name, parse_assignments(pairs, what=f"spec {text!r}")


def convert(name: str, raw: dict[str, Any], hints: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check ``raw`` keys against strategy ``name`` and convert string values to the field types."""
    hints = field_hints(name) if hints is None else hints
    check_options(name, raw, hints)
    return {k: coerce(v, hints[k], k) for k, v in raw.items()}


def check_options(name: str, options: dict[str, Any], hints: dict[str, Any] | None = None,
                  flag: bool = False) -> None:
    """UsageError when strategy ``name`` has no field for one of ``options``."""
    hints = field_hints(name) if hints is None else hints
    unknown = [k for k in options if k not in hints]
    if unknown:
        show = (lambda k: "--" + k.replace("_", "-")) if flag else (lambda k: k)
        has = ", ".join(show(k) for k in hints) or "none"
        raise click.UsageError(
            f"strategy {name!r} has no option {', '.join(show(k) for k in unknown)} (its options: {has})"
        )


def config_dict(config: Any) -> dict[str, Any]:
    """A config's fields as a dict (shallow: unlike ``dataclasses.asdict``, never copies a model)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def build_strategy(spec: Spec) -> Strategy:
    """The configured strategy object; invalid values raise the config's ValueError."""
    return make_strategy(spec.name, dict(spec.options))


class StrategyOptions:
    """Click options for the union of every registered strategy's config fields.

    Each field ``top_p`` becomes ``--top-p`` (stored as parameter ``opt_top_p``), with default None
    so that only the options the user set are forwarded. A field whose type differs between
    strategies takes a string, converted later with the chosen strategy's type.
    """

    prefix = "opt_"

    def __init__(self, reserved: typing.Collection[str] = ()):
        self.fields: dict[str, dict[str, Any]] = {}
        for name, fields in strategies.available().items():
            hints = field_hints(name)
            for f in fields:
                entry = self.fields.setdefault(f["name"], {"hints": {}, "helps": {}, "defaults": {}})
                entry["hints"][name] = hints[f["name"]]
                entry["helps"][name] = f["help"]
                entry["defaults"][name] = f["default"]
        self.reserved = set(reserved)

    def options(self) -> list[click.Option]:
        out = []
        for key, entry in sorted(self.fields.items()):
            flag = "--" + key.replace("_", "-")
            if flag[2:] in self.reserved or key in self.reserved:
                continue  # reachable through -o key=value
            out.append(self._option(key, flag, entry))
        return out

    def _option(self, key: str, flag: str, entry: dict) -> click.Option:
        hints = list(entry["hints"].values())
        same = all(repr(h) == repr(hints[0]) for h in hints)
        hint = hints[0] if same else str
        owners = ", ".join(entry["defaults"])
        defaults = {_show(d) for d in entry["defaults"].values()}
        helps = list(entry["helps"].values())  # the most common wording (generic, not one strategy's)
        text = max(helps, key=lambda h: (bool(h), helps.count(h), -len(h)))
        help_ = f"{text} [{owners}; default {' / '.join(sorted(defaults))}]".strip()
        if hint is bool:
            return click.Option([f"{flag}/--no-{flag[2:]}", self.prefix + key], default=None, help=help_)
        kind = FieldType(hint, key, None if same else "VALUE")
        return click.Option([flag, self.prefix + key], type=kind, default=None, help=help_)

    def collect(self, params: dict[str, Any]) -> dict[str, Any]:
        """The strategy options the user set, from a command's parameters ``{opt_top_p: 0.9, ...}``."""
        return {k[len(self.prefix):]: v for k, v in params.items()
                if k.startswith(self.prefix) and v is not None}


class FieldType(click.ParamType):
    """A click type converting with :func:`coerce` (bad values give click's one-line error)."""

    def __init__(self, hint: Any, key: str, metavar: str | None = None):
        self.hint, self.key = hint, key
        self.name = metavar or _metavar(hint)

    def get_metavar(self, param, ctx=None):  # as written: click would upper-case a literal's choices
        return self.name

    def convert(self, value, param, ctx):
        try:
            return coerce(value, self.hint, self.key)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _metavar(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "[" + "|".join(map(str, args)) + "]"
    if origin in (typing.Union, types.UnionType):
        return "|".join("none" if a is type(None) else _metavar(a) for a in args)
    names = {int: "INTEGER", float: "FLOAT", str: "TEXT", bool: "BOOLEAN", dict: "JSON"}
    return names.get(hint, "LIST" if origin in (tuple, list) else "VALUE")


def _describe(hint: Any) -> str:
    args = typing.get_args(hint)
    if args:
        return " or ".join(_describe(a) for a in args)
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _guess(s: str) -> Any:
    try:
        return json.loads(s)
    except ValueError:
        return s


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise click.UsageError(f"seed must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise click.UsageError(f"seed must be an integer >= 0, got {text!r}")
    return value


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), separators=(",", ":"))
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)
