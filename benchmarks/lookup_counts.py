"""How often prompt lookup finds a draft, and how many of its drafts are accepted, per step.

For ``bench_gpu.py``'s summarisation prompt on the default model: each step's draft count (0 = the
n-gram lookup found nothing) and accepted drafts, for each of ``--drafts`` (a fixed width every step,
``draft_policy="schedule"``). The counts are read from the proposer's ``propose`` / ``accepted``
calls, so decoding runs the step-by-step path (on a GPU: ``FastPath(lm, step_graphs=False)``).
Nothing is timed. It tells what a verify skipped on steps without a draft could save, and how
far a cheaper verify could take prompt lookup (BENCHMARKS.md, "CUDA-graph fast path").

Usage::

    python benchmarks/lookup_counts.py                      # CPU, fp32
    python benchmarks/lookup_counts.py --device cuda --dtype bfloat16 --drafts 3,4,7
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_gpu as B  # noqa: E402  (the summarisation prompt)

import decodekit  # noqa: E402
from decodekit.api import encode_prompts  # noqa: E402
from decodekit.strategies.speculative.prompt_lookup import PromptLookupProposer  # noqa: E402


def record(steps: list[list[int]]) -> None:
    """Append ``[drafts, accepted]`` of row 0 to ``steps`` at each proposal and acceptance."""
    propose, accepted = PromptLookupProposer.propose, PromptLookupProposer.accepted

    def counting_propose(self, state, k, ctx):
        draft = propose(self, state, k, ctx)
        steps.append([int(draft.count[0]), 0])
        return draft

    def counting_accepted(self, state, draft, n):
        steps[-1][1] = int(n[0])
        return accepted(self, state, draft, n)

    PromptLookupProposer.propose, PromptLookupProposer.accepted = counting_propose, counting_accepted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drafts", default="3,7", help="fixed draft widths, comma-separated")
    ap.add_argument("--tokens", type=int, default=192, help="most new tokens")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    lm = decodekit.load(device=args.device, dtype=args.dtype)
    if lm.fast is not None:  # the proposer's calls run step by step
        from decodekit.fast import FastPath

        lm.fast = FastPath(lm, step_graphs=False)
    prompt = encode_prompts(lm, "Summarise the following article.\n\n" + B.ARTICLE)[0]
    greedy = decodekit.generate(lm, [prompt], max_new_tokens=args.tokens)
    steps: list[list[int]] = []
    record(steps)
    print(f"default model ({args.device}, {args.dtype}), summarisation prompt of {len(prompt)} tokens; "
          f"greedy: {len(greedy.token_ids[0])} tokens")
    for k in (int(v) for v in args.drafts.split(",")):
        steps.clear()
        out = decodekit.generate(lm, [prompt], "prompt_lookup", max_new_tokens=args.tokens,
                                 draft_policy="schedule", draft_tokens=k, adaptive=False)
        n = len(out.token_ids[0])
        none = sum(1 for drafts, _ in steps if drafts == 0)
        hist = collections.Counter(acc for drafts, acc in steps if drafts > 0)
        print(f"{k} drafts: {n} tokens in {len(steps)} steps ({n / max(len(steps), 1):.2f} a step), "
              f"== greedy: {out.token_ids == greedy.token_ids}; {none} steps without a draft; "
              f"drafted steps by drafts accepted: "
              f"{', '.join(f'{a}: {c}' for a, c in sorted(hist.items()))}")


if __name__ == "__main__":
    main()
