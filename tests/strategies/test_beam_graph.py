"""Beam search's whole step without host reads (decodekit.strategies.beam_graph), run eagerly on the CPU.

``FastPath(capture=False, step_graphs=True)`` with the lagged stop check runs the very tail a CUDA
graph replays (device-side row assignment, in-place row moves, the length normaliser from a device
counter, closed units marked on the device). Every returned candidate -- tokens, log-probs, score,
finish reason -- must equal the ordinary beam step's, with hypotheses that end at many lengths (a
likely EOS), several return sequences, each early-stopping rule, length penalties and beam sampling.
The row assignment is checked against the rule spelled out in Python on random cases.
tests/fast/test_step_graph_gpu.py checks the replays on a GPU.
"""

from __future__ import annotations

import pytest
import torch

import decodekit
import decodekit.lag
from decodekit.fast import FastPath
from decodekit.fast.launch import kernel_reason
from decodekit.strategies.beam_core import assign_rows
from tests.strategies.test_beam import eos_lm

PROMPTS = ["Hello there", "A", "The cat sat on", "xyz"]


def _host_rule(rows_of: list[list[int]], parent: list[list[int]]):
    """The assignment spelled out: per unit, the first beam extending a row stays in it; the others
    take the unit's rows that no beam extends, in order. (dest, index)."""
    dest, index = [], list(range(sum(map(len, rows_of))))
    for own, parents in zip(rows_of, parent):
        free = iter([r for r in own if r not in parents])
        seen, rows = set(), []
        for p in parents:
            rows.append(next(free) if p in seen else p)
            seen.add(p)
        for d, p in zip(rows, parents):
            index[d] = p
        dest.append(rows)
    return dest, index


def test_assign_rows_follows_the_rule():
    gen = torch.Generator().manual_seed(0)
    for width in (1, 2, 3, 4, 6):
        for _ in range(60):
            units = 3
            rows_of = torch.stack([torch.randperm(width, generator=gen) + u * width for u in range(units)])
            pick = torch.randint(0, width, (units, width), generator=gen)  # which of its rows each beam extends
            parent = rows_of.gather(1, pick)  # [units, width]
            dest, index = assign_rows(rows_of, parent)
            want_dest, want_index = _host_rule(rows_of.tolist(), parent.tolist())
            assert dest.tolist() == want_dest and index.tolist() == want_index
            # the in-place move is exact: no row that a moved row copies is itself overwritten
            moved = index != torch.arange(units * width)
            assert not bool(torch.isin(index[moved], torch.nonzero(moved).flatten()).any())


@pytest.fixture(scope="module")
def lm():
    return eos_lm(seed=1)


def _run(lm, on: bool, monkeypatch, headroom: int = 8, kernels: bool | None = None, **kw):
    """One beam decode over the static cache: with whole steps from the plan (eager) and the lagged
    stop check, or the ordinary beam step."""
    monkeypatch.setattr(decodekit.lag, "LAG", on)
    lm.fast = FastPath(lm, capture=False, step_graphs=on, headroom=headroom, kernels=kernels)
    lm.cuda_graphs = True
    try:
        gen = decodekit.generate(lm, PROMPTS, "beam", **kw)
    finally:
        lm.cuda_graphs = False
    assert (lm.fast.graph_steps > 0) == on
    return gen


def _candidates(gen):
    return [[(c.token_ids, c.logprobs, c.score, c.finish_reason) for c in cands] for cands in gen.candidates]


@pytest.mark.parametrize("kw", [
    {"num_beams": 4},
    {"num_beams": 1},
    {"num_beams": 4, "num_return_sequences": 3, "length_penalty": 0.7},
    {"num_beams": 3, "num_return_sequences": 2, "early_stopping": True, "length_penalty": 1.3},
    {"num_beams": 4, "num_return_sequences": 4, "early_stopping": "never", "length_penalty": 0.5},
    {"num_beams": 2, "do_sample": True, "temperature": 0.9, "top_k": 20, "seed": 5},
])
def test_plan_steps_equal_ordinary_beam_steps(lm, kw, monkeypatch):
    graph = _run(lm, True, monkeypatch, max_new_tokens=24, **kw)
    plain = _run(lm, False, monkeypatch, max_new_tokens=24, **kw)
    assert _candidates(graph) == _candidates(plain)
    assert graph.stats.steps == plain.stats.steps
    reasons = {c.finish_reason for cands in plain.candidates for c in cands}
    assert "eos" in reasons  # hypotheses ended early: the finished-hypothesis path ran


def test_plan_on_a_moved_slab(lm, monkeypatch):
    """No EOS: every beam runs to the length limit, and the cache outgrows its slab on the way."""
    kw = {"num_beams": 4, "num_return_sequences": 2, "max_new_tokens": 40, "eos_token_id": []}
    graph = _run(lm, True, monkeypatch, headroom=0, **kw)
    plain = _run(lm, False, monkeypatch, headroom=0, **kw)
    assert _candidates(graph) == _candidates(plain)
    assert all(len(c.token_ids) == 40 for cands in graph.candidates for c in cands)


@pytest.mark.skipif(kernel_reason(torch.device("cpu"), interpret=True) is not None,
                    reason="needs Triton's interpreter")
def test_plan_with_the_row_copy_kernel(lm, monkeypatch):
    """With decodekit's kernels (here under Triton's interpreter) the KV rows move with the Triton
    row copy (only moved rows, up to the step's column): the candidates stay the ordinary step's."""
    kw = {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 8}
    graph = _run(lm, True, monkeypatch, kernels=True, **kw)
    assert lm.fast.kernels
    plain = _run(lm, False, monkeypatch, kernels=True, **kw)
    assert _candidates(graph) == _candidates(plain)


def test_no_plan_where_a_step_reads_the_host(lm, monkeypatch):
    """Penalties read the rows' tokens on the host: the ordinary step runs (and the lag is off)."""
    monkeypatch.setattr(decodekit.lag, "LAG", True)
    lm.fast = FastPath(lm, capture=False, step_graphs=True, headroom=8)
    lm.cuda_graphs = True
    try:
        decodekit.generate(lm, PROMPTS, "beam", num_beams=3, no_repeat_ngram_size=2, max_new_tokens=8)
    finally:
        lm.cuda_graphs = False
    assert lm.fast.graph_steps == 0


@pytest.mark.parametrize("plan", [True, False])
def test_one_host_read_per_beam_step(lm, monkeypatch, plan):
    """With the plan a beam step reads one value on the host: the loop's (lagged) stop check. The
    ordinary beam step reads several (which candidates end, the row assignment, closed units)."""
    from tests.test_lag import _HostReads

    monkeypatch.setattr(decodekit.lag, "LAG", True)
    lm.fast = FastPath(lm, capture=False, step_graphs=plan, headroom=64)
    lm.cuda_graphs = True
    reads = _HostReads(monkeypatch)
    totals = []
    try:
        for n in (8, 16):
            before = reads.total
            decodekit.generate(lm, PROMPTS[:2], "beam", num_beams=3, max_new_tokens=n, eos_token_id=[])
            totals.append(reads.total - before)
    finally:
        lm.cuda_graphs = False
    if plan:
        assert totals[1] - totals[0] == 8  # 8 more steps, one read each
    else:
        assert totals[1] - totals[0] >= 3 * 8
