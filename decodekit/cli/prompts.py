"""Reading prompts for the CLI: an argument, stdin, a text file (one per line) or JSONL.

A prompt file is JSONL when its name ends in ``.jsonl`` or its first non-blank line starts with
``{``: each line is an object with a ``"prompt"`` field (a string, or a chat: a list of
``{"role", "content"}`` messages); other fields are kept as metadata. Otherwise every non-blank line
is one prompt. ``-`` reads the file from stdin.

The built-in set (``decodekit/data/prompts.jsonl``) mixes open-ended prose, lists, short factual
questions, summarising / rewriting a given passage, and code requests.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

__all__ = ["Prompt", "read_prompts", "parse_prompts", "default_prompts", "prompt_text"]

DEFAULT_SET = "prompts.jsonl"


@dataclass(frozen=True)
class Prompt:
    """One prompt: a string or a chat, with optional metadata from its JSONL line."""

    prompt: str | list[dict]
    meta: dict[str, Any] = field(default_factory=dict)


def read_prompts(path: str) -> list[Prompt]:
    """The prompts of a file (``-`` = stdin); ValueError when it has none or a line is malformed."""
    if path == "-":
        text, name = sys.stdin.read(), "<stdin>"
    else:
        with open(path, encoding="utf-8") as fh:  # FileNotFoundError -> "error: ... No such file"
            text, name = fh.read(), path
    return parse_prompts(text, name, jsonl=path.endswith(".jsonl"))


def parse_prompts(text: str, name: str = "<text>", jsonl: bool = False) -> list[Prompt]:
    """Prompts from a file's text (see the module docstring for the two formats)."""
    lines = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    if not lines:
        raise ValueError(f"no prompts in {name}: it is empty")
    if jsonl or lines[0][1].lstrip().startswith("{"):
        return [_json_line(line, no, name) for no, line in lines]
    return [Prompt(line.strip()) for _, line in lines]


def default_prompts() -> list[Prompt]:
    """The built-in prompt set (``decodekit/data/prompts.jsonl``)."""
    text = resources.files("decodekit").joinpath("data", DEFAULT_SET).read_text(encoding="utf-8")
    return parse_prompts(text, f"decodekit/data/{DEFAULT_SET}", jsonl=True)


def prompt_text(prompt: str | list[dict], width: int = 60) -> str:
    """A one-line preview of a prompt (the last message of a chat)."""
    text = prompt if isinstance(prompt, str) else str(prompt[-1].get("content", ""))
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _json_line(line: str, no: int, name: str) -> Prompt:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name}, line {no}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict) or "prompt" not in obj:
        raise ValueError(f'{name}, line {no}: expected an object with a "prompt" field')
    prompt = obj.pop("prompt")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{name}, line {no}: the prompt is empty")
    elif not (isinstance(prompt, list) and prompt
              and all(isinstance(m, dict) and "content" in m for m in prompt)):
        raise ValueError(f'{name}, line {no}: "prompt" must be a string or a list of '
                         '{"role", "content"} messages')
    return Prompt(prompt, obj)
