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
``--sweep`` adds every (block_o, block_k, num_warps, split_k) of ``--block-o``, ``--block-k``,
``--warps`` and ``--split`` (those that make a distinct launch: block_k up to the reduction's power
of two, split_k up to its block count, rows x block_o x block_k up to ``--max-tile``) and prints the
best per shape at the end, to tune the defaults (``kernels._gemv_launch``) and ``GEMV_MAX_ELEMENTS``;
a launch that fails to compile or run is named and skipped.
``--late`` and ``--stages`` sweep the late sum and the pipeline depth; ``--best-json`` writes the best
launches for ``bench_chain.py --blocks-json``. ``--dry-run`` lists the swept launches without a GPU. Needs CUDA::

    python benchmarks/bench_gemv.py
    python benchmarks/bench_gemv.py --shapes smollm2-135m --rows 1,4 --sweep
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from decodekit.fast import gemv as G  # noqa: E402  (the GEMV kernels)
from decodekit.fast import kernels as K  # noqa: E402  (RMSNorm, SiLU-and-mul)
from graph_timing import per_call_us  # noqa: E402

SHAPES = {  # hidden, intermediate, q heads, kv heads, head dim, vocabulary
    "smollm2-135m": (576, 1536, 9, 3, 64, 49152),
    "llama-3.2-1b": (2048, 8192, 32, 8, 64, 128256),
    "llama-3.1-8b": (4096, 14336, 32, 8, 128, 128256),
}
EPS = 1e-5
COLD_BYTES = 128 * 2**20  # weight copies per case: more than the H200's 50 MB of L2 together


def ops(d: int, ff: int, h: int, kv: int, hd: int, vocab: int) -> list[tuple[str, str, int, int]]:
    """(projection, kernel, out_features, in_features) of one layer, then the final norm + output head."""
    return [("qkv", "norm_linear", (h + 2 * kv) * hd, d), ("gate_up", "norm_linear", 2 * ff, d),
            ("down", "act_linear_add_", d, ff), ("o", "linear_add_", d, h * hd), ("lm_head", "norm_linear", vocab, d)]


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
        tri = lambda i, **b: G.norm_linear(x, g, EPS, ws[i % copies], **b)  # noqa: E731
        return base, tri, ref, base(0), lambda **b: tri(0, **b)
    x = torch.randn(N, out, device=dev, dtype=bf)  # [N, d] residual stream
    if kernel == "act_linear_add_":
        a = torch.randn(N, 2 * inp, device=dev, dtype=bf)  # [N, 2 * ff]: gate, up
        act = (F.silu(a[:, :inp].float()) * a[:, inp:].float()).to(bf).float()
        ref = x.float() + act @ w.float().T
        base = lambda i, x=x: x.addmm_(K.silu_mul(a), ws[i % copies].t())  # noqa: E731
        tri = lambda i, x=x, **b: G.act_linear_add_(x, a, ws[i % copies], **b)  # noqa: E731
    else:
        a = torch.randn(N, inp, device=dev, dtype=bf)  # [N, h * hd]: attention output
        ref = x.float() + a.float() @ w.float().T
        base = lambda i, x=x: x.addmm_(a, ws[i % copies].t())  # noqa: E731
        tri = lambda i, x=x, **b: G.linear_add_(x, a, ws[i % copies], **b)  # noqa: E731
    x0 = x.clone()  # one call of each on a copy of the residual, for the errors
    return base, tri, ref, base(0, x0.clone()), lambda **b: tri(0, x0.clone(), **b)


def err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref).abs().max())


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def sweep(args: argparse.Namespace, N: int, inp: int) -> list[dict]:
    """The distinct launches of the sweep for ``N`` rows times a reduction of ``inp``: block_k up to
    ``inp``'s power of two ("full" is that), split_k up to the number of blocks, no tile past
    ``--max-tile`` products (register spills)."""
    full = 1 << (inp - 1).bit_length()
    bn = 1 << (N - 1).bit_length()
    ks = sorted({full if k == "full" else int(k) for k in args.block_k.split(",")})
    return [dict(block_o=o, block_k=k, num_warps=w, split_k=sk, late=bool(late), num_stages=st)
            for o in ints(args.block_o) for k in ks if k <= full and bn * o * k <= args.max_tile
            for sk in ints(args.split) if sk == 1 or sk <= math.ceil(inp / k)
            for w in ints(args.warps)
            for late in ints(args.late) if not late or k < inp  # late sums matter with several tiles
            for st in ints(args.stages)]


