"""decodekit.fast.lookup_step == prompt lookup's step tail written with PyTorch operations.

The plan's tail (decodekit.strategies.speculative.graph_plan.LookupPlan) runs once with the one
kernel and once as PyTorch operations on copies of the same state; every tensor either writes (the
rows' tokens, log-probs, counts, done marks and finish codes, the next drafts, the next inputs, the
slab's column mask, the counters, the next logits) must be equal. Under Triton's interpreter on the
CPU (tests/conftest.py) and on CUDA. The states cover: drafts fully, partly and not accepted, rows
with no drafts, finished rows, a row one token from its limit, EOS inside the accepted drafts, one
and two EOS ids and none, n-gram matches of every length and none, left-padded rows.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import decodekit.strategies.speculative.graph_plan as GP
from decodekit.fast.launch import kernel_reason
from decodekit.state import FINISH_CODES, DecodeState
from decodekit.stopping import Stopping
from decodekit.strategies.speculative.prompt_lookup import PromptLookupProposer
from decodekit.strategies.speculative.strategy import DraftVerify

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(kernel_reason(DEV, interpret=True) is not None, reason="needs Triton")

V = 40  # vocabulary
CASES = [(1, 4, 0, 3), (4, 4, 1, 3), (6, 3, 2, 2), (5, 8, 3, 4), (9, 1, 4, 1), (8, 4, 5, 3)]  # rows, k, seed, n-grams


def _case(rows: int, k: int, seed: int):
    """A decode state mid-way, this step's drafts and the verify forward's logits."""
    g = torch.Generator().manual_seed(seed)
    pw, M = 12, 20
    start = torch.randint(0, 4, (rows,), generator=g)
    n_new = torch.randint(0, M - k - 2, (rows,), generator=g)
    limit = torch.minimum(n_new + torch.randint(1, 8, (rows,), generator=g), torch.tensor(M))
    done = torch.rand(rows, generator=g) < 0.2
    ids = torch.randint(5, 11, (rows, pw + M), generator=g)  # few distinct tokens: n-gram matches of all lengths
    ids[:, :4] = torch.where(torch.arange(4)[None, :] < start[:, None], 0, ids[:, :4])  # left padding
    drafts = torch.randint(5, 11, (rows, k), generator=g)
    count = torch.randint(0, k + 1, (rows,), generator=g)
    logits = torch.randn(rows, k + 1, V, generator=g)
    logits[..., 5:11] += 3.0  # the target mostly picks tokens of the text: its suffixes recur
    accept = torch.randint(0, k + 1, (rows,), generator=g)  # plant argmax = draft on a prefix
    for r in range(rows):
        for j in range(int(accept[r])):
            logits[r, j, drafts[r, j]] += 10.0
    done[0], limit[0] = False, M  # row 0 keeps running (no EOS id, room left): its next drafts match
    logits[0, :, 7] -= 100.0
    logits[0, :, 9] -= 100.0
    if rows >= 4:
        count[1], accept[1] = k, k  # row 1 accepts all it proposes
        for j in range(k):
            logits[1, j, drafts[1, j]] += 20.0
        done[2], limit[2] = False, n_new[2] + 1  # one token from its limit
        done[3] = True
    state = DecodeState(
        lm=None, cache=None, attention_mask=torch.ones(rows, 4, dtype=torch.long, device=DEV),
        next_logits=torch.zeros(rows, V, device=DEV), ids=ids.to(DEV), start=start.to(DEV), prompt_width=pw,
        n_new=n_new.to(DEV), limit=limit.to(DEV), logprobs=torch.randn(rows, M, generator=g).to(DEV),
        done=done.to(DEV), finish=[""] * rows, prompt_of_row=torch.arange(rows, device=DEV), generator=None,
        pending=torch.randint(5, 11, (rows,), generator=g).to(DEV),
        finish_codes=torch.randint(0, 3, (rows,), generator=g).to(DEV) * done.to(DEV))
    return state, drafts.to(DEV), count.to(DEV), logits.to(DEV)


def _clone(s: DecodeState) -> DecodeState:
    fields = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in vars(s).items() if k != "_finish"}
    return DecodeState(**fields, finish=[""] * s.rows)


def _tail(state, drafts, count, logits, eos, fused: bool, max_ngram: int):
    """Run LookupPlan's tail (fused or not) on a copy of the state; everything it wrote."""
    state = _clone(state)
    rows, k = drafts.shape
    T, B, C = k + 1, rows + 2, 64
    strategy = SimpleNamespace(_process=None, kept_columns=DraftVerify.kept_columns, emitted=DraftVerify.emitted,
                               token_logprobs=DraftVerify.token_logprobs, logits_after=DraftVerify.logits_after)
    state.extra["_spec_proposer"] = PromptLookupProposer(max_ngram, 1)
    plan = GP.LookupPlan(strategy, state, Stopping(eos_token_ids=eos), SimpleNamespace(k=k))
    plan.fused = fused
    plan.drafts.copy_(drafts)
    plan.count.copy_(count)
    ids_in = torch.full((B, T), -1, dtype=torch.long, device=DEV)
    mask = torch.zeros(B, C, dtype=torch.long, device=DEV)
    mask[:, :30] = 1
    write = torch.arange(30, 30 + T, device=DEV)
    mask[:, 30:30 + T] = 1  # this step's columns: dummy rows attend to everything, finished rows to none
    mask[:rows, 30:30 + T] = (~state.done).long()[:, None]
    plan.tail(state, logits, ids_in, write, mask)
    out = {name: getattr(state, name) for name in ("ids", "logprobs", "n_new", "done", "pending", "finish_codes",
                                                   "next_logits")}
    out.update(drafts=plan.drafts, count=plan.count, stats=plan.stats, ids_in=ids_in, mask=mask, write=write,
               attention_mask=state.attention_mask)
    return out


@pytest.mark.parametrize("eos", [(7,), (7, 9), ()])
@pytest.mark.parametrize("rows,k,seed,max_ngram", CASES)
def test_lookup_step_equals_the_torch_tail(rows, k, seed, max_ngram, eos):
    state, drafts, count, logits = _case(rows, k, seed)
    ref = _tail(state, drafts, count, logits, eos, False, max_ngram)
    got = _tail(state, drafts, count, logits, eos, True, max_ngram)
    for name, value in ref.items():
        assert torch.equal(got[name], value), name


def test_cases_cover_eos_and_limits():
    """The random cases reach the interesting branches (else the equality above proves little)."""
    hits = {"eos": 0, "length": 0, "accepted": 0, "matched": 0, "all accepted": 0}
    for rows, k, seed, max_ngram in CASES:
        state, drafts, count, logits = _case(rows, k, seed)
        out = _tail(state, drafts, count, logits, (7, 9), False, max_ngram)
        newly = out["done"] & ~state.done
        hits["eos"] += int((newly & (out["finish_codes"] == FINISH_CODES.index("eos"))).sum())
        hits["length"] += int((newly & (out["finish_codes"] == FINISH_CODES.index("length"))).sum())
        hits["accepted"] += int(out["stats"][0])
        hits["matched"] += int((out["count"] > 0).sum())
        hits["all accepted"] += int(((out["n_new"] - state.n_new) == k + 1).sum())
    assert all(v > 0 for v in hits.values()), hits
