"""Where one warm ``generate`` call's host time goes on the CUDA-graph path (needs CUDA).

A random-weight model of ``--shape`` (``bench_gpu.SHAPES``), greedy, ``--tokens`` new tokens from a
32-token prompt as in ``bench_gpu.py``: two warm-up calls, then the wall time of one call against
``tokens x`` one decode forward's replay, and a cProfile of one call (the ``--top`` functions by
cumulative time).

Usage::

    python benchmarks/profile_call.py --shape llama-3.1-8b --tokens 96
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_gpu as B  # noqa: E402

import decodekit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama-3.1-8b", choices=sorted(B.SHAPES))
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    lm = decodekit.load(B.random_model(args.shape), B.IdTokenizer())
    prompt = torch.randint(10, min(30000, lm.vocab_size), (32,), generator=torch.Generator().manual_seed(0)).tolist()

    def call():
        return decodekit.generate(lm, [prompt], max_new_tokens=args.tokens, eos_token_id=lm.vocab_size - 1)

    for _ in range(2):
        call()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    gen = call()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    slab = next(s for s in lm.fast.slabs[1] if (1, False) in s.graphs)
    g = slab.graphs[(1, False)].graph
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    replay = start.elapsed_time(end) / 20 / 1e3
    n = len(gen.token_ids[0])
    print(f"{args.shape}: one call {1e3 * wall:.1f} ms for {n} tokens; {n} decode replays "
          f"{1e3 * n * replay:.1f} ms; the rest {1e3 * (wall - n * replay):.1f} ms "
          f"(prefill {1e3 * gen.stats.prefill_time_s:.1f} ms)", flush=True)
    prof = cProfile.Profile()
    prof.enable()
    call()
    torch.cuda.synchronize()
    prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
