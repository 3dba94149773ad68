"""Strategy options on the command line: conversion, key=value pairs, compare specs."""

from __future__ import annotations

from typing import Literal, Optional

import click
import pytest

from decodekit.cli.specs import Spec, coerce, parse_assignments, parse_spec


def test_coerce_types():
    assert coerce("0.5", float) == 0.5
    assert coerce("3", int) == 3
    assert coerce("yes", bool) is True and coerce("off", bool) is False
    assert coerce("b", Literal["a", "b"]) == "b"
    assert coerce("none", Optional[int]) is None and coerce("4", Optional[int]) == 4
    assert coerce("[1,2]", tuple[int, ...]) == (1, 2)
    assert coerce("text", str) == "text"
    assert coerce(0.7, float) == 0.7  # already converted by click


@pytest.mark.parametrize("text, hint, message", [
    ("abc", float, "must be a number"), ("1.5", int, "must be an integer"),
    ("maybe", bool, "true or false"), ("c", Literal["a", "b"], "one of a, b"),
])
def test_coerce_errors_name_the_field(text, hint, message):
    with pytest.raises(ValueError, match=message) as info:
        coerce(text, hint, "top_p")
    assert "top_p" in str(info.value)


def test_parse_assignments():
    assert parse_assignments(["top_p=0.9", "top-k=5"]) == {"top_p": "0.9", "top_k": "5"}
    with pytest.raises(click.UsageError, match="key=value"):
        parse_assignments(["top_p"])
    with pytest.raises(click.UsageError, match="twice"):
        parse_assignments(["top_p=0.9", "top_p=0.8"])


def test_parse_spec():
    assert parse_spec("greedy") == Spec("greedy", {})
    spec = parse_spec("sample:temperature=0.7,top_p=0.9,seed=3")
    assert spec == Spec("sample", {"temperature": 0.7, "top_p": 0.9}, seed=3)
    assert spec.label == "sample:temperature=0.7,top_p=0.9,seed=3"
    assert parse_spec(spec.label) == spec
    assert parse_spec("sample:top_k=5").options == {"top_k": 5}


def test_parse_spec_errors():
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        parse_spec("nope:x=1")
    with pytest.raises(click.UsageError, match="has no option top_p"):
        parse_spec("greedy:top_p=0.9")
    with pytest.raises(ValueError, match="temperature must be a number"):
        parse_spec("sample:temperature=hot")


def test_click_options_from_config_fields(monkeypatch):
    """Bools become --x/--no-x flags, literals choices; unset options are not forwarded."""
    import dataclasses
    from types import SimpleNamespace

    from click.testing import CliRunner

    from decodekit.cli import specs
    from decodekit.config import StrategyConfig
    from decodekit.registry import config_fields

    @dataclasses.dataclass(frozen=True)
    class AConfig(StrategyConfig):
        fast: bool = False
        mode: Literal["x", "y"] = "x"
        limit: Optional[int] = None
        width: int = dataclasses.field(default=1, metadata={"help": "how wide"})

    @dataclasses.dataclass(frozen=True)
    class BConfig(StrategyConfig):
        width: float = 2.0  # same name, another type: read as text, converted for the chosen one

    classes = {"a": SimpleNamespace(Config=AConfig), "b": SimpleNamespace(Config=BConfig)}
    fake = SimpleNamespace(get=classes.__getitem__,
                           available=lambda: {n: config_fields(c.Config) for n, c in classes.items()})
    monkeypatch.setattr(specs, "strategies", fake)
    options = specs.StrategyOptions()
    seen = {}

    @click.command(params=options.options())
    def cmd(**params):
        seen.update(options.collect(params))

    runner = CliRunner()
    assert runner.invoke(cmd, []).exit_code == 0 and seen == {}
    result = runner.invoke(cmd, ["--fast", "--mode", "y", "--limit", "none", "--width", "3"])
    assert result.exit_code == 0, result.output
    assert seen == {"fast": True, "mode": "y", "width": "3"}  # --limit none -> None: not forwarded
    assert specs.convert("a", {"width": "3"}) == {"width": 3}
    assert specs.convert("b", {"width": "3"}) == {"width": 3.0}
    seen.clear()
    assert runner.invoke(cmd, ["--no-fast", "--limit", "5"]).exit_code == 0
    assert seen == {"fast": False, "limit": 5}
    bad = runner.invoke(cmd, ["--mode", "z"])
    assert bad.exit_code == 2 and "mode must be one of x, y" in bad.output
    help_text = runner.invoke(cmd, ["--help"]).output
    assert "--fast / --no-fast" in help_text and "[x|y]" in help_text and "how wide" in help_text
