"""decodekit.fast.token_step.finish_step == the loop's clip + append + update (+ next inputs).

Runs the Triton kernel under the interpreter on the CPU (tests/conftest.py) and on CUDA. Rows
cover every case: running, already done, one token from the limit, at the limit but not marked, a step that gave no token, an EOS hit
(one of two EOS ids), a done row whose token is an EOS id, and no EOS ids at all.
"""

from __future__ import annotations

import pytest
import torch

from decodekit.fast.launch import kernel_reason
from decodekit.fast.token_step import finish_step
from decodekit.state import DecodeState, StepOutput
from decodekit.stopping import Stopping

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(kernel_reason(DEV, interpret=True) is not None, reason="needs Triton")

EOS = (7, 3)


def _state(rows: int, seed: int) -> DecodeState:
    g = torch.Generator().manual_seed(seed)
    pw, M = 5, 6
    n_new = torch.randint(0, M, (rows,), generator=g)
    limit = torch.minimum(n_new + torch.randint(0, 3, (rows,), generator=g), torch.tensor(M))
    done = torch.rand(rows, generator=g) < 0.3
    if rows >= 5:  # every case at least once: done (row 1), one token from the limit (row 2)
        done[1], done[2], n_new[2], limit[2] = True, False, 2, 3
        done[3], n_new[3], limit[3] = False, 4, 4  # at its limit, not yet marked (a context-filling prompt)
    ids = torch.randint(10, 50, (rows, pw + M), generator=g)
    return DecodeState(
        lm=None, cache=None, attention_mask=torch.ones(rows, 4, dtype=torch.long),
        next_logits=torch.zeros(rows, 8), ids=ids.to(DEV), start=torch.zeros(rows, dtype=torch.long, device=DEV),
        prompt_width=pw, n_new=n_new.to(DEV), limit=limit.to(DEV), logprobs=torch.randn(rows, M, generator=g).to(DEV),
        done=done.to(DEV), finish=[""] * rows, prompt_of_row=torch.arange(rows, device=DEV), generator=None,
        pending=torch.randint(10, 50, (rows,), generator=g).to(DEV),
        finish_codes=torch.randint(0, 3, (rows,), generator=g).to(DEV) * done.to(DEV))


def _out(rows: int, seed: int) -> StepOutput:
    g = torch.Generator().manual_seed(seed + 100)
    tokens = torch.randint(0, 12, (rows, 1), generator=g)
    tokens[::3] = EOS[seed % 2]  # some rows hit an EOS id (done or not)
    count = (torch.rand(rows, generator=g) < 0.85).long()
    if rows >= 5:
        count[4] = 0  # a step that gave row 4 no token
    return StepOutput(tokens.to(DEV), count.to(DEV), torch.randn(rows, 1, generator=g).to(DEV))


def _clone(s: DecodeState) -> DecodeState:
    fields = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in vars(s).items() if k != "_finish"}
    return DecodeState(**fields, finish=[""] * s.rows)


@pytest.mark.parametrize("eos", [EOS, ()])
@pytest.mark.parametrize("rows,seed", [(1, 0), (5, 1), (7, 2), (13, 3)])
def test_finish_step_equals_the_loop(rows, seed, eos):
    state, out = _state(rows, seed), _out(rows, seed)
    B, C = 16, 9
    ref, kern = _clone(state), _clone(state)
    ref_in = torch.full((B, 1), -1, dtype=torch.long, device=DEV)
    ref_mask = torch.zeros(B, C, dtype=torch.long, device=DEV)
    write = torch.tensor([4], device=DEV)
    kern_in, kern_mask, kern_write = ref_in.clone(), ref_mask.clone(), write.clone()

    stopping = Stopping(eos_token_ids=eos)  # the loop's functions
    o = stopping.clip(ref, StepOutput(out.tokens, out.count.clone(), out.logprobs))
    ref.append(o)
    stopping.update(ref)
    ref_in[:rows, 0] = ref.pending
    ref_mask[:, 5] = 1

    finish_step(kern, out, torch.tensor(eos, dtype=torch.long, device=DEV), kern_in, kern_write, kern_mask)

    for name in ("ids", "logprobs", "n_new", "done", "pending", "finish_codes"):
        assert torch.equal(getattr(kern, name), getattr(ref, name)), name
    assert kern.finish == ref.finish
    assert torch.equal(kern_in, ref_in) and torch.equal(kern_mask, ref_mask) and int(kern_write) == 5
    if rows >= 5:  # the cases this must cover did occur: rows newly done, by length (and by EOS)
        assert bool(ref.done[2]) and not bool(state.done[2]) and ref.finish[2] in ("eos", "length")
        assert int(ref.n_new[4]) == int(state.n_new[4])
