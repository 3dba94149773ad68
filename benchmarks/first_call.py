"""Time to the first generated tokens on the CUDA-graph path, from a cold start (needs CUDA).

A random-weight SmolLM2-shaped bf16 model; the first ``generate`` of 96 tokens pays prefill, graph
capture and (with an empty Triton cache) compiling decodekit's Triton kernels. ``decodekit.load``
starts Triton's per-process set-up on a background thread (:func:`decodekit.fast.launch.warm_up`);
the load's own time is printed too, so load + first call is the whole wait (``--no-warm-up``:
the first call does Triton's set-up itself). ``decodekit.load(model_object)`` starts it only once
the model is built. Point
``TRITON_CACHE_DIR`` at an empty folder to measure a machine's very first call::

    TRITON_CACHE_DIR=$(mktemp -d) python benchmarks/first_call.py
    TRITON_CACHE_DIR=$(mktemp -d) python benchmarks/first_call.py --no-precompile   # one compile at a time

``--gguf`` measures what a user of the default model waits for instead: ``decodekit.load(<GGUF>,
device="cuda", dtype="bfloat16")``, which compiles the kernels from the config while the weights
load (:mod:`decodekit.fast.ahead`; ``--no-ahead`` turns that off), then the first calls::

    TRITON_CACHE_DIR=$(mktemp -d) DECODEKIT_DEFAULT_GGUF=<the GGUF> python benchmarks/first_call.py --gguf
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
from probe_syncs import SMOL  # noqa: E402

import decodekit  # noqa: E402
from decodekit.fast import launch as L  # noqa: E402
from decodekit.models import default_model_path  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-precompile", action="store_true",
                    help="compile each Triton kernel on its first launch (decodekit.fast.precompile.PRECOMPILE=False)")
    ap.add_argument("--no-warm-up", action="store_true",
                    help="no Triton warm-up thread during the load (the first call pays Triton's set-up)")
    ap.add_argument("--gguf", nargs="?", const="default", metavar="PATH",
                    help="load this GGUF file (default: the default model's) with decodekit.load, not a random model")
    ap.add_argument("--no-ahead", action="store_true",
                    help="with --gguf: no kernels compiled from the config during the load (decodekit.fast.ahead)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="cProfile the first call and print its N most expensive functions (cumulative)")
    args = ap.parse_args()
    if args.no_precompile:
        import decodekit.fast.precompile as P

        P.PRECOMPILE = False
    if args.no_ahead:
        import decodekit.fast.ahead as A

        A.AHEAD = False
    B.SHAPES["smol"] = SMOL
    torch.cuda.init()
    t0 = time.perf_counter()
    if args.gguf:
        path = default_model_path() if args.gguf == "default" else args.gguf
        lm = decodekit.load(path, device="cuda", dtype="bfloat16")
        load_s = time.perf_counter() - t0
        import decodekit.fast.ahead as A

        print(f"load ({path}, bf16, compile ahead {'off' if args.no_ahead else 'on'}): {load_s:.2f} s; "
              f"compile ahead {', '.join(f'{k} {v:.2f}' for k, v in A.last_run.items()) or '-'}"
              f"{f', error {A.last_error!r}' if A.last_error else ''}", flush=True)
    else:
        if not args.no_warm_up:  # what decodekit.load(<model file>, device="cuda") does before reading weights
            L.warm_up()
        lm = decodekit.load(B.random_model("smol"), B.IdTokenizer())
        load_s = time.perf_counter() - t0
        print(f"load (random weights, built on the GPU): {load_s:.2f} s", flush=True)
    prompt = [list(range(100, 140))]
    for attempt in ("first call", "second call"):
        before = compiled()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        prof = cProfile.Profile() if args.profile and attempt == "first call" else None
        if prof is not None:
            prof.enable()
        gen = decodekit.generate(lm, prompt, "greedy", max_new_tokens=96, eos_token_id=lm.vocab_size - 1)
        torch.cuda.synchronize()
        if prof is not None:
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(args.profile)
        call_s = time.perf_counter() - t0
        print(f"{attempt}: {call_s:.2f} s (prefill {gen.stats.prefill_time_s:.2f} s, "
              f"graph capture so far {lm.fast.capture_s:.2f} s, precompile {lm.fast.precompile_s:.2f} s, "
              f"kernels={lm.fast.kernels}, fused={lm.fast.fused})", flush=True)
        if attempt == "first call":
            new = {k: n - before.get(k, 0) for k, n in compiled().items() if n > before.get(k, 0)}
            print(f"load + first call: {load_s + call_s:.2f} s; kernels compiled during the call: "
                  f"{', '.join(f'{k} x{n}' for k, n in new.items()) or 'none'}", flush=True)


def compiled() -> dict[str, int]:
    """Specialisations compiled in this process so far, per decodekit kernel."""
    from decodekit.fast import gemv, kernels, lookup_step, pick, row_copy, token_step

    out = {}
    for mod in (kernels, gemv, pick, token_step, lookup_step, row_copy, L):
        for name, fn in vars(mod).items():
            caches = getattr(fn, "device_caches", None)
            if name.startswith("_") and name.endswith("_kernel") and caches is not None:
                out[name] = sum(len(c[0]) for c in caches.values())
    return out


if __name__ == "__main__":
    main()
