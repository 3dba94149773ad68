"""Host syncs and the lagged stop check of greedy decoding on the CUDA-graph path (needs CUDA).

Prints every place where a greedy decode of a random-weight SmolLM2-shaped bf16 model waits for the
GPU (``torch.cuda.set_sync_debug_mode``; each site once, then how often each was hit), then ms per
token (128 tokens, batch 1) with the lagged stop check off and automatic (:mod:`decodekit.lag`)::

    python benchmarks/probe_syncs.py
"""

from __future__ import annotations

import sys
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_gpu as B  # noqa: E402

import decodekit  # noqa: E402
import decodekit.lag  # noqa: E402

SMOL = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True)


def main() -> None:
    B.SHAPES["smol"] = SMOL
    lm = decodekit.load(B.random_model("smol"), B.IdTokenizer())
    prompt = [list(range(100, 140))]
    never = lm.vocab_size - 1

    def gen(n: int = 128):
        return decodekit.generate(lm, prompt, "greedy", max_new_tokens=n, eos_token_id=never)

    gen(), gen()  # capture, Triton compile
    seen: dict[str, int] = {}

    def record(message, category, filename, lineno, file=None, line=None):
        site = "".join(traceback.format_stack(limit=12)[:-2])[-600:]
        if site not in seen:
            print("sync:", message, "\n", site, flush=True)
        seen[site] = seen.get(site, 0) + 1

    warnings.showwarning = record
    torch.cuda.set_sync_debug_mode(1)
    gen(16)
    torch.cuda.set_sync_debug_mode(0)
    print("times each sync site was hit in a 16-token decode:", list(seen.values()))
    for lag in (False, None):
        decodekit.lag.LAG = lag
        t = B.median_time(gen, 5)
        print(f"decodekit.lag.LAG={lag}: {1e3 * t / 128:.3f} ms/token", flush=True)


if __name__ == "__main__":
    main()
