"""Where a prompt-lookup decode's time goes on the CUDA-graph path, next to greedy (needs CUDA).

For the summarisation prompt of ``bench_gpu.py`` on the default model (bf16; a random-weight
SmolLM2-shaped model with a repetitive prompt when the GGUF cannot be loaded), under each of
``--variants`` (settings of the fast path, each on top of the previous ones), prints per decode:
wall time, prefill, loop steps, tokens per step, whether prompt lookup's tokens equal greedy's; then,
per graph, the GPU time of one replay (CUDA events, median of 50) and the kernels it launches
(torch.profiler): the one-token forward, the verify forward of ``k + 1`` tokens, greedy's step tail
and prompt lookup's step tail.

Usage::

    DECODEKIT_DEFAULT_GGUF=<the GGUF> python benchmarks/profile_lookup.py --drafts 4,8
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_gpu as B  # noqa: E402

import decodekit  # noqa: E402
from decodekit.api import encode_prompts  # noqa: E402
from decodekit.fast import FastPath  # noqa: E402
from decodekit.fast import gemv as G  # noqa: E402
from decodekit.fast import step_graph as SG  # noqa: E402
from decodekit.strategies.speculative import graph_plan as GP  # noqa: E402

# settings compared, each applied on top of the previous ones (module, name, value)
VARIANTS = {
    "torch-tail": [(GP, "LOOKUP_STEP", False), (G, "GEMV_FIT_ROWS", 4), (G, "GEMV_HEAD", False)],  # as before
    "kernel-tail": [(GP, "LOOKUP_STEP", True)],
    "gemv-verify-8": [(G, "GEMV_FIT_ROWS", 8)],
    "gemv-head": [(G, "GEMV_HEAD", True)],
}
TAILS: dict[str, tuple] = {}  # the last captured step tail of each decode kind, its forward's inputs, its state


def _keep_tails(kind: list[str]) -> None:
    capture = SG.StepGraph._capture

    def keep(self, state, logits, inputs):
        g = capture(self, state, logits, inputs)
        if g is not None:
            TAILS[kind[0]] = (g, inputs, state)  # the state too: the graph writes into its tensors
        return g

    SG.StepGraph._capture = keep


def replay_us(graph: torch.cuda.CUDAGraph, before, n: int = 50) -> float:
    """Median GPU microseconds of one replay (``before()`` runs before each, untimed)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(n):
        before()
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def kernels_of(graph: torch.cuda.CUDAGraph, before, by_name: dict | None = None) -> tuple[int, float]:
    """(kernels launched, their summed GPU microseconds) in one replay, by torch.profiler; with
    ``by_name``, also each kernel name's (launches, microseconds) there."""
    from torch.profiler import ProfilerActivity, profile

    before()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and "Memcpy" not in e.name
          and "Memset" not in e.name]
    if by_name is not None:
        for e in ev:
            n, us = by_name.get(e.name, (0, 0.0))
            by_name[e.name] = (n + 1, us + e.device_time)
    return len(ev), sum(e.device_time for e in ev)


@torch.inference_mode()  # the slab's buffers are inference tensors
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drafts", default="4,8", help="fixed draft widths to profile")
    ap.add_argument("--tokens", type=int, default=192)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--kernels", type=int, default=0, metavar="N",
                    help="also list each forward graph's N costliest kernels (by name: time, launches)")
    args = ap.parse_args()
    kind = ["greedy"]
    _keep_tails(kind)
    try:
        lm = B.load_real(torch.bfloat16)
        prompt = encode_prompts(lm, "Summarise the following article.\n\n" + B.ARTICLE)[0]
        print("SmolLM2-135M-Instruct (bf16), summarisation prompt", flush=True)
    except Exception as e:  # noqa: BLE001 - no GGUF here: the shape with a repetitive prompt
        print(f"default model not loaded ({e!r}): random SmolLM2 shape, repetitive prompt", flush=True)
        lm = decodekit.load(B.random_model("smollm2-135m-shape"), B.IdTokenizer())
        prompt = list(range(100, 150)) * 4
    print(f"prompt {len(prompt)} tokens", flush=True)

    def run(strategy="greedy", **kw):
        return decodekit.generate(lm, [prompt], strategy, max_new_tokens=args.tokens, **kw)

    base = None
    cases = [("greedy", "greedy", {})] + [
        (f"lookup {k}", "prompt_lookup", dict(draft_policy="schedule", draft_tokens=k, adaptive=False))
        for k in map(int, args.drafts.split(","))]
    for variant in args.variants.split(","):
        flags = VARIANTS[variant]
        for mod, name, value in flags:
            setattr(mod, name, value)
        lm.fast = FastPath(lm)  # graphs captured anew under these settings
        ref = run()
        base = base or ref
        print(f"-- {variant}: {', '.join(f'{n}={v}' for _, n, v in flags)}; greedy == first variant's greedy: "
              f"{ref.token_ids == base.token_ids}", flush=True)
        for name, strategy, kw in cases:
            kind[0] = f"{variant} {name}"
            run(strategy, **kw)  # warm: graphs captured, kernels compiled
            wall = B.median_time(lambda: run(strategy, **kw), 3)
            steps0 = lm.fast.graph_steps
            gen = run(strategy, **kw)
            n = len(gen.token_ids[0])
            steps = gen.stats.forward_passes - 1
            print(f"{name}: {1e3 * wall:.1f} ms for {n} tokens ({1e3 * wall / n:.3f} ms/token), prefill "
                  f"{1e3 * gen.stats.prefill_time_s:.1f} ms, {steps} steps ({n / max(steps, 1):.2f} tokens/step), "
                  f"{(1e3 * wall - 1e3 * gen.stats.prefill_time_s) / max(steps, 1):.3f} ms/step after prefill, "
                  f"{lm.fast.graph_steps - steps0} from graphs, == greedy: "
                  f"{gen.token_ids == ref.token_ids}", flush=True)
        graphs = {}
        for slab in lm.fast.slabs.get(1, []):
            def at_start(inputs, slab=slab):  # a tail advances its forward's columns: put them back each time
                return lambda: inputs.write.copy_(slab.cols[len(prompt):len(prompt) + inputs.write.shape[0]])

            for (T, last), g in sorted(slab.graphs.items()):
                if not last:
                    graphs.setdefault(f"forward T={T}", (g.graph, at_start(slab._static(T))))
        for name, (g, before) in graphs.items():
            us = replay_us(g, before)
            by_name: dict = {}
            count, busy = kernels_of(g, before, by_name)
            print(f"  {name}: {us:.1f} us a replay, {count} kernels, {busy:.1f} us of kernel time", flush=True)
            if args.kernels:
                for kernel, (n, kus) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:args.kernels]:
                    print(f"      {kus:8.1f} us {n:4d}x  {kernel[:90]}", flush=True)
        for name, (g, inputs, _) in TAILS.items():
            if name.startswith(variant + " "):
                before = (lambda inputs=inputs: inputs.write.copy_(
                    torch.arange(len(prompt), len(prompt) + inputs.write.shape[0], device=inputs.write.device)))
                us = replay_us(g, before)
                count, busy = kernels_of(g, before)
                print(f"  tail {name}: {us:.1f} us a replay, {count} kernels, {busy:.1f} us of kernel time",
                      flush=True)


if __name__ == "__main__":
    main()
