"""``decodekit train-heads``: train blockwise prediction heads (Stern et al. 2018) by self-distillation.

The model greedily continues a prompt set, and heads on its last hidden state learn to predict its
own next tokens 2..k+1 positions ahead (:func:`decodekit.strategies.speculative.train_heads`). The
heads are saved as safetensors and used with ``-s blockwise:heads=FILE``. With ``--eval N`` the last
N prompts are held out and the acceptance of untrained and trained heads is printed.
"""

from __future__ import annotations

import sys

import click

from decodekit.cli.model import load_lm, model_options

__all__ = ["train_heads"]


@click.command("train-heads")
@click.option("-o", "--output", required=True, metavar="FILE", help="Where to save the heads (.safetensors).")
@click.option("-f", "--prompts", "prompts_file", default=None, metavar="FILE",
              help="Prompt file (text lines or JSONL; default: the built-in prompt sets).")
@click.option("--heads", "num_heads", type=click.IntRange(min=1), default=4, show_default=True,
              help="Number of heads (positions t+2 .. t+1+heads).")
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--batch-positions", type=click.IntRange(min=1), default=256, show_default=True,
              help="Token positions per training step.")
@click.option("--new-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="Greedy tokens generated per prompt for the training data.")
@click.option("--vocab", type=click.Choice(["data", "full"]), default="data", show_default=True,
              help="Softmax over the tokens seen in the data (fast on CPU) or the full vocabulary.")
@click.option("--eval", "n_eval", type=click.IntRange(min=0), default=0, show_default=True,
              help="Hold out this many prompts and report blockwise acceptance before / after.")
@click.option("--seed", type=int, default=0, show_default=True)
@model_options
def train_heads(output, prompts_file, num_heads, steps, lr, batch_positions, new_tokens, vocab, n_eval, seed,
                model, device, dtype):
    """Train blockwise heads for a model on its own greedy outputs and save them.

    \b
    Examples:
      decodekit train-heads -o heads.safetensors --steps 300
      decodekit train-heads -o heads.safetensors -f my_prompts.jsonl --device cuda --steps 2000
      decodekit generate "Summarise: ..." -s blockwise:heads=heads.safetensors
    """
    from decodekit.cli.prompts import default_prompts, read_prompts
    from decodekit.strategies.speculative import BlockwiseHeads, acceptance, save_heads
    from decodekit.strategies.speculative import train_heads as train
    from decodekit.strategies.speculative.train_heads import distillation_data

    prompts = [p.prompt for p in (read_prompts(prompts_file) if prompts_file else _builtin(default_prompts))]
    if n_eval >= len(prompts):
        raise click.BadParameter(f"--eval {n_eval} leaves no training prompts (there are {len(prompts)})")
    train_set, eval_set = prompts[: len(prompts) - n_eval], prompts[len(prompts) - n_eval:]
    lm = load_lm(model, device, dtype)
    click.echo(f"generating training data: {len(train_set)} prompts x {new_tokens} tokens ...", err=True)
    data = distillation_data(lm, train_set, max_new_tokens=new_tokens)
    with click.progressbar(length=steps, label="training heads", file=sys.stderr) as bar:
        last = {"loss": float("nan")}

        def progress(step: int, loss: float) -> None:
            last["loss"] = loss
            bar.update(1)

        heads = train(lm, num_heads=num_heads, steps=steps, lr=lr, batch_positions=batch_positions,
                      vocab=vocab, seed=seed, data=data, progress=progress)
    save_heads(heads, output, {"model": lm.name, "steps": steps, "lr": lr, "prompts": len(train_set),
                               "new_tokens": new_tokens, "final_loss": last["loss"]})
    click.echo(f"saved {num_heads} heads to {output} (final loss {last['loss']:.3f})")
    if eval_set:
        before = acceptance(lm, BlockwiseHeads(lm.config.hidden_size, num_heads, init="random"), eval_set)
        after = acceptance(lm, heads, eval_set)
        for name, stats in (("random heads", before), ("trained heads", after)):
            click.echo(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items()))


def _builtin(default_prompts):
    """The built-in prompt set plus the input-grounded one (summaries, rewrites)."""
    from importlib import resources

    from decodekit.cli.prompts import parse_prompts

    text = resources.files("decodekit").joinpath("data", "grounded.jsonl").read_text(encoding="utf-8")
    return default_prompts() + parse_prompts(text, "decodekit/data/grounded.jsonl", jsonl=True)
