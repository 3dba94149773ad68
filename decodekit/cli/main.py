"""The ``decodekit`` command group and its entry point.

Every expected error (bad options, unknown strategy or option, invalid config values, missing files
or models) ends as one line ``error: ...`` on stderr with a non-zero exit status: 2 for command-line
usage errors, 1 for the rest, 130 when interrupted. ``decodekit --debug ...`` (or
``DECODEKIT_DEBUG=1``) shows the full traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from decodekit.models import ModelNotFoundError

__all__ = ["cli", "main"]

EXPECTED = (ValueError, TypeError, ModelNotFoundError, FileNotFoundError, OSError)


class DecodekitGroup(click.Group):
    """A click group whose ``main`` turns exceptions into one-line errors (also under CliRunner)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv or os.environ.get("DECODEKIT_DEBUG", "") not in ("", "0")
        try:
            code = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:  # pragma: no cover - click returns it instead
            code = exc.exit_code
        except click.ClickException as exc:
            if debug:
                raise
            _error(_click_message(exc), exc.exit_code)
        except click.exceptions.Abort:
            _error("aborted", 1)
        except KeyboardInterrupt:
            _error("interrupted", 130)
        except EXPECTED as exc:
            if debug:
                raise
            _error(str(exc) or type(exc).__name__, 1)
        except Exception as exc:  # a bug: still one line, with the way to see more
            if debug:
                raise
            _error(f"{type(exc).__name__}: {exc} (internal error; run `decodekit --debug ...` "
                   "for the traceback)", 1)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _click_message(exc: click.ClickException) -> str:
    msg = exc.format_message()
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        msg += f" (see: {ctx.command_path} --help)"
    return msg


def _error(message: str, code: int) -> None:
    line = " ".join(str(message).split())
    click.echo(f"error: {line}", err=True)
    sys.exit(code)


@click.group(cls=DecodekitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="decodekit", prog_name="decodekit")
def cli(debug: bool) -> None:
    """decodekit: decoding strategies for Hugging Face causal LMs.

    Generate text with any registered strategy, or compare strategies side by side on a prompt set.
    The model defaults to the embedded SmolLM2-135M-Instruct; --model takes a local folder or a
    .gguf file.

    \b
    Examples:
      decodekit strategies
      decodekit generate "Write a haiku about rain." -s sample --temperature 0.7 --top-p 0.9
      decodekit compare -s greedy -s sample:temperature=0.7,top_p=0.9 --max-new-tokens 32
    """


# (module, click command) of every subcommand; a module that is not there is skipped
COMMANDS = [
    ("decodekit.cli.strategies", "strategies"),
    ("decodekit.cli.generate", "generate"),
    ("decodekit.cli.compare", "compare"),
    ("decodekit.cli.calibrate", "calibrate_entropy"),
    ("decodekit.cli.train_heads", "train_heads"),
]


def _register() -> None:
    for module, name in COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        cli.add_command(getattr(mod, name))


_register()


def main() -> None:
    """Console-script entry point (``decodekit``)."""
    cli.main(prog_name="decodekit")


if __name__ == "__main__":  # pragma: no cover
    main()
