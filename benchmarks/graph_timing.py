"""Microseconds per call of a GPU function, timed as a CUDA graph of back-to-back calls.

Shared by the kernel benchmarks (``bench_kernels.py``, ``bench_gemv.py``): inside a graph each
launch costs what it costs in decodekit's captured steps, without Python in between.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def per_call_us(fn: Callable[[int], object], calls: int, replays: int = 10, warmup: int = 2) -> float:
    """Median microseconds per call of ``fn(i)``, i = 0..calls-1, captured as one CUDA graph."""
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            fn(i)
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(replays):
        start.record()
        g.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return sorted(times)[len(times) // 2]
