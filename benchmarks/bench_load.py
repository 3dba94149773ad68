"""Loading the default model (GGUF): transformers' own load vs decodekit's, side by side, on the CPU.

transformers reads a GGUF file's config, tokenizer and weights in three passes, each parsing the
file's metadata again. decodekit's load (:func:`decodekit.models.load_model`) shares one parse
(:mod:`decodekit.gguf_once`). Both return the same dense fp32 model and tokenizer; this script
checks that as it goes. The rounds alternate the two, after one warm-up load of each (imports,
the file in the OS cache). Prints each load's seconds, the medians and their ratio.

Usage::

    python benchmarks/bench_load.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from decodekit.models import _dense, default_model_path, load_model  # noqa: E402


def transformers_load(path: Path):
    """transformers' own load of the GGUF file: config, tokenizer, dense fp32 weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kw = dict(gguf_file=path.name, local_files_only=True)
    config = AutoConfig.from_pretrained(path.parent, **kw)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kw)
    model = AutoModelForCausalLM.from_pretrained(path.parent, config=config, dtype=torch.float32, **kw, **_dense(kw))
    return model, tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="timed loads of each, alternating")
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = default_model_path()
    print(f"{path.name}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    cases = {"transformers": lambda: transformers_load(path), "decodekit": lambda: load_model(path)}
    times: dict[str, list[float]] = {name: [] for name in cases}
    ref = None
    for r in range(args.rounds + 1):  # round 0: the warm-up
        for name, fn in cases.items():
            t0 = time.perf_counter()
            model, _ = fn()
            dt = time.perf_counter() - t0
            weights = model.state_dict()
            if ref is None:
                ref = weights
            elif weights.keys() != ref.keys() or not all(torch.equal(weights[k], ref[k]) for k in ref):
                sys.exit(f"{name}'s weights differ from transformers' own load")
            print(f"round {r}{' (warm-up)' if r == 0 else ''}: {name} {dt:.2f} s", flush=True)
            if r:
                times[name].append(dt)
            del model, weights
    t_hf, t_dk = (statistics.median(times[n]) for n in ("transformers", "decodekit"))
    print(f"median of {args.rounds}: transformers {t_hf:.2f} s, decodekit {t_dk:.2f} s: {t_hf / t_dk:.2f}x faster, "
          f"same weights")


if __name__ == "__main__":
    main()
