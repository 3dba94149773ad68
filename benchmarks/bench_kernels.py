"""decodekit's attention kernel vs SDPA, one layer's call, in a CUDA graph (the way decode runs it).

Per shape (SmolLM2: 9 heads / 3 kv heads / 64; Llama-3.1-8B: 32 / 8 / 128) and case (tokens, cache
columns, filled columns): microseconds per call for SDPA with the fast path's 4-D bias (GQA folded
into the query length, as the fused step without kernels runs it) and for ``attend`` with each
column-block size, with a second combine kernel ("2") and with the last block combining ("L"), the
latter also with the combine loading ``COMBINE_ELEMENTS`` = 4096 partial outputs at a time ("L4k";
default 16384); then the fused step's rotary + cache write + attention as two kernels
(``rope_write``, then ``attend``) and as one (``rope_attend``), default blocks. Needs CUDA::

    python benchmarks/bench_kernels.py [--shapes llama-3.1-8b]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from decodekit.fast import kernels as K  # noqa: E402
from decodekit.fast.attention import attention_bias  # noqa: E402
from graph_timing import per_call_us  # noqa: E402

SHAPES = {"smollm2": (9, 3, 64), "llama-3.1-8b": (32, 8, 128)}
CASES = [(1, 1, 384, 64), (1, 1, 384, 168), (1, 5, 512, 270), (1, 8, 384, 168), (4, 1, 384, 168),
         (1, 1, 2048, 1900)]  # rows, T, C, filled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_kernels.py needs CUDA")
    torch.manual_seed(0)
    dev = torch.device("cuda")
    for name in args.shapes.split(","):
        h, kv, hd = SHAPES[name]
        for rows, T, C, filled in CASES:
            N = rows * T
            q = torch.randn(N, h, hd, device=dev, dtype=torch.bfloat16)
            keys = torch.randn(rows, kv, C, hd, device=dev, dtype=torch.bfloat16)
            values = torch.randn_like(keys)
            mask = torch.zeros(rows, C, dtype=torch.long, device=dev)
            mask[:, :filled + T] = 1
            write = torch.arange(filled, filled + T, device=dev)
            cols = torch.arange(C, device=dev)
            g = h // kv

            def sdpa():
                bias = attention_bias(mask, cols, write, torch.bfloat16)
                bias = bias.expand(rows, g, T, C).reshape(rows, 1, g * T, C)
                qq = q.view(rows, T, kv, g, hd).permute(0, 2, 3, 1, 4).reshape(rows, kv, g * T, hd)
                return F.scaled_dot_product_attention(qq, keys, values, attn_mask=bias)

            ref = sdpa().view(rows, kv, g, T, hd).permute(0, 3, 1, 2, 4).reshape(N, h, hd).float()
            row = [f"{name:13s} rows={rows} T={T} C={C} filled={filled}: sdpa {per_call_us(lambda i: sdpa(), 30):6.2f} us"]
            for block_c in (16, 32, 64):
                for last, combine in ((False, 16384), (True, 16384), (True, 4096)):
                    K.COMBINE_ELEMENTS = combine
                    fn = lambda b=block_c, l=last: K.attend(q, keys, values, mask, write, hd ** -0.5,  # noqa: E731
                                                            block_c=b, last_combines=l)
                    err = float((fn().float() - ref).norm() / ref.norm())
                    label = f"b{block_c}{'L' if last else '2'}{'4k' if combine == 4096 else ''}"
                    row.append(f"{label} {per_call_us(lambda i, f=fn: f(), 30):6.2f} ({err:.0e})")
            K.COMBINE_ELEMENTS = 16384
            # the fused step's decode / verify attention: rotary + cache write, then attend, vs one kernel
            qkv = torch.randn(N, (h + 2 * kv) * hd, device=dev, dtype=torch.bfloat16)
            cos, sin = torch.randn(N, hd, device=dev), torch.randn(N, hd, device=dev)
            two = lambda: K.attend(K.rope_write(qkv, cos, sin, write, keys, values, h, kv, hd),  # noqa: E731
                                   keys, values, mask, write, hd ** -0.5)
            one = lambda: K.rope_attend(qkv, cos, sin, write, keys, values, mask, h, kv, hd, hd ** -0.5)  # noqa: E731
            err = float((one().float() - two().float()).norm() / two().float().norm())
            row.append(f"| rope_write+attend {per_call_us(lambda i: two(), 30):6.2f}  "
                       f"rope_attend {per_call_us(lambda i: one(), 30):6.2f} ({err:.0e})")
            print("  ".join(row), flush=True)


if __name__ == "__main__":
    main()
