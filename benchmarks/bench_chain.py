"""A decode step's projections, layer after layer, as one CUDA graph: cuBLAS vs the GEMV kernels.

For a model shape (bf16, random weights, one row) the chain is, per layer: RMSNorm + q/k/v,
the output projection + residual (reading the first ``heads * head_dim`` q/k/v columns where
attention would write its output: attention itself is left out), RMSNorm + gate/up, SiLU-and-mul
+ down projection + residual -- every weight of the model's layers read once, as in a decode step.
Variants, each one graph replayed ``--replays`` times (CUDA events, the median):

* ``cublas``: :func:`decodekit.fast.kernels.rms_norm` / ``silu_mul`` and cuBLAS (``F.linear``,
  ``addmm_``), as the fused step runs where ``gemv_fits`` says no (or ``GEMV = False``);
* ``gemv``: :mod:`decodekit.fast.gemv`'s kernels (4 a layer) with their default launches, ``pdl=False``;
* ``gemv+pdl``: the same with programmatic dependent launch (each kernel's programs load their
  first weight tile while the kernel before finishes);
* with ``--blocks-json`` (``bench_gemv.py --sweep --best-json``): ``tuned`` and ``tuned+pdl``, the
  GEMV kernels with the sweep's best launch per projection;
* with ``--persistent``: the whole chain as one persistent kernel (``persistent_chain.py``, a
  feasibility probe: one program per SM, grid-wide barriers between the phases).

Printed: microseconds per layer, the GB/s this makes of the weights' bytes, the ratio to the
``cublas`` chain, and the largest difference of the final residual from ``gemv`` (``gemv+pdl`` must
be 0: the same arithmetic). Needs CUDA::

    python benchmarks/bench_chain.py --shape llama-3.1-8b
    python benchmarks/bench_chain.py --shape smollm2-135m --layers 30 --rows 8 --persistent 8.8.32.8:64:4
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_gemv import EPS, SHAPES  # noqa: E402
from decodekit.fast import gemv as G  # noqa: E402
from decodekit.fast import kernels as K  # noqa: E402
from decodekit.fast import launch as L  # noqa: E402


def chain(variant: str, x: torch.Tensor, layers: list[dict], hq: int, blocks: dict) -> None:
    """One pass over ``layers``, updating the residual ``x [N, d]`` in place (``blocks``: projection ->
    the GEMV kernels' launch keywords, for the ``tuned`` variants)."""
    pdl = variant.endswith("+pdl")
    b = blocks if variant.startswith("tuned") else {}
    for w in layers:
        if variant == "cublas":
            qkv = F.linear(K.rms_norm(x, w["g1"], EPS), w["qkv"])
            x.addmm_(qkv[:, :hq], w["o"].t())
            gu = F.linear(K.rms_norm(x, w["g2"], EPS), w["gate_up"])
            x.addmm_(K.silu_mul(gu), w["down"].t())
        else:
            qkv = G.norm_linear(x, w["g1"], EPS, w["qkv"], pdl=pdl, **b.get("qkv", {}))
            G.linear_add_(x, qkv[:, :hq], w["o"], pdl=pdl, **b.get("o", {}))
            gu = G.norm_linear(x, w["g2"], EPS, w["gate_up"], pdl=pdl, **b.get("gate_up", {}))
            G.act_linear_add_(x, gu, w["down"], pdl=pdl, **b.get("down", {}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="llama-3.1-8b", help=f"one of {', '.join(SHAPES)}")
    p.add_argument("--layers", type=int, default=32, help="layers in the chain")
    p.add_argument("--rows", type=int, default=1, help="tokens per call")
    p.add_argument("--replays", type=int, default=20, help="graph replays timed (the median is shown)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the variants, interleaved")
    p.add_argument("--blocks-json", help="bench_gemv.py --best-json output: adds the variants tuned and "
                   "tuned+pdl, the GEMV kernels with the best launch per projection for this shape and rows")
    p.add_argument("--persistent", default="", metavar="O.O.O.O:K:W,...",
                   help="adds the variants 'persistent O.O.O.O:K:W' (persistent_chain.py: the chain as one "
                        "persistent kernel, with O output features a block for q/k/v, o, gate/up, down, K-column "
                        "tiles, W warps), e.g. 8.8.32.8:64:4")
    args = p.parse_args()
    persistent = {}  # spec -> PersistentChain's launch keywords
    for spec in filter(None, args.persistent.split(",")):
        try:
            bo, bk, warps = spec.split(":")
            persistent[spec] = kw = dict(blocks=tuple(int(o) for o in bo.split(".")), block_k=int(bk),
                                         num_warps=int(warps))
            if len(kw["blocks"]) != 4:
                raise ValueError
        except ValueError:
            p.error(f"--persistent {spec!r}: want O.O.O.O:K:W, e.g. 8.8.32.8:64:4")
    if not torch.cuda.is_available():
        sys.exit("bench_chain.py needs CUDA")
    dev, bf = torch.device("cuda"), torch.bfloat16
    d, ff, h, kv, hd, _ = SHAPES[args.shape]
    torch.manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"PDL supported: {L.pdl_supported(dev)}")
    print(f"command: {shlex.join([sys.executable] + sys.argv)}")
    layers = [dict(g1=(1 + 0.1 * torch.randn(d, device=dev)).to(bf), g2=(1 + 0.1 * torch.randn(d, device=dev)).to(bf),
                   qkv=torch.randn((h + 2 * kv) * hd, d, device=dev, dtype=bf) * d ** -0.5,
                   o=torch.randn(d, h * hd, device=dev, dtype=bf) * (h * hd) ** -0.5,
                   gate_up=torch.randn(2 * ff, d, device=dev, dtype=bf) * d ** -0.5,
                   down=torch.randn(d, ff, device=dev, dtype=bf) * ff ** -0.5) for _ in range(args.layers)]
    weight_bytes = sum(t.numel() * t.element_size() for w in layers for k, t in w.items() if k not in ("g1", "g2"))
    x0 = torch.randn(args.rows, d, device=dev, dtype=bf)
    variants = ["cublas", "gemv", "gemv+pdl"]
    blocks = {}
    if args.blocks_json:
        for key, launch in json.loads(Path(args.blocks_json).read_text()).items():
            shape, proj, rows = key.split()
            if shape == args.shape and int(rows) == args.rows:
                blocks[proj] = launch
        print(f"tuned launches: {blocks}")
        variants += ["tuned", "tuned+pdl"]
    runs = {v: functools.partial(chain, v, layers=layers, hq=h * hd, blocks=blocks) for v in variants}
    for spec, kw in persistent.items():  # one launch for all the layers
        from persistent_chain import PersistentChain

        runs[f"persistent {spec}"] = PersistentChain(layers, EPS, h * hd, **kw)
    variants = list(runs)
    finals, graphs, xs = {}, {}, {}
    for v, run in runs.items():
        xs[v] = x0.clone()
        run(xs[v])  # warm-up and compile
        xs[v].copy_(x0)
        run(xs[v])
        finals[v] = xs[v].clone()
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            run(xs[v])
        graphs[v] = g
    times = {v: [] for v in variants}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(args.rounds):
        for v in variants:
            for _ in range(args.replays):
                xs[v].copy_(x0)
                start.record()
                graphs[v].replay()
                end.record()
                torch.cuda.synchronize()
                times[v].append(start.elapsed_time(end) * 1e3 / args.layers)
    print(f"{args.shape}: {args.layers} layers, {args.rows} row(s), {weight_bytes / 1e9:.2f} GB of weights")
    base = sorted(times["cublas"])[len(times["cublas"]) // 2]
    for v in variants:
        us = sorted(times[v])[len(times[v]) // 2]
        diff = float((finals[v].float() - finals["gemv"].float()).abs().max())
        print(f"{v:28s} {us:8.2f} us/layer  {weight_bytes / args.layers / us / 1e3:7.0f} GB/s  "
              f"ratio {us / base:5.3f}  max |x - gemv's| {diff:.3g}")


if __name__ == "__main__":
    main()
