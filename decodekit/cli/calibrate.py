"""``decodekit calibrate-entropy``: write a stable entropy band (JSON) for a model.

Teacher-forces reference prose through the model and stores, per continuation position, the mean and
std of the smoothed entropy (Arora et al. 2023, arXiv:2302.06784), their degree-2 fits, the flat
constants SEM / SEV, and the model's signature and vocabulary size. ``eas`` / ``ead`` and the
``entropy_band`` monitor read it with ``band=PATH``.

The band shipped for the default model (``decodekit/data/entropy_band_smollm2-135m-instruct.json``)
was made with::

    decodekit calibrate-entropy --output decodekit/data/entropy_band_smollm2-135m-instruct.json
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from decodekit.cli.model import load_lm, model_options

__all__ = ["calibrate_entropy"]


@click.command("calibrate-entropy")
@click.option("-o", "--output", required=True, metavar="FILE", help="Where to write the band (JSON).")
@click.option("--text", "texts", multiple=True, metavar="FILE",
              help="UTF-8 reference text file(s) of human prose (repeatable; default: the prose of "
                   "Python's pydoc_data.topics).")
@click.option("--prefix", type=click.IntRange(min=1), default=32, show_default=True,
              help="Context tokens before each measured continuation.")
@click.option("--tokens", type=click.IntRange(min=3), default=128, show_default=True,
              help="Continuation tokens measured per passage (the band's positions).")
@click.option("--max-texts", type=click.IntRange(min=2), default=200, show_default=True,
              help="Most passages to use.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--width", type=click.IntRange(min=1), default=5, show_default=True,
              help="Smoothing width U (trailing mean including the current token).")
@click.option("--model-name", default=None, metavar="NAME", help="Name stored in the band (default: the model's).")
@model_options
def calibrate_entropy(output, texts, prefix, tokens, max_texts, batch_size, width, model_name, model,
                      device, dtype):
    """Calibrate the stable entropy band of a model on reference prose and write it as JSON.

    \b
    Examples:
      decodekit calibrate-entropy -o band.json
      decodekit calibrate-entropy --model ./my-model --text wiki.txt --text news.txt -o band.json
    """
    from decodekit.models import DEFAULT_MODEL_NAME
    from decodekit.monitors.calibration import calibrate_band, pydoc_prose, python_version

    if texts:
        bodies = [_read(p) for p in texts]
        source = "text files: " + ", ".join(Path(p).name for p in texts)
    else:
        bodies = pydoc_prose()
        source = f"prose paragraphs of pydoc_data.topics (Python {python_version()})"
    lm = load_lm(model, device, dtype)
    name = model_name or (DEFAULT_MODEL_NAME if model is None else lm.name)
    command = _command_line(click.get_current_context())
    band = calibrate_band(lm, bodies, prefix=prefix, tokens=tokens, max_texts=max_texts,
                          batch_size=batch_size, width=width, source=source, command=command)
    band = type(band)(**{**band.__dict__, "model": name,
                         "source": f"{source}; {band.count[0]} passages, prefix {prefix} tokens"})
    band.save(output)
    click.echo(f"wrote {output}: {len(band.mean)} positions from {band.count[0]} passages; "
               f"SEM {band.sem:.3f} nats, SEV {band.sev:.3f}", err=True)


def _command_line(ctx: click.Context) -> str:
    """The command as typed, rebuilt from the options that differ from their defaults."""
    parts = ["decodekit", "calibrate-entropy"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value in (None, ()) or value == param.default:
            continue
        for v in value if isinstance(value, tuple) else (value,):
            parts += [param.opts[-1], shlex.quote(str(v))]
    return " ".join(parts)


def _read(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"reference text {path!r} does not exist")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"reference text {path!r} is not UTF-8 text") from None
