"""decodekit strategies: table and JSON listing of the registry."""

from __future__ import annotations

import json

import decodekit


def test_table_lists_every_strategy_and_option(run):
    result = run("strategies", env={"COLUMNS": "400"})  # wide enough not to fold cells
    assert result.exit_code == 0, result.output
    for name, fields in decodekit.strategies.available().items():
        assert name in result.stdout
        for f in fields:
            assert f["name"] in result.stdout


def test_json_matches_available(run):
    result = run("strategies", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    available = decodekit.strategies.available()
    assert sorted(data) == sorted(available)
    temperature = next(f for f in data["sample"]["options"] if f["name"] == "temperature")
    assert temperature["type"] == "float" and temperature["default"] == 1.0 and temperature["help"]
    assert data["greedy"]["description"]


def test_help_on_every_command_has_an_example(run):
    for args in ([], ["strategies"], ["generate"], ["compare"]):
        result = run(*args, "--help")
        assert result.exit_code == 0, result.output
        assert "Example" in result.stdout and "decodekit " in result.stdout
