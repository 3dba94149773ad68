"""Where one warm ``generate`` call's host time goes on the CUDA-graph path (needs CUDA).

A random-weight model of ``--shape`` (``bench_gpu.SHAPES``), greedy, ``--tokens`` new tokens from a
32-token prompt as in ``bench_gpu.py``: two warm-up calls, then the wall time of one call against
``tokens x`` one decode forward's replay; the prefill's own time (the GPU synchronised before and
after it); the GPU timeline of one call (torch.profiler): kernel time, the idle gaps between
kernels and the largest of them, the kernels by total time; and a cProfile of one call (the
``--top`` functions by cumulative time).

Usage::

    python benchmarks/profile_call.py --shape llama-3.1-8b --tokens 96
    python benchmarks/profile_call.py --shape llama-3.1-8b --tokens 48 --strategy beam   # 4 beams
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
from decodekit import loop  # noqa: E402


def timeline(call, top: int) -> None:
    """GPU kernels of one call: busy time, idle gaps, the largest gaps, the kernels by total time."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in events)
    busy, gaps, end = 0.0, [], None
    for i, (a, b, name) in enumerate(spans):
        if end is not None and a > end:
            gaps.append((a - end, i, name))
        busy += max(0.0, b - max(a, end or a))
        end = b if end is None else max(end, b)
    first, last = spans[0][0], end
    print(f"timeline (profiled, {1e3 * wall:.1f} ms wall): {len(spans)} kernels / copies from "
          f"{(last - first) / 1e3:.1f} ms first to last, busy {busy / 1e3:.1f} ms, idle {sum(g for g, _, _ in gaps) / 1e3:.2f} ms "
          f"in {len(gaps)} gaps", flush=True)
    for g, i, name in sorted(gaps, reverse=True)[:10]:
        print(f"  gap {g:8.1f} us before event {i:6d} ({name[:70]})")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=top, max_name_column_width=70), flush=True)


def prefill_time(call) -> float:
    """Seconds of one call's prefill with the GPU synchronised before and after it."""
    inner, spent = loop.prefill, []

    def timed(*args, **kw):
        torch.cuda.synchronize()
        t = time.perf_counter()
        state = inner(*args, **kw)
        torch.cuda.synchronize()
        spent.append(time.perf_counter() - t)
        return state

    loop.prefill = timed
    try:
        call()
    finally:
        loop.prefill = inner
    return spent[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama-3.1-8b", choices=sorted(B.SHAPES))
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--strategy", default="greedy", choices=["greedy", "beam"],
                    help="beam: 4 beams (the decode replays are then of the 4-row slab)")
    args = ap.parse_args()
    lm = decodekit.load(B.random_model(args.shape), B.IdTokenizer())
    prompt = torch.randint(10, min(30000, lm.vocab_size), (32,), generator=torch.Generator().manual_seed(0)).tolist()

    def call():
        kw = {"num_beams": 4} if args.strategy == "beam" else {}
        return decodekit.generate(lm, [prompt], args.strategy, max_new_tokens=args.tokens,
                                  eos_token_id=lm.vocab_size - 1, **kw)

    for _ in range(2):
        call()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    gen = call()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    slab = next(s for s in lm.fast.slabs[max(lm.fast.slabs)] if (1, False) in s.graphs)
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
    print(f"prefill, synchronised: {1e3 * prefill_time(call):.1f} ms", flush=True)
    timeline(call, args.top)
    prof = cProfile.Profile()
    prof.enable()
    call()
    torch.cuda.synchronize()
    prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
