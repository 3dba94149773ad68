"""``decodekit compare``: several strategies over a prompt set, side by side."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import decodekit
from decodekit.cli import report
from decodekit.cli.columns import columns_for
from decodekit.cli.entropy import DEFAULT_WIDTH, find_band, mean_by_position, write_plots
from decodekit.cli.model import load_lm, model_options
from decodekit.cli.monitor_specs import build_monitor, parse_monitor
from decodekit.cli.prompts import Prompt, default_prompts, read_prompts
from decodekit.cli.runs import StrategyRun, batches, run_strategy
from decodekit.cli.specs import build_strategy, parse_spec
from decodekit.registry import STRATEGIES

__all__ = ["compare", "default_specs"]

BEAM = "beam:num_beams=4,num_return_sequences=4"
DIVERSE_BEAM = "diverse_beam:num_beams=4,num_beam_groups=4,diversity_penalty=1.0,num_return_sequences=4"


def default_specs() -> list[str]:
    """greedy, sample (temperature 0.7, top-p 0.9) and, when registered, beam search and diverse beam
    search with 4 beams each returning all 4 (so that the diversity between returned sequences shows).

    >>> default_specs()[-1]
    'diverse_beam:num_beams=4,num_beam_groups=4,diversity_penalty=1.0,num_return_sequences=4'
    """
    specs = ["greedy", "sample:temperature=0.7,top_p=0.9"]
    specs += [spec for spec in (BEAM, DIVERSE_BEAM) if spec.partition(":")[0] in STRATEGIES]
    return specs


@click.command()
@click.option("-s", "--strategy", "specs", multiple=True, metavar="SPEC",
              help="A strategy and its options, NAME[:key=value,...], e.g. sample:temperature=0.7,top_p=0.9 "
                   "(repeatable; seed=N gives it its own seed). Default: greedy, sample with temperature "
                   "0.7 and top-p 0.9, and beam and diverse beam search (4 groups, diversity_penalty 1.0) "
                   "with 4 beams, each returning its 4 sequences.")
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
@click.option("-m", "--monitor", "monitor_specs", multiple=True, metavar="SPEC",
              help="A monitor watching every strategy, NAME[:key=value,...], e.g. entropy_band, loop, "
                   "nontermination:min_tokens=32, threshold:signal=max_prob,below=0.2 (repeatable). Each "
                   "gets a column of flags per 100 watched tokens, and the JSON lists each prompt's flags. "
                   "Monitors whose action is not 'flag' change the outputs. entropy_band takes --band, "
                   "--band-a and --band-zone unless its spec sets band, a or zone.")
@click.option("--band", metavar="FILE|none", default=None,
              help="Stable entropy band (JSON from `decodekit calibrate-entropy`) for the 'above band' / "
                   "'below band' columns; it must match the model. Default: the band shipped for the "
                   "default model, used when the model is that one. 'none': no band columns.")
@click.option("--band-a", type=click.FloatRange(min=0), metavar="A", default=1.5, show_default=True,
              help="Width of the band's zone: mean -+ A * std.")
@click.option("--band-zone", type=click.Choice(["position", "flat"]), default="position", show_default=True,
              help="position: per-position degree-2 fits of mean and std (EAD); flat: the constants "
                   "SEM -+ A * SEV (EAS).")
@click.option("--plots", "plots_dir", metavar="DIR", default=None,
              help="Write DIR/entropy.png: the smoothed entropy of the best sequence by position, mean "
                   "over prompts, one line per strategy, over the band's zone; and DIR/entropy.csv with "
                   "the same series.")
@click.option("--json", "json_out", metavar="FILE|-", help="Write metrics and per-prompt texts as JSON.")
@click.option("--csv", "csv_out", metavar="FILE|-", help="Write the metrics as CSV, one row per strategy.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or messages on stderr.")
@model_options
def compare(specs, prompts_file, limit, max_new_tokens, batch_size, seed, chat, monitor_specs, band, band_a,
            band_zone, plots_dir, json_out, csv_out, quiet, model, device, dtype) -> None:
    """Compare decoding strategies side by side on a prompt set.

    Every strategy generates every prompt (in batches). Text metrics count the model's tokens. The
    tables show per strategy:

    \b
    - speed and likelihood: prompts, mean new tokens, tokens/s, mean model
      log-prob per new token, strategy statistics (e.g. accepted per verify);
    - the best sequence of each prompt: distinct-1/2 (distinct n-grams / all
      n-grams across the outputs), rep-4 (share of 4-grams repeating an
      earlier one in the same output, pooled), seq-rep-4 (the same, averaged
      per output), loops (share of outputs ending in a loop);
    - between the sequences returned for each prompt (num_return_sequences
      > 1, e.g. beam vs diverse beam): distinct-1/2 among them, self-BLEU
      (BLEU-4 of each against the others) and the mean token edit distance
      per pair, averaged over prompts ("-": one sequence per prompt);
    - entropy band and monitor flags: the share of tokens whose smoothed
      entropy lies above / below the stable entropy zone (when a band fits
      the model, see --band), and per --monitor the flags it raised per 100
      tokens it watched.

    For the band columns and --plots the model's entropy is traced at every token (by a monitor
    that never acts: the outputs stay the same). With --json - or --csv -, the data goes to stdout
    and the tables to stderr.

    \b
    Examples:
      decodekit compare --plots plots
      decodekit compare -s greedy -s sample:temperature=0.7,top_p=0.9 -s sample:min_p=0.1,seed=3
      decodekit compare -s greedy -s eas --monitor entropy_band --monitor loop --json out.json
      decodekit compare --model ./my-model --band my-band.json --plots plots
      decodekit compare --prompts my_prompts.jsonl --max-new-tokens 64 --json results.json --csv -
    """
    if json_out == "-" and csv_out == "-":
        raise click.UsageError("only one of --json and --csv can write to stdout (-)")
    parsed = [parse_spec(s) for s in (specs or default_specs())]
    runs = [StrategyRun(spec, build_strategy(spec), seed if spec.seed is None else spec.seed)
            for spec in parsed]  # invalid options fail here, before the model loads
    monitors = _monitors(monitor_specs, band, band_a, band_zone)
    prompts = _prompts(prompts_file, limit)
    lm = load_lm(model, device, dtype, quiet=quiet)
    zone = find_band(band, lm, a=band_a, zone=band_zone)
    if zone is None and band is None and not quiet:
        click.echo("no entropy band fits this model: no band columns (make one with `decodekit "
                   "calibrate-entropy` and give it with --band FILE)", err=True)
    for run in runs:
        run.monitors, run.zone, run.record = monitors, zone, zone is not None or plots_dir is not None
    _warm_up(lm, prompts[0], chat)
    _run_all(lm, runs, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens, chat=chat, quiet=quiet)

    columns = columns_for(runs)
    to_stdout = "-" in (json_out, csv_out)
    title = f"{len(prompts)} prompts, up to {max_new_tokens} new tokens, batch size {batch_size}"
    if zone is not None:
        title += f"; entropy zone: {zone.describe()}"
    if not (quiet and to_stdout):
        report.print_table(runs, columns, title, stderr=to_stdout)
    stdout = sys.stdout
    if json_out:
        settings = {"model": model or "default", "prompts": prompts_file or "built-in", "limit": limit,
                    "max_new_tokens": max_new_tokens, "batch_size": batch_size, "seed": seed,
                    "chat": chat, "device": device, "dtype": dtype, "monitors": list(monitor_specs),
                    "band": zone.path if zone else None, "band_a": band_a, "band_zone": band_zone,
                    "plots": plots_dir}
        report.write(report.dumps(report.to_json(runs, columns, prompts, settings)), json_out, stdout)
    if csv_out:
        report.write(report.to_csv(runs, columns), csv_out, stdout)
    if plots_dir is not None:
        series = {run.spec.label: mean_by_position(run.entropy_traces() or []) for run in runs}
        paths = write_plots(series, plots_dir, zone=zone, width=zone.width if zone else DEFAULT_WIDTH, prompts=len(prompts))
        if not quiet:
            click.echo("wrote " + ", ".join(map(str, paths)), err=True)


def _monitors(specs: tuple[str, ...], band: str | None, a: float, zone: str) -> tuple:
    """The --monitor objects (built, so validated, before the model loads); entropy_band monitors
    take compare's band settings for the fields their spec leaves unset."""
    band_file = None if band is None or band.lower() == "none" else band
    out = []
    for text in specs:
        spec = parse_monitor(text)
        defaults = {"band": band_file, "a": a, "zone": zone} if spec.name == "entropy_band" else {}
        out.append(build_monitor(spec, {k: v for k, v in defaults.items() if v is not None}))
    return tuple(out)


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
