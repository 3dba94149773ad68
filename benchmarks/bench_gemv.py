"""decodekit's GEMV kernels vs the kernels they replace, per layer shape, in a CUDA graph.

For the layer shapes of SmolLM2-135M, Llama-3.2-1B and Llama-3.1-8B (bf16) and N tokens a step:

* (a) ``rms_norm`` + ``F.linear`` vs ``norm_linear``, for the q/k/v and the gate/up projections;
* (b) ``silu_mul`` + ``addmm_`` vs ``act_linear_add_``, for the down projection;
* (c) ``addmm_`` vs ``linear_add_``, for the output projection (``GEMV_O_PROJ`` turns it on).

Each variant runs as a CUDA graph of ``--calls`` back-to-back calls replayed ``--replays`` times
(CUDA events, the median): microseconds per call and the ratio Triton / torch (below 1: the
kernel wins). The calls cycle over copies of the weight that together exceed the L2 cache, as the
layers of a real step do (``--hot``: one copy, L2-resident). ``fits`` is what ``gemv_fits`` says
today; each path's max abs error is against an fp32 reference with the same roundings.
``--sweep`` adds every (block_o, block_k) of the kernels, to tune their defaults and
``GEMV_MAX_ELEMENTS``. Needs CUDA::

    python benchmarks/bench_gemv.py
    python benchmarks/bench_gemv.py --shapes smollm2 --rows 1,4 --sweep
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from decodekit.fast import kernels as K  # noqa: E402

SHAPES = {  # hidden, intermediate, q heads, kv heads, head dim
    "smollm2-135m": (576, 1536, 9, 3, 64),
    "llama-3.2-1b": (2048, 8192, 32, 8, 64),
    "llama-3.1-8b": (4096, 14336, 32, 8, 128),
}
EPS = 1e-5
COLD_BYTES = 128 * 2**20  # weight copies per case: more than the H200's 50 MB of L2 together
SWEEP = [(o, k) for o in (16, 32, 64) for k in (64, 128, 256)]


def per_call_us(fn, calls: int, replays: int) -> float:
    """Median microseconds per call of ``fn(i)``, i = 0..calls-1, captured as one CUDA graph."""
    for i in range(2):
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


def ops(d: int, ff: int, h: int, kv: int, hd: int) -> list[tuple[str, str, int, int]]:
    """(projection, kernel, out_features, in_features) of one layer."""
    return [("qkv", "norm_linear", (h + 2 * kv) * hd, d), ("gate_up", "norm_linear", 2 * ff, d),
            ("down", "act_linear_add_", d, ff), ("o", "linear_add_", d, h * hd)]


def case(kernel: str, N: int, out: int, inp: int, copies: int, dev: torch.device):
    """(torch path, Triton path taking block sizes, fp32 reference, outputs of one call of each).

    Each path takes the call index ``i`` and uses weight copy ``i % copies``; in-place paths update
    their own residual stream (it grows over the calls; timing does not mind)."""
    bf = torch.bfloat16
    ws = [torch.randn(out, inp, device=dev, dtype=bf) * inp ** -0.5 for _ in range(copies)]  # [out, in] each
    w = ws[0]
    if kernel == "norm_linear":
        x = torch.randn(N, inp, device=dev, dtype=bf)  # [N, d]
        g = (1 + 0.1 * torch.randn(inp, device=dev)).to(bf)  # [d]
        xf = x.float()
        normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS) * g.float()).to(bf).float()
        ref = normed @ w.float().T  # [N, out]
        base = lambda i: F.linear(K.rms_norm(x, g, EPS), ws[i % copies])  # noqa: E731
        tri = lambda i, **b: K.norm_linear(x, g, EPS, ws[i % copies], **b)  # noqa: E731
        return base, tri, ref, base(0), lambda **b: tri(0, **b)
    x = torch.randn(N, out, device=dev, dtype=bf)  # [N, d] residual stream
    if kernel == "act_linear_add_":
        a = torch.randn(N, 2 * inp, device=dev, dtype=bf)  # [N, 2 * ff]: gate, up
        act = (F.silu(a[:, :inp].float()) * a[:, inp:].float()).to(bf).float()
        ref = x.float() + act @ w.float().T
        base = lambda i, x=x: x.addmm_(K.silu_mul(a), ws[i % copies].t())  # noqa: E731
        tri = lambda i, x=x, **b: K.act_linear_add_(x, a, ws[i % copies], **b)  # noqa: E731
    else:
        a = torch.randn(N, inp, device=dev, dtype=bf)  # [N, h * hd]: attention output
        ref = x.float() + a.float() @ w.float().T
        base = lambda i, x=x: x.addmm_(a, ws[i % copies].t())  # noqa: E731
        tri = lambda i, x=x, **b: K.linear_add_(x, a, ws[i % copies], **b)  # noqa: E731
    x0 = x.clone()  # one call of each on a copy of the residual, for the errors
    return base, tri, ref, base(0, x0.clone()), lambda **b: tri(0, x0.clone(), **b)


def err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref).abs().max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    p.add_argument("--rows", default="1,4,9", help="tokens per call (rows x step width), comma-separated")
    p.add_argument("--calls", type=int, default=100, help="back-to-back calls in one graph")
    p.add_argument("--replays", type=int, default=10, help="graph replays timed (the median is shown)")
    p.add_argument("--hot", action="store_true", help="one weight copy: reads from L2, not HBM")
    p.add_argument("--sweep", action="store_true", help="also time every (block_o, block_k) of the kernels")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gemv.py needs CUDA")
    import triton

    dev = torch.device("cuda")
    torch.manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    print(f"command: {shlex.join([sys.executable] + sys.argv)}")
    print(f"GEMV_MAX_ROWS={K.GEMV_MAX_ROWS} GEMV_MAX_ELEMENTS={K.GEMV_MAX_ELEMENTS} GEMV_O_PROJ={K.GEMV_O_PROJ}; "
          f"{args.calls} calls a graph, median of {args.replays} replays, {'hot' if args.hot else 'cold'} L2")
    print(f"{'shape':13s} {'proj':7s} {'kernel':15s} {'N':>2s} {'out x in':>12s} {'fits':>4s} {'blocks':>7s} "
          f"{'torch us':>8s} {'triton us':>9s} {'ratio':>6s} {'err torch':>9s} {'err triton':>10s}")
    for name in args.shapes.split(","):
        for proj, kernel, out, inp in ops(*SHAPES[name]):
            copies = 1 if args.hot else max(1, min(args.calls, math.ceil(COLD_BYTES / (2 * out * inp))))
            for N in (int(n) for n in args.rows.split(",")):
                base, tri, ref, base_out, tri_out = case(kernel, N, out, inp, copies, dev)
                t_base = per_call_us(base, args.calls, args.replays)
                e_base = err(base_out, ref)
                for blocks in [{}] + ([dict(block_o=o, block_k=k) for o, k in SWEEP] if args.sweep else []):
                    t_tri = per_call_us(lambda i: tri(i, **blocks), args.calls, args.replays)
                    tag = f"{blocks['block_o']}x{blocks['block_k']}" if blocks else "default"
                    print(f"{name:13s} {proj:7s} {kernel:15s} {N:2d} {f'{out}x{inp}':>12s} "
                          f"{'yes' if K.gemv_fits(N, out, inp) else 'no':>4s} {tag:>7s} {t_base:8.2f} {t_tri:9.2f} "
                          f"{t_tri / t_base:6.2f} {e_base:9.2e} {err(tri_out(**blocks), ref):10.2e}", flush=True)
                del base, tri
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
