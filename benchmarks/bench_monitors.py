"""Monitors and entropy-aware decoding on the default model (CPU), in one process.

Part 1 -- monitoring overhead: greedy with the entropy band and loop monitors on vs off. Runs are
interleaved (each round runs both, alternating which goes first) so a shared machine's load falls on
both alike; medians over rounds. The tokens of both sides must be identical (monitors that only flag
never change the output). ratio = ms/token with monitors / without (goal <= 1.1).

Part 2 -- repetition: open-ended continuations (``chat=False``) of >= 20 encyclopedic openings,
128 new tokens each, decoded as one batch by greedy, EAS (typical tau=0.2 and top-k 30, a=0.5, g=5,
the shipped band), EAD and pure typical sampling. Reports seq-rep-4 (repeated 4-gram rate of the
generated tokens, pooled and per-prompt mean), rows ending in a loop (loop detector), distinct-2,
the share of greedy tokens (Det%, EAS only) and the violation rates of the smoothed entropy
against the stable entropy zone (SEM -+ 1.5 SEV).

Usage:
    python benchmarks/bench_monitors.py --model /work/smollm2-fp32 [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import decodekit
from decodekit.api import encode_prompts
from decodekit.metrics import distinct_n, repetition_rate
from decodekit.monitors import EntropyBand, LoopDetector, Record
from decodekit.monitors.band import Band, default_band_path, violation_rates

OPENINGS = [
    "The history of the city of Paris begins",
    "The Amazon rainforest covers much of the Amazon basin of South America. It",
    "Photosynthesis is the process by which plants",
    "The Industrial Revolution was the transition to new manufacturing processes in",
    "Mount Everest, the highest mountain above sea level, is located",
    "The Roman Empire was the post-Republican period of ancient Rome. At its height,",
    "Jazz is a music genre that originated in the African-American communities of",
    "The printing press is a mechanical device for applying pressure to an inked surface",
    "Honey bees are social insects that live in large colonies. Each colony",
    "The Great Barrier Reef is the world's largest coral reef system. It",
    "Chess is a board game for two players. It is played on a square board",
    "The Moon is Earth's only natural satellite. It orbits",
    "Coffee is a beverage brewed from roasted coffee beans. The plant",
    "The French Revolution was a period of political and societal change in France that",
    "Volcanoes form when magma from within the Earth's upper mantle",
    "The Silk Road was a network of trade routes that connected",
    "Penguins are a group of aquatic flightless birds. They live",
    "The piano is a keyboard instrument in which the strings are struck by",
    "Antarctica is Earth's southernmost continent. It contains",
    "The human heart is a muscular organ that pumps blood through",
    "Ancient Egypt was a civilization of ancient North Africa, concentrated along",
    "Bicycles were introduced in the 19th century in Europe. Today,",
    "The Pacific Ocean is the largest and deepest of Earth's five oceanic divisions. It",
    "Vincent van Gogh was a Dutch painter who",
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder or .gguf (default: the embedded model)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds of part 1 (default 5)")
    p.add_argument("--overhead-tokens", type=int, default=48, help="new tokens per prompt in part 1")
    p.add_argument("--new-tokens", type=int, default=128, help="new tokens per prompt in part 2")
    p.add_argument("--seeds", type=int, default=2, help="seeds of the sampling strategies in part 2")
    p.add_argument("--parts", default="1,2")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", default=None, metavar="PATH")
    return p.parse_args(argv)


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def overhead(lm, rounds: int, new_tokens: int) -> list[dict]:
    cases = {"batch 1": [OPENINGS[0]], "batch 4": OPENINGS[1:5]}
    results = []
    for case, prompts in cases.items():
        ids = encode_prompts(lm, prompts, chat=False)
        monitors = lambda: [EntropyBand(a=1.5), LoopDetector()]  # noqa: E731  (fresh per run)
        run = {
            "off": lambda: decodekit.generate(lm, ids, max_new_tokens=new_tokens),
            "on": lambda: decodekit.generate(lm, ids, max_new_tokens=new_tokens, monitors=monitors()),
        }
        ref = {k: f() for k, f in run.items()}  # warm-up
        assert ref["on"].token_ids == ref["off"].token_ids, "monitors changed the output"
        times = {"off": [], "on": []}
        for r in range(rounds):
            for side in (("off", "on") if r % 2 == 0 else ("on", "off")):
                gen, wall, cpu = timed(run[side])
                n = sum(len(t) for t in gen.token_ids)
                times[side].append((1000 * wall / n, 1000 * cpu / n))
        med = {s: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for s, v in times.items()}
        results.append({"case": case, "tokens": sum(len(t) for t in ref["on"].token_ids),
                        "off_ms": med["off"][0], "on_ms": med["on"][0], "ratio": med["on"][0] / med["off"][0],
                        "off_cpu_ms": med["off"][1], "on_cpu_ms": med["on"][1],
                        "cpu_ratio": med["on"][1] / med["off"][1], "flags": len(ref["on"].flags)})
        print(results[-1], flush=True)
    return results


STRATEGIES = [
    ("greedy", "greedy", {}),
    ("EAS typical 0.2", "eas", {"sampler": "typical", "typical_p": 0.2}),
    ("EAS top-k 30", "eas", {"sampler": "top_k", "top_k": 30}),
    ("EAD", "ead", {}),
    ("typical 0.2", "sample", {"typical_p": 0.2}),
]


def repetition(lm, new_tokens: int, seeds: int) -> list[dict]:
    band = Band.load(default_band_path())
    lower, upper = band.sem - 1.5 * band.sev, band.sem + 1.5 * band.sev
    ids = encode_prompts(lm, OPENINGS, chat=False)
    rows = []
    for label, name, opts in STRATEGIES:
        for seed in range(seeds if name != "greedy" else 1):
            monitors = [Record(("smoothed_entropy",)), LoopDetector()]
            gen, wall, _ = timed(lambda: decodekit.generate(lm, ids, name, max_new_tokens=new_tokens, seed=seed,
                                                            monitors=monitors, **opts))
            toks = gen.token_ids
            smoothed = [v for t in gen.traces for v in t.signals["smoothed_entropy"]]
            n = sum(map(len, toks))
            per = [repetition_rate([t], 4) for t in toks if len(t) >= 4]
            row = {"strategy": label, "seed": seed, "tokens": n, "rep4": repetition_rate(toks, 4),
                   "rep4_mean": statistics.mean(per), "loops": len({f.prompt for f in gen.flags}),
                   "distinct2": distinct_n(toks, 2), "wall_s": wall,
                   **violation_rates(smoothed, lower, upper)}
            if name in ("eas", "ead"):
                row["det"] = 1 - gen.stats.extra.get("sampled", 0.0) / n
            if name == "ead":
                row["backoffs"] = gen.stats.extra["backoffs"]
            rows.append(row)
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = decodekit.load(args.model)
    out = {"model": args.model or "default", "torch_threads": torch.get_num_threads()}
    if "1" in args.parts:
        out["overhead"] = overhead(lm, args.rounds, args.overhead_tokens)
    if "2" in args.parts:
        out["repetition"] = repetition(lm, args.new_tokens, args.seeds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
