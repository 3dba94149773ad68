"""The model options every command shares (``--model``, ``--device``, ``--dtype``) and loading.

Everything goes through :func:`load_lm`, which calls ``decodekit.load`` through this module's
``load`` name: tests replace that name with a loader of a tiny in-memory model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from decodekit import load  # tests monkeypatch decodekit.cli.model.load
from decodekit.lm import LM

__all__ = ["model_options", "load_lm", "DTYPES"]

DTYPES = ("float32", "bfloat16", "float16")


def model_options(f: Callable) -> Callable:
    """Add ``--model``, ``--device`` and ``--dtype`` to a command."""
    f = click.option("--dtype", type=click.Choice(DTYPES), default=None,
                     help="Weights dtype (default: float32).")(f)
    f = click.option("--device", default=None, metavar="DEVICE",
                     help='Torch device, e.g. "cpu", "cuda", "cuda:1" (default: cpu).')(f)
    f = click.option("--model", "model", default=None, metavar="PATH",
                     help="A local model folder or .gguf file (default: the embedded "
                          "SmolLM2-135M-Instruct). Nothing is ever downloaded.")(f)
    return f


def load_lm(model: str | None, device: str | None, dtype: str | None, quiet: bool = False) -> LM:
    """Load the model, telling stderr what is loading (loading the default takes a few seconds)."""
    if not quiet:
        click.echo(f"loading {model or 'the default model (SmolLM2-135M-Instruct)'} ...", err=True)
    lm = load(model, device=device, dtype=dtype)
    sys.stderr.flush()
    return lm
