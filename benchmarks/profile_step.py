"""Where a decode step's GPU time goes: kernels of one fused forward, by name, and the host's share.

For random-weight bf16 models of real shapes (``smol`` = SmolLM2-135M's shape, ``llama-3.1-8b``):

* the kernels of one eager fused decode forward (batch 1, one token; and a verify of 8 tokens),
  grouped by name: count, total and mean microseconds, and for matrix products the bandwidth they
  reach (weight bytes / time);
* one graph replay, and decodekit's whole greedy step (replay + token choice + bookkeeping + stop
  check), so the host's share per token is the difference.

Needs CUDA::

    python benchmarks/profile_step.py smol,llama-3.1-8b
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_gpu as B  # noqa: E402

import decodekit  # noqa: E402
from decodekit.fast import FastPath  # noqa: E402

B.SHAPES["smol"] = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                        num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True)


def kernel_table(fn, top: int = 25) -> None:
    """Run ``fn`` once under the profiler; print its CUDA kernels grouped by name."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    groups: dict[str, list[float]] = defaultdict(list)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            groups[e.name].append(getattr(e, "device_time", 0.0) or getattr(e, "cuda_time", 0.0))
    total = sum(sum(v) for v in groups.values())
    count = sum(len(v) for v in groups.values())
    print(f"    {count} kernels, {total / 1e3:.3f} ms of kernel time")
    for name, times in sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:top]:
        print(f"    {len(times):5d} x {sum(times) / len(times):8.2f} us = {sum(times) / 1e3:7.3f} ms  {name[:110]}")


def main() -> None:
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    for shape in sys.argv[1].split(","):
        lm = decodekit.load(B.random_model(shape), B.IdTokenizer())
        bw = 4.25e12
        floor = 1e3 * B.param_bytes(lm.model) / bw
        print(f"== {shape}: floor {floor:.3f} ms/token, fused={lm.fast.fused if lm.fast else None}", flush=True)
        g = torch.Generator().manual_seed(0)
        prompt = [torch.randint(10, 30000, (40,), generator=g).tolist()]
        never = lm.vocab_size - 1
        n = 128
        gen = lambda: decodekit.generate(lm, prompt, "greedy", max_new_tokens=n, eos_token_id=never)  # noqa: E731
        tokens = {}
        for kernels in (False, True):
            lm.fast = FastPath(lm, kernels=kernels)
            t = B.median_time(gen, 5)
            tokens[kernels] = gen().token_ids
            slab = next(s for v in lm.fast.slabs.values() for s in v if (1, False) in s.graphs)
            graph = slab.graphs[(1, False)].graph
            replay = B.median_time(lambda: [graph.replay() for _ in range(50)], 5) / 50
            print(f"  kernels={kernels}: greedy {1e3 * t / n:.3f} ms/token; replay {1e3 * replay:.3f} ms; "
                  f"host + bookkeeping {1e3 * (t / n - replay):.3f} ms/token", flush=True)
        same = sum(a == b for a, b in zip(tokens[False][0], tokens[True][0]))
        print(f"  greedy tokens equal with and without kernels: {same}/{n} (bf16 rounding differs)")
        for T in (1, 8):
            inp = slab._static(T)

            @torch.inference_mode()
            def forward(inp=inp):
                slab._forward(inp.ids, inp.write, inp.view, False, False)

            forward()
            print(f"  one eager fused forward (kernels), T={T}:")
            kernel_table(forward)
        lm = slab = graph = None  # freed before the next shape's model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
