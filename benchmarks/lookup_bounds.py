"""How fast prompt lookup could be on the summarisation prompt, whatever the drafts or the policy.

A draft-verify step that verifies ``k`` drafts costs ``c`` decode steps (``--cost k:c``: the GPU's
measured ratio of a prompt-lookup step to a greedy step) and yields ``1 + accepted`` tokens. Given
greedy's output for ``bench_gpu.py``'s summarisation prompt (the default model on the CPU, fp32),
this replays the decode offline -- greedy verification accepts a draft's tokens while they equal
greedy's -- and prints the speed-up over greedy (tokens / cost, in decode steps) of:

* ``always``: every step verifies decodekit's draft (:func:`~decodekit.strategies.speculative.prompt_lookup.lookup`:
  the most recent match of the longest suffix n-gram, ``--max-ngram`` down to 1);
* ``best match``: every step verifies the best continuation of *any* earlier match of the last
  token (an oracle for the n-gram rule: no lookup can draft better from the text);
* lagged policies the host could run without waiting for the GPU, verifying only while recent
  steps went well: it sees step ``t - lag``'s result when it enqueues step ``t`` (the fast path
  runs a step ahead: lag 2), and ``acc>=a`` verifies when that step's draft had ``a`` or more
  tokens right, ``ngram>=2`` when its match was at least a 2-gram; otherwise a 1-token decode step;
* ``oracle step``: each step verifies exactly when verifying pays (``1 + accepted > c``).

Nothing is timed; the costs come from the GPU (BENCHMARKS.md, "CUDA-graph fast path"). Usage::

    python benchmarks/lookup_bounds.py --cost 3:1.72,7:2.64
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_gpu as B  # noqa: E402  (the summarisation prompt)

import decodekit  # noqa: E402
from decodekit.api import encode_prompts  # noqa: E402
from decodekit.strategies.speculative.prompt_lookup import lookup  # noqa: E402


class Replay:
    """Greedy's tokens after the prompt, and what a draft at each position would get accepted."""

    def __init__(self, prompt: list[int], generated: list[int], max_ngram: int):
        self.seq, self.start, self.max_ngram = prompt + generated, len(prompt), max_ngram
        self.ids = torch.tensor([self.seq])  # [1, W]

    def accepted(self, pos: int, draft: list[int]) -> int:
        """How many of ``draft``'s tokens greedy emits from ``pos`` on."""
        n = 0
        while n < len(draft) and pos + n < len(self.seq) and draft[n] == self.seq[pos + n]:
            n += 1
        return n

    def lookup(self, pos: int, k: int) -> tuple[int, int]:
        """(accepted, matched n-gram) of decodekit's draft of ``k`` tokens at ``pos``."""
        d = lookup(self.ids, torch.tensor([0]), torch.tensor([pos]), k, self.max_ngram, 1)
        return self.accepted(pos, d.tokens[0, :int(d.count[0])].tolist()), int(d.bucket[0])

    def best_match(self, pos: int, k: int) -> int:
        """The most tokens any earlier occurrence of the last token's continuation gets accepted."""
        last = self.seq[pos - 1]
        return max((self.accepted(pos, self.seq[j + 1:min(j + 1 + k, pos)])
                    for j in range(pos - 1) if self.seq[j] == last), default=0)


def run(r: Replay, c: float, verify: Callable[[list[tuple[int, int]], tuple[int, int]], bool],
        acc: Callable[[int], tuple[int, int]]) -> tuple[float, int]:
    """(speed-up over greedy, steps) of a decode whose step verifies where ``verify(history, now)``
    says so (``history``: (accepted, n-gram) of every earlier step's draft, verified or not; ``now``:
    this step's, which only the oracle policy may look at)."""
    pos, cost, history = r.start, 0.0, []
    while pos < len(r.seq):
        now = acc(pos)
        if verify(history, now):
            cost += c
            pos += min(now[0] + 1, len(r.seq) - pos)
        else:
            cost += 1
            pos += 1
        history.append(now)
    return (len(r.seq) - r.start) / cost, len(history)


def lagged(test: Callable[[tuple[int, int]], bool], lag: int) -> Callable[[list, tuple], bool]:
    """Verify when the step ``lag`` back passed ``test`` (and at the start)."""
    return lambda h, now: len(h) < lag or test(h[-lag])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cost", default="3:1.72,7:2.64",
                    help="k:c pairs: a step verifying k drafts costs c decode steps (measured on the GPU)")
    ap.add_argument("--tokens", type=int, default=192, help="most new tokens")
    ap.add_argument("--max-ngram", type=int, default=3)
    ap.add_argument("--lag", type=int, default=2, help="steps between a step and the host seeing its result")
    args = ap.parse_args()
    try:
        costs = [(int(k), float(c)) for k, c in (spec.split(":") for spec in args.cost.split(","))]
    except ValueError:
        ap.error(f"--cost {args.cost!r}: want k:c pairs, e.g. 3:1.72,7:2.57")
    if any(k < 1 or c < 1 for k, c in costs):
        ap.error("--cost: drafts k >= 1, and a verify step costs at least one decode step (c >= 1)")
    lm = decodekit.load(device="cpu", dtype="float32")
    prompt = encode_prompts(lm, "Summarise the following article.\n\n" + B.ARTICLE)[0]
    greedy = decodekit.generate(lm, [prompt], max_new_tokens=args.tokens)
    r = Replay(list(prompt), list(greedy.token_ids[0]), args.max_ngram)
    print(f"default model (cpu, fp32), summarisation prompt of {len(prompt)} tokens, greedy {len(r.seq) - r.start} "
          f"tokens; speed-up over greedy = tokens / cost in decode steps")
    for k, c in costs:
        drafted = {pos: r.lookup(pos, k) for pos in range(r.start, len(r.seq))}
        best = {pos: (r.best_match(pos, k), 0) for pos in range(r.start, len(r.seq))}
        always, steps = run(r, c, lambda h, now: True, drafted.get)
        rows = {
            "always": always,
            "best match": run(r, c, lambda h, now: True, best.get)[0],
            f"lag {args.lag}, acc>=1": run(r, c, lagged(lambda s: s[0] >= 1, args.lag), drafted.get)[0],
            f"lag {args.lag}, acc>=2": run(r, c, lagged(lambda s: s[0] >= 2, args.lag), drafted.get)[0],
            f"lag {args.lag}, ngram>=2": run(r, c, lagged(lambda s: s[1] >= 2, args.lag), drafted.get)[0],
            "lag 1, acc>=1": run(r, c, lagged(lambda s: s[0] >= 1, 1), drafted.get)[0],
            "oracle step": run(r, c, lambda h, now, c=c: now[0] + 1 > c, drafted.get)[0],  # verify where it pays
        }
        tokens = (len(r.seq) - r.start) / steps
        print(f"k={k}, a verify step = {c:g} decode steps; always-verify tokens/step {tokens:.2f} (1.8x needs a "
              f"verify step <= {tokens / 1.8:.2f} decode steps): "
              + ", ".join(f"{name} {x:.2f}x" for name, x in rows.items()))


if __name__ == "__main__":
    main()
