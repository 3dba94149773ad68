"""Beam search on the CPU, side by side in one run: decodekit ``beam`` vs transformers' beam search
(same settings, same outputs), and decodekit ``diverse_beam`` vs ``beam`` at equal beams.

Repetitions are interleaved (every case once per round, in turn) and medians reported, so a load that
drifts during the run hits every case alike. Goals (issue 3): decodekit beam 4 at least 1.2x faster
than transformers beam 4; diverse beam at most 1.15x the time per step of beam.

    python benchmarks/bench_beam.py                       # the embedded default model
    python benchmarks/bench_beam.py --model /path/to/model --rounds 7 --max-new-tokens 32 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import decodekit

PROMPTS = [
    "Explain in two sentences why the sky is blue.",
    "Write a short poem about a lighthouse.",
    "Give three tips for learning to cook.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder or .gguf (default: the embedded model)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--groups", type=int, default=2, help="diverse beam: num_beam_groups")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = decodekit.load(args.model)
    prompts = decodekit.api.encode_prompts(lm, PROMPTS)
    eos = lm.model.generation_config.eos_token_id
    n, nb = args.max_new_tokens, args.num_beams
    cases = {
        f"decodekit beam {nb}": lambda ids: _ours(lm, ids, "beam", n, eos, num_beams=nb),
        f"transformers beam {nb}": lambda ids: _theirs(lm, ids, n, eos, num_beams=nb),
        f"decodekit diverse_beam {nb} ({args.groups} groups)": lambda ids: _ours(
            lm, ids, "diverse_beam", n, eos, num_beams=nb, num_beam_groups=args.groups, diversity_penalty=0.5),
    }
    same = all(_ours(lm, ids, "beam", n, eos, num_beams=nb)[2] == _theirs(lm, ids, n, eos, num_beams=nb)[2]
               for ids in prompts)  # also the warm-up
    times = {name: [] for name in cases}
    steps = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            total, n_steps = 0.0, 0
            for ids in prompts:
                seconds, s, _ = fn(ids)
                total, n_steps = total + seconds, n_steps + s
            times[name].append(total)
            steps[name].append(n_steps)
    _report(args, lm, times, steps, same, nb)


def _ours(lm, ids, strategy, n, eos, **kw):
    t0 = time.perf_counter()
    gen = decodekit.generate(lm, [ids], strategy, max_new_tokens=n, eos_token_id=eos, **kw)
    return time.perf_counter() - t0, gen.stats.steps, gen.token_ids[0]


@torch.inference_mode()
def _theirs(lm, ids, n, eos, **kw):
    t0 = time.perf_counter()
    out = lm.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                            max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=eos, **kw)
    seconds = time.perf_counter() - t0
    row = out[0, len(ids):].tolist()
    row = row[: row.index(eos) + 1] if eos in row else row
    return seconds, 1, row  # (its steps are not reported)


def _report(args, lm, times, steps, same, nb) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}
    per_step = {k: statistics.median(t / s for t, s in zip(times[k], steps[k])) for k in times}
    names = list(times)
    print(f"\nmodel {lm.name} | CPU, {torch.get_num_threads()} threads | {len(PROMPTS)} chat prompts, "
          f"max_new_tokens={args.max_new_tokens} | {args.rounds} interleaved rounds, medians")
    print(f"decodekit beam output == transformers beam output: {same}\n")
    ours, theirs, diverse = names
    print(f"{'case':44} {'seconds':>9} {'steps':>6} {'ms/step':>8}")
    for k in names:
        n_steps = f"{statistics.median(steps[k]):6.0f}" if k != theirs else f"{'-':>6}"
        ms = f"{1000 * per_step[k]:8.1f}" if k != theirs else f"{'-':>8}"
        print(f"{k:44} {med[k]:9.3f} {n_steps} {ms}")
    print(f"\nbeam {nb}: transformers / decodekit = {med[theirs] / med[ours]:.2f}x   (goal >= 1.2x)")
    print(f"diverse_beam / beam: {med[diverse] / med[ours]:.2f}x total, "
          f"{per_step[diverse] / per_step[ours]:.2f}x per step   (goal <= 1.15x)")


if __name__ == "__main__":
    main()
