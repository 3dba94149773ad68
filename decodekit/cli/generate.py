"""``decodekit generate``: one strategy over one or several prompts, printed as text or JSON."""

from __future__ import annotations

import json
import sys

import click

import decodekit
from decodekit.cli.model import load_lm, model_options
from decodekit.cli.prompts import Prompt, prompt_text, read_prompts
from decodekit.cli.specs import (Spec, StrategyOptions, build_strategy, check_options, coerce,
                                 config_dict, field_hints, parse_assignments)
from decodekit.state import Generation

__all__ = ["generate"]

_COMMON = ("file", "strategy", "option", "max-new-tokens", "seed", "chat", "stop", "stream", "json",
           "quiet", "model", "device", "dtype", "help", "debug")
OPTIONS = StrategyOptions(reserved=_COMMON)


class _Command(click.Command):
    """Lists the strategy options in a section of their own in ``--help``."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        common, strategy = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record is not None:
                (strategy if param.name.startswith(OPTIONS.prefix) else common).append(record)
        with formatter.section("Options"):
            formatter.write_dl(common)
        if strategy:
            with formatter.section("Strategy options (only for strategies that have them; "
                                   "see `decodekit strategies`)"):
                formatter.write_dl(strategy)


@click.command(cls=_Command, params=OPTIONS.options())
@click.argument("prompt", required=False)
@click.option("-f", "--file", "file", metavar="FILE",
              help='Prompts from a file, "-" for stdin: one per line, or JSONL with a "prompt" field.')
@click.option("-s", "--strategy", default="greedy", show_default=True, metavar="NAME",
              help="Decoding strategy (see `decodekit strategies`).")
@click.option("-o", "--option", "option", multiple=True, metavar="KEY=VALUE",
              help="A strategy option by its config name, e.g. -o top_p=0.9 (repeatable).")
@click.option("-n", "--max-new-tokens", type=click.IntRange(min=1), metavar="N",
              default=128, show_default=True,
              help="Most new tokens per prompt.")
@click.option("--seed", type=click.IntRange(min=0), metavar="N",
              default=None,
              help="Seed of the strategy's random draws (same seed, same output).")
@click.option("--chat/--no-chat", default=None,
              help="Wrap prompts in the model's chat template (default: when it has one).")
@click.option("--stop", multiple=True, metavar="TEXT",
              help=r"Stop a prompt once this text appears (repeatable; \n and \t mean newline and tab).")
@click.option("--stream", is_flag=True, help="Print the text as it is produced.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the Generation as JSON (texts, token ids, log-probs, stats).")
@click.option("-q", "--quiet", is_flag=True, help="No progress or statistics on stderr.")
@model_options
def generate(prompt, file, strategy, option, max_new_tokens, seed, chat, stop, stream, as_json, quiet,
             model, device, dtype, **strategy_params) -> None:
    """Generate text from PROMPT with one decoding strategy.

    PROMPT is the text to continue ("-" reads it from stdin); --file reads several prompts. The
    strategy's options are given as options (--temperature 0.7) or as -o key=value; an option the
    chosen strategy does not have is an error. Text goes to stdout, statistics to stderr.

    \b
    Examples:
      decodekit generate "The capital of France is"
      decodekit generate "Write a haiku about rain." -s sample --temperature 0.7 --top-p 0.9 --seed 0
      decodekit generate -f prompts.jsonl -s greedy --repetition-penalty 1.2 --json > out.json
      echo "Tell me a joke." | decodekit generate - --stream --stop "\\n\\n"
    """
    if stream and as_json:
        raise click.UsageError("--stream and --json cannot be combined")
    prompts = _prompts(prompt, file)
    spec = _spec(strategy, OPTIONS.collect(strategy_params), option)
    strat = build_strategy(spec)  # invalid values fail here, before the model loads
    lm = load_lm(model, device, dtype, quiet=quiet)
    kwargs = dict(max_new_tokens=max_new_tokens, seed=seed, chat=chat,
                  stop_strings=tuple(map(_unescape, stop)))
    if stream:
        gens = [_stream_one(lm, p, i, len(prompts), strat, kwargs) for i, p in enumerate(prompts)]
    else:
        gens = [decodekit.generate(lm, [p.prompt for p in prompts], strat, **kwargs)]
    if as_json:
        out = {"prompts": [p.prompt for p in prompts], "config": config_dict(strat.config),
               **gens[0].to_dict()}
        click.echo(json.dumps(out, indent=2, ensure_ascii=False, default=str))
    elif not stream:
        _print_texts(gens[0], prompts)
    if not quiet:
        for gen in gens:
            _print_stats(gen)


def _prompts(prompt: str | None, file: str | None) -> list[Prompt]:
    if prompt is not None and file is not None:
        raise click.UsageError("give either PROMPT or --file, not both")
    if file is not None:
        return read_prompts(file)
    if prompt is None:
        raise click.UsageError('no prompt: give PROMPT, "-" to read it from stdin, or --file FILE')
    if prompt == "-":
        prompt = sys.stdin.read().rstrip("\n")
    if not prompt.strip():
        raise click.UsageError("the prompt is empty")
    return [Prompt(prompt)]


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n").replace("\\t", "\t")


def _spec(name: str, flagged: dict, pairs: tuple[str, ...]) -> Spec:
    """The strategy and the options the user set (as --flags or -o pairs), converted to its types."""
    hints = field_hints(name)  # unknown strategy -> one-line ValueError listing the known ones
    raw = parse_assignments(pairs)
    both = sorted(set(raw) & set(flagged))
    if both:
        raise click.UsageError(f"option {both[0]!r} given twice (as --{both[0].replace('_', '-')} and -o)")
    check_options(name, flagged, hints, flag=True)
    check_options(name, raw, hints)
    options = {k: coerce(v, hints[k], k) for k, v in {**flagged, **raw}.items()}
    return Spec(name, options)


def _stream_one(lm, prompt: Prompt, i: int, n: int, strat, kwargs: dict) -> Generation:
    out = sys.stdout
    if n > 1:
        click.echo(f"### [{i + 1}/{n}] {prompt_text(prompt.prompt)}")

    def write(_: int, delta: str) -> None:
        out.write(delta)
        out.flush()

    gen = decodekit.generate(lm, prompt.prompt, strat, stream=write, **kwargs)
    click.echo("\n" if n > 1 and i + 1 < n else "")
    return gen


def _print_texts(gen: Generation, prompts: list[Prompt]) -> None:
    if len(prompts) == 1:
        click.echo(gen.texts[0])
        return
    for i, (p, text) in enumerate(zip(prompts, gen.texts)):
        click.echo(f"### [{i + 1}/{len(prompts)}] {prompt_text(p.prompt)}")
        click.echo(text + ("\n" if i + 1 < len(prompts) else ""))


def _print_stats(gen: Generation) -> None:
    s = gen.stats
    line = (f"{gen.strategy}: {s.new_tokens} new tokens in {s.wall_time_s:.2f} s "
            f"({s.tokens_per_s:.1f} tokens/s, {s.forward_passes} forward passes)")
    extra = ", ".join(f"{k} {v:.3g}" for k, v in s.extra.items())
    click.echo(line + (f"; {extra}" if extra else ""), err=True)
    sys.stderr.flush()
