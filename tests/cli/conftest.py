"""CLI test fixtures: a CliRunner, and the model loader replaced by the tiny in-memory model.

``decodekit.cli.model.load`` is the only way the CLI loads a model; tests replace it so that no
command loads real weights (``loads`` records the arguments each load was called with).
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import decodekit.cli.model
from decodekit.cli.main import cli


@pytest.fixture
def loads(monkeypatch, tiny_lm) -> list[dict]:
    calls: list[dict] = []

    def fake_load(model=None, *, device=None, dtype=None):
        calls.append({"model": model, "device": device, "dtype": dtype})
        return tiny_lm

    monkeypatch.setattr(decodekit.cli.model, "load", fake_load)
    return calls


@pytest.fixture
def run(loads):
    """``run("generate", "hi", ...)`` -> click Result (stdout in .stdout, stderr in .stderr)."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, env: dict | None = None):
        return runner.invoke(cli, list(args), input=input, env=env, catch_exceptions=False)

    return invoke


def assert_one_line_error(result, *needles: str, code: int | None = None) -> None:
    """A non-zero exit with exactly one ``error: ...`` line on stderr and no traceback."""
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