def tag(blocks: dict) -> str:
    """``block_o x block_k w num_warps s split_k``, or "default"."""
    if not blocks:
        return "default"
    return (f"{blocks['block_o']}x{blocks['block_k']}w{blocks['num_warps']}s{blocks['split_k']}"
            f"{'L' if blocks.get('late') else ''}n{blocks.get('num_stages')}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    p.add_argument("--proj", default="qkv,gate_up,down,o,lm_head", help="projections, comma-separated")
    p.add_argument("--rows", default="1,4,9", help="tokens per call (rows x step width), comma-separated")
    p.add_argument("--calls", type=int, default=100, help="back-to-back calls in one graph")
    p.add_argument("--replays", type=int, default=10, help="graph replays timed (the median is shown)")
    p.add_argument("--hot", action="store_true", help="one weight copy: reads from L2, not HBM")
    p.add_argument("--sweep", action="store_true", help="also time the launches below, print the best per shape")
    p.add_argument("--block-o", default="4,8,16,32", help="sweep: output features a program")
    p.add_argument("--block-k", default="64,128,256,512,full", help="sweep: reduction block (full: all of it)")
    p.add_argument("--warps", default="1,2,4,8", help="sweep: num_warps")
    p.add_argument("--split", default="1,2,4", help="sweep: split_k (programs along the reduction)")
    p.add_argument("--late", default="0", help="sweep: 0 (sum each tile), 1 (sum once at the end), or 0,1")
    p.add_argument("--stages", default="3", help="sweep: num_stages (the loop's software pipeline depth)")
    p.add_argument("--max-tile", type=int, default=65536, help="sweep: at most rows x block_o x block_k")
    p.add_argument("--best-json", help="sweep: write the best launch per (shape, projection, rows) here, for "
                   "bench_chain.py --blocks-json")
    p.add_argument("--dry-run", action="store_true", help="list the swept launches per case; no GPU")
    args = p.parse_args()
    cases = [(name, proj, kernel, out, inp, N) for name in args.shapes.split(",")
             for proj, kernel, out, inp in ops(*SHAPES[name]) if proj in args.proj.split(",")
             for N in ints(args.rows)]
    if args.dry_run:
        for name, proj, kernel, out, inp, N in cases:
            launches = sweep(args, N, inp) if args.sweep else []
            print(f"{name:13s} {proj:7s} {kernel:15s} N={N:2d} {out}x{inp}: {len(launches)} swept launches "
                  f"{' '.join(tag(b) for b in launches[:4])}{' ...' if len(launches) > 4 else ''}")
        return
    if not torch.cuda.is_available():
        sys.exit("bench_gemv.py needs CUDA")
    import triton

    dev = torch.device("cuda")
    torch.manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    print(f"command: {shlex.join([sys.executable] + sys.argv)}")
    print(f"GEMV_MAX_ROWS={G.GEMV_MAX_ROWS} GEMV_MAX_ELEMENTS={G.GEMV_MAX_ELEMENTS} GEMV_O_PROJ={G.GEMV_O_PROJ}; "
          f"{args.calls} calls a graph, median of {args.replays} replays, {'hot' if args.hot else 'cold'} L2")
    print(f"{'shape':13s} {'proj':7s} {'kernel':15s} {'N':>2s} {'out x in':>12s} {'fits':>4s} {'blocks':>14s} "
          f"{'torch us':>8s} {'triton us':>9s} {'ratio':>6s} {'err torch':>9s} {'err triton':>10s}")
    best = []  # (case, torch us, default us, best us, best tag)
    best_blocks = {}  # "shape proj rows" -> the best launch's keyword arguments
    for name, proj, kernel, out, inp, N in cases:
        copies = 1 if args.hot else max(1, min(args.calls, math.ceil(COLD_BYTES / (2 * out * inp))))
        base, tri, ref, base_out, tri_out = case(kernel, N, out, inp, copies, dev)
        t_base = per_call_us(base, args.calls, args.replays)
        e_base = err(base_out, ref)
        times, launches = {}, {}
        for blocks in [{}] + (sweep(args, N, inp) if args.sweep else []):
            try:
                t_tri = per_call_us(lambda i: tri(i, **blocks), args.calls, args.replays)
            except Exception as e:  # noqa: BLE001 - a launch that does not compile or run: say so, go on
                print(f"{name:13s} {proj:7s} {kernel:15s} {N:2d} {tag(blocks):>14s} failed: {e!r}"[:300], flush=True)
                continue
            launches[tag(blocks)] = blocks
            times[tag(blocks)] = t_tri
            print(f"{name:13s} {proj:7s} {kernel:15s} {N:2d} {f'{out}x{inp}':>12s} "
                  f"{'yes' if G.gemv_fits(N, out, inp) else 'no':>4s} {tag(blocks):>14s} {t_base:8.2f} "
                  f"{t_tri:9.2f} {t_tri / t_base:6.2f} {e_base:9.2e} {err(tri_out(**blocks), ref):10.2e}", flush=True)
        top = min(times, key=times.get)
        best_blocks[f"{name} {proj} {N}"] = launches[top]
        t_default = times.get("default", math.nan)  # nan: the default launch failed
        best.append((f"{name} {proj} {kernel} N={N} {out}x{inp}", t_base, t_default, times[top], top))
        base = tri = None  # this case's weights, freed before the next
        torch.cuda.empty_cache()
    if args.sweep:
        print("\nbest per shape (us per call; ratio = best / torch):")
        for what, t_base, t_def, t_best, top in best:
            print(f"{what:55s} torch {t_base:6.2f} default {t_def:6.2f} best {t_best:6.2f} {top:>14s} "
                  f"ratio {t_best / t_base:5.2f}")
        if args.best_json:
            Path(args.best_json).write_text(json.dumps(best_blocks, indent=1))


if __name__ == "__main__":
    main()
