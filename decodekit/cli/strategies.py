"""``decodekit strategies``: the registered strategies and their options."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from decodekit import strategies as registry

__all__ = ["strategies", "describe"]


def describe() -> dict[str, dict]:
    """``{name: {"description", "options": [{name, type, default, help}, ...]}}`` for every strategy."""
    out = {}
    for name, fields in registry.available().items():
        doc = (registry.get(name).__doc__ or "").strip()
        out[name] = {"description": doc.splitlines()[0] if doc else "", "options": fields}
    return out


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def strategies(as_json: bool) -> None:
    """List the registered decoding strategies and their options.

    An option `top_p` is passed as `--top-p 0.9` to `decodekit generate`, as `-o top_p=0.9`, or in a
    spec as `sample:top_p=0.9` to `decodekit compare`. Strategies from other packages appear here
    once installed (entry-point group `decodekit.strategies`).

    \b
    Examples:
      decodekit strategies
      decodekit strategies --json
    """
    info = describe()
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    table = Table(title="decodekit strategies", show_lines=False)
    for header, style in (("strategy", "bold cyan"), ("option", "green"), ("type", ""),
                          ("default", ""), ("help", "dim")):
        table.add_column(header, style=style or None, overflow="fold")
    for name, entry in info.items():
        table.add_section()
        fields = entry["options"]
        if not fields:
            table.add_row(name, "(no options)", "", "", entry["description"])
        for i, f in enumerate(fields):
            table.add_row(name if i == 0 else "", f["name"], f["type"], _show(f["default"]), f["help"])
    Console().print(table)


def _show(value) -> str:
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)
