"""Speculative decoding on CPU: prompt lookup vs greedy vs transformers' prompt lookup, side by side.

Input-grounded prompts (summarise / rewrite / correct a given passage: ``decodekit/data/grounded.jsonl``)
go through the chat template once, outside the timing; every case decodes the same token ids with the
same model object in one process. Repetitions are interleaved: each round runs every case on prompt
(or batch) 0, then every case on prompt 1, ..., in a rotated order, so the load of a shared machine
falls on all cases alike; each call's time is the median over rounds. Wall time and process CPU time
are both reported (CPU time is less sensitive to other processes taking the cores). Every output must equal decodekit's greedy output (transformers' too), token for token.

Cases (batch 1 runs each prompt alone; batch 4 runs the prompts in batches of 4):
  greedy       decodekit greedy                      (batch 1)
  pl           decodekit prompt_lookup, defaults     (batch 1)
  hf_pl        transformers generate(prompt_lookup_num_tokens=10)  (batch 1; it refuses batches)
  hf_greedy    transformers generate(do_sample=False) (batch 1, reference; --no-hf-greedy skips it)
  greedy_b4    decodekit greedy                      (batch 4)
  pl_b4        decodekit prompt_lookup               (batch 4)
  bw           decodekit blockwise with trained heads (batch 1; only with --heads FILE)

``--cases`` picks a subset (e.g. ``--cases greedy,bw`` for the blockwise numbers alone).

ms/token = summed median wall time of a case's generate calls (prefill included) / new tokens.

Usage:
    python benchmarks/bench_speculative.py                        # embedded default model
    python benchmarks/bench_speculative.py --model /work/smollm2-fp32 --rounds 3 --new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from importlib import resources

import torch
import transformers

import decodekit
from decodekit.api import encode_prompts


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder or .gguf file (default: the embedded model)")
    p.add_argument("--new-tokens", type=int, default=64, help="max new tokens per prompt (default 64)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--prompts", type=int, default=8, help="how many grounded prompts (default 8, max 8)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--no-hf-greedy", action="store_true", help="skip the transformers greedy reference")
    p.add_argument("--pl-options", default="{}", help="JSON options for decodekit prompt_lookup")
    p.add_argument("--heads", default=None, metavar="FILE", help="trained heads (decodekit train-heads) for 'bw'")
    p.add_argument("--cases", default=None, help="comma-separated subset of the cases (default: all)")
    p.add_argument("--json", default=None, metavar="PATH", help="write every measurement as JSON")
    return p.parse_args(argv)


def grounded_prompts(n: int) -> list[str]:
    lines = resources.files("decodekit.data").joinpath("grounded.jsonl").read_text().splitlines()
    return [json.loads(line)["prompt"] for line in lines[:n]]


def hf_generate(lm, ids: list[int], n: int, **kw) -> list[int]:
    x = torch.tensor([ids])
    out = lm.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                            pad_token_id=lm.pad_token_id, temperature=None, top_p=None, top_k=None, **kw)
    row = out[0, len(ids):].tolist()
    for i, t in enumerate(row):  # transformers stops at EOS (kept), like decodekit
        if t in lm.eos_token_ids:
            return row[: i + 1]
    return row


def build_cases(lm, lists: list[list[int]], n: int, pl_options: dict, hf_greedy: bool, heads=None):
    """name -> list of (batch of token id lists, callable returning token ids per row)."""
    def dk(strategy, batch, **kw):
        return lambda: decodekit.generate(lm, batch, strategy, max_new_tokens=n, **kw).token_ids

    single = [[ids] for ids in lists]
    batches = [lists[i: i + 4] for i in range(0, len(lists), 4)]
    cases = {
        "greedy": [(b, dk("greedy", b)) for b in single],
        "pl": [(b, dk("prompt_lookup", b, **pl_options)) for b in single],
        "hf_pl": [(b, (lambda ids=b[0]: [hf_generate(lm, ids, n, prompt_lookup_num_tokens=10)])) for b in single],
        "greedy_b4": [(b, dk("greedy", b)) for b in batches],
        "pl_b4": [(b, dk("prompt_lookup", b, **pl_options)) for b in batches],
    }
    if heads is not None:
        cases["bw"] = [(b, dk(_bw(heads), b)) for b in single]
    if hf_greedy:
        cases["hf_greedy"] = [(b, (lambda ids=b[0]: [hf_generate(lm, ids, n)])) for b in single]
    return cases


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = decodekit.load(args.model)
    lists = encode_prompts(lm, grounded_prompts(args.prompts))
    heads = None
    if args.heads:
        from decodekit.strategies.speculative import load_heads

        heads = load_heads(args.heads)[0]
    cases = build_cases(lm, lists, args.new_tokens, json.loads(args.pl_options), not args.no_hf_greedy, heads)
    if args.cases:
        cases = {name: cases[name] for name in args.cases.split(",")}
    names = list(cases)
    reference = [decodekit.generate(lm, [ids], "greedy", max_new_tokens=args.new_tokens).token_ids[0]
                 for ids in lists]  # also the warm-up
    times = {name: [[] for _ in cases[name]] for name in names}  # wall seconds per call
    cpu = {name: [[] for _ in cases[name]] for name in names}  # process seconds per call
    mismatches = {name: 0 for name in names}
    calls = [(name, j) for j in range(max(len(v) for v in cases.values())) for name in names
             if j < len(cases[name])]  # prompt (or batch) j of every case back to back: same load
    for r in range(args.rounds):
        for i, (name, j) in enumerate(calls[r % len(calls):] + calls[: r % len(calls)]):
            batch, call = cases[name][j]
            t0, c0 = time.perf_counter(), time.process_time()
            out = call()
            times[name][j].append(time.perf_counter() - t0)
            cpu[name][j].append(time.process_time() - c0)
            mismatches[name] += int(out != [reference[lists.index(ids)] for ids in batch])
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    tokens = sum(len(t) for t in reference)
    result = {"model": lm.name, "new_tokens": args.new_tokens, "prompts": len(lists), "rounds": args.rounds,
              "tokens": tokens, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "transformers": transformers.__version__, "python": platform.python_version(), "cases": {}}
    for name in names:
        total = sum(statistics.median(t) for t in times[name])
        total_cpu = sum(statistics.median(t) for t in cpu[name])
        result["cases"][name] = {"s": total, "cpu_s": total_cpu, "ms_per_token": 1000 * total / tokens,
                                 "mismatches": mismatches[name], "runs": times[name], "cpu_runs": cpu[name]}
    c = result["cases"]
    pairs = {"pl_vs_greedy": ("greedy", "pl"), "pl_vs_hf_pl": ("hf_pl", "pl"),
             "pl_b4_vs_greedy_b4": ("greedy_b4", "pl_b4"), "greedy_vs_hf_greedy": ("hf_greedy", "greedy"),
             "hf_pl_vs_hf_greedy": ("hf_greedy", "hf_pl"), "bw_vs_greedy": ("greedy", "bw")}
    result["speedups"] = {key: c[a]["s"] / c[b]["s"] for key, (a, b) in pairs.items() if a in c and b in c}
    result["cpu_speedups"] = {key: c[a]["cpu_s"] / c[b]["cpu_s"] for key, (a, b) in pairs.items() if a in c and b in c}
    result["stats"] = {}
    pl_options = json.loads(args.pl_options)
    if "pl" in c:  # acceptance stats over all prompts in one batch
        result["stats"]["pl"] = decodekit.generate(lm, lists, "prompt_lookup", max_new_tokens=args.new_tokens,
                                                   **pl_options).stats.extra
    if "bw" in c:
        result["stats"]["bw"] = decodekit.generate(lm, lists, _bw(heads), max_new_tokens=args.new_tokens).stats.extra
    _print(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


def _print(result: dict) -> None:
    print(f"\nmodel {result['model']}, {result['prompts']} grounded prompts, <= {result['new_tokens']} new "
          f"tokens ({result['tokens']} in all), {result['rounds']} interleaved rounds, medians, "
          f"{result['threads']} threads, torch {result['torch']}, transformers {result['transformers']}")
    print("| case | wall s (sum of medians) | ms/token | CPU s | outputs == greedy |")
    print("|---|---:|---:|---:|---|")
    for name, c in result["cases"].items():
        same = "yes" if not c["mismatches"] else f"NO ({c['mismatches']})"
        print(f"| {name} | {c['s']:.1f} | {c['ms_per_token']:.0f} | {c['cpu_s']:.1f} | {same} |")
    for key, value in result["speedups"].items():
        print(f"{key}: {value:.2f}x wall, {result['cpu_speedups'][key]:.2f}x CPU time")
    for name, stats in result["stats"].items():
        print(f"{name} stats (all prompts, one batch):", {k: round(v, 3) for k, v in stats.items()})


def _bw(heads):
    return decodekit.strategies.get("blockwise")(heads=heads, draft_tokens=heads.num_heads)


if __name__ == "__main__":
    main()
