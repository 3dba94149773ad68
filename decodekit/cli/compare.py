"""``decodekit compare``: several strategies over a prompt set, side by side."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import decodekit
from decodekit.cli import report
from decodekit.cli.columns import columns_for
from decodekit.cli.model import load_lm, model_options
from decodekit.cli.prompts import Prompt, default_prompts, read_prompts
from decodekit.cli.runs import StrategyRun, batches, run_strategy
from decodekit.cli.specs import build_strategy, parse_spec
from decodekit.registry import STRATEGIES

__all__ = ["compare", "default_specs"]


def default_specs() -> list[str]:
    """greedy, sample (temperature 0.7, top-p 0.9) and, when registered, beam search with 4 beams."""
    specs = ["greedy", "sample:temperature=0.7,top_p=0.9"]
    if "beam" in STRATEGIES:
        specs.append("beam:num_beams=4")
    return specs


@click.command()
@click.option("-s", "--strategy", "specs", multiple=True, metavar="SPEC",
              help="A strategy and its options, NAME[:key=value,...], e.g. sample:temperature=0.7,top_p=0.9 "
                   "(repeatable; seed=N gives it its own seed). Default: greedy, "
                   "sample:temperature=0.7,top_p=0.9, and beam:num_beams=4 when beam is registered.")
@click.option("-p", "--prompts", "prompts_file", metavar="FILE",
              help='JSONL with a "prompt" field per line, or one prompt per line ("-" = stdin). '
                   "Default: the built-in set (decodekit/data/prompts.jsonl).")
@click.option("--limit", type=click.IntRange(min=1), metavar="N",
              default=None, help="Use only the first N prompts.")
@click.option("-n", "--max-new-tokens", type=click.IntRange(min=1), metavar="N",
              default=48, show_default=True, help="Most new tokens per prompt.")
@click.option("-b", "--batch-size", type=click.IntRange(min=1), metavar="N",
              default=4, show_default=True, help="Prompts generated together in one batch.")
@click.option("--seed", type=click.IntRange(min=0), metavar="N",
              default=0, show_default=True,
              help="Seed of every strategy's random draws (batch b uses seed + b).")
@click.option("--chat/--no-chat", default=None,
              help="Wrap prompts in the model's chat template (default: when it has one).")
@click.option("--json", "json_out", metavar="FILE|-", help="Write metrics and per-prompt texts as JSON.")
@click.option("--csv", "csv_out", metavar="FILE|-", help="Write the metrics as CSV, one row per strategy.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or messages on stderr.")
@model_options
def compare(specs, prompts_file, limit, max_new_tokens, batch_size, seed, chat, json_out, csv_out, quiet,
            model, device, dtype) -> None:
    """Compare decoding strategies side by side on a prompt set.

    Every strategy generates every prompt (in batches); the table shows per strategy: prompts, mean
    new tokens, tokens/s, distinct-1/2 (distinct n-grams / all n-grams across the outputs), rep-4
    (fraction of 4-grams that repeat an earlier one in the same output) and the mean model log-prob
    per new token. Text metrics count the model's tokens. Strategy-specific statistics (e.g.
    accepted tokens per verify) get columns of their own. With --json - or --csv -, the data goes to
    stdout and the table to stderr.

    \b
    Examples:
      decodekit compare
      decodekit compare -s greedy -s sample:temperature=0.7,top_p=0.9 -s sample:min_p=0.1,seed=3
      decodekit compare --prompts my_prompts.jsonl --max-new-tokens 64 --json results.json --csv -
    """
    if json_out == "-" and csv_out == "-":
        raise click.UsageError("only one of --json and --csv can write to stdout (-)")
    parsed = [parse_spec(s) for s in (specs or default_specs())]
    runs = [StrategyRun(spec, build_strategy(spec), seed if spec.seed is None else spec.seed)
            for spec in parsed]  # invalid options fail here, before the model loads
    prompts = _prompts(prompts_file, limit)
    lm = load_lm(model, device, dtype, quiet=quiet)
    _warm_up(lm, prompts[0], chat)
    _run_all(lm, runs, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens, chat=chat, quiet=quiet)

    columns = columns_for(runs)
    to_stdout = "-" in (json_out, csv_out)
    title = f"{len(prompts)} prompts, up to {max_new_tokens} new tokens, batch size {batch_size}"
    if not (quiet and to_stdout):
        report.print_table(runs, columns, title, stderr=to_stdout)
    stdout = sys.stdout
    if json_out:
        settings = {"model": model or "default", "prompts": prompts_file or "built-in", "limit": limit,
                    "max_new_tokens": max_new_tokens, "batch_size": batch_size, "seed": seed,
                    "chat": chat, "device": device, "dtype": dtype}
        report.write(report.dumps(report.to_json(runs, columns, prompts, settings)), json_out, stdout)
    if csv_out:
        report.write(report.to_csv(runs, columns), csv_out, stdout)


def _prompts(path: str | None, limit: int | None) -> list[Prompt]:
    prompts = read_prompts(path) if path else default_prompts()
    return prompts[:limit] if limit else prompts


def _warm_up(lm: decodekit.LM, prompt: Prompt, chat: bool | None) -> None:
    """A 2-token run first, so that one-time costs do not count against the first strategy."""
    decodekit.generate(lm, prompt.prompt, "greedy", max_new_tokens=2, chat=chat)


def _run_all(lm, runs: list[StrategyRun], prompts: list[Prompt], *, batch_size: int,
             max_new_tokens: int, chat: bool | None, quiet: bool) -> None:
    texts = [p.prompt for p in prompts]
    n_batches = len(batches(len(texts), batch_size))
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=Console(stderr=True), transient=True, disable=quiet)
    with progress:
        task = progress.add_task("", total=len(runs) * n_batches)
        for run in runs:
            def advance(b: int, label: str = run.spec.label) -> None:
                progress.update(task, advance=1, description=f"{label} (batch {b + 2}/{n_batches})"
                                if b + 1 < n_batches else label)

            progress.update(task, description=f"{run.spec.label} (batch 1/{n_batches})")
            run_strategy(lm, run, texts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                         chat=chat, on_batch=advance)
