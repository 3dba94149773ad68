"""Finished rows leave the batch (decodekit.compaction): no row is mixed up with another.

Rows are made to finish at very different steps (EOS ids taken from each row's free run, stop
strings, monitors that stop rows). Then, for every strategy that drops finished rows:

* greedy, prompt lookup, a draft model (greedy verification): the batch equals each prompt alone;
* sampling and entropy-aware sampling (whose draws are shaped by the batch, so a batch does not
  equal its prompts alone): with a seed, the batch equals the same batch with compaction off;

token for token, with the same finish reasons, flags and traces, in the original row order; the
rows really left (a recording monitor sees the batch shrink).
"""

from __future__ import annotations

import pytest
import torch

import decodekit
import decodekit.compaction
from decodekit.fast import FastPath
from decodekit.monitors import STOP, Record, Threshold, Verdict
from decodekit.strategies.speculative import BlockwiseHeads
from tests.toy import tiny_lm as make_tiny_lm

M = 24  # max_new_tokens
PROMPTS = ["hello there", "x", "abcabcabcabc abc", "zz top", "the cat sat on the mat; the cat"]
EOS_AT = [12, None, 3, 18, None]  # where each row's free run should end by EOS (None: runs to M)


class RowLog:
    """A plain monitor that may stay in a compacted batch: records each step's rows (never acts)."""

    name = "row_log"
    compactable = True

    def __init__(self):
        self.rows: list[list[int]] = []  # per step: the prompt of each row in the batch

    def observe(self, state, out):
        self.rows.append(state.prompt_of_row.tolist())
        return None


class StopPromptAt:
    """Stops the row of one prompt at one step (a plain monitor, compaction-safe: keeps no rows)."""

    name = "stop_prompt"
    compactable = True

    def __init__(self, prompt: int, step: int):
        self.prompt, self.step = prompt, step

    def observe(self, state, out):
        hit = (state.prompt_of_row == self.prompt) & torch.tensor(state.steps == self.step)
        return Verdict.where(hit & ~state.done, STOP, detail="test stop")


@pytest.fixture(scope="module")
def lm():
    return make_tiny_lm()


def eos_ids(lm, strategy: str = "greedy", **options) -> list[int]:
    """EOS ids that end the rows of PROMPTS at very different steps (some run to M): taken from the
    rows' free runs (no EOS) with ``strategy``."""
    free = decodekit.generate(lm, PROMPTS, strategy, max_new_tokens=M, eos_token_id=[], chat=False,
                              **options).token_ids
    long = [f for f, a in zip(free, EOS_AT) if a is None]
    ids = []
    for f, a in zip(free, EOS_AT):  # the first token from position a on that is new in the row and
        if a is not None:           # absent from the rows that run to M
            ids += [next(t for i, t in enumerate(f) if i >= a and t not in f[:i] and not any(t in g for g in long))]
    lengths = [len(t) for t in decodekit.generate(lm, PROMPTS, strategy, max_new_tokens=M, eos_token_id=ids,
                                                  chat=False, **options).token_ids]
    assert len(set(lengths)) >= 3 and max(lengths) == M and min(lengths) < M // 2  # the scenario holds
    return ids


@pytest.fixture(scope="module")
def eos(lm):
    return eos_ids(lm)


@pytest.fixture
def compact(monkeypatch):
    def set_compact(value: bool):
        monkeypatch.setattr(decodekit.compaction, "COMPACT", value)
    return set_compact


def _gen(lm, prompts, strategy, eos, log: RowLog | None = None, monitors=(), **kw):
    mons = list(monitors) + ([log] if log is not None else [])
    return decodekit.generate(lm, prompts, strategy, max_new_tokens=M, eos_token_id=eos, chat=False,
                              monitors=mons, **kw)


def _shrank(log: RowLog) -> bool:
    """The batch lost rows during the decode, and never held a prompt twice."""
    sizes = [len(r) for r in log.rows]
    return sizes[-1] < sizes[0] and all(len(set(r)) == len(r) for r in log.rows)


def _same(a, b, logprobs_tol: float = 1e-4) -> None:
    """Same tokens, finish reasons and flags; log-probs equal up to float rounding (a smaller batch
    rounds differently)."""
    assert a.token_ids == b.token_ids
    assert a.finish_reasons == b.finish_reasons
    assert [(f.prompt, f.step, f.monitor, f.action) for f in a.flags] == \
           [(f.prompt, f.step, f.monitor, f.action) for f in b.flags]
    for x, y in zip(a.logprobs, b.logprobs):
        torch.testing.assert_close(torch.tensor(x), torch.tensor(y), rtol=0, atol=logprobs_tol)


GREEDY_LIKE = {"greedy": {}, "prompt_lookup": {}, "prompt_lookup_schedule": {"draft_policy": "schedule"}}


def _strategy(name: str):
    if name == "prompt_lookup_schedule":
        return "prompt_lookup"
    return name


@pytest.mark.parametrize("name", GREEDY_LIKE)
def test_batch_equals_each_prompt_alone(lm, eos, compact, name):
    compact(True)
    log = RowLog()
    batch = _gen(lm, PROMPTS, _strategy(name), eos, log, **GREEDY_LIKE[name])
    assert _shrank(log)
    for p, prompt in enumerate(PROMPTS):
        alone = _gen(lm, [prompt], "greedy", eos)
        assert batch.token_ids[p] == alone.token_ids[0], p
        assert batch.finish_reasons[p] == alone.finish_reasons[0]
        torch.testing.assert_close(torch.tensor(batch.logprobs[p]), torch.tensor(alone.logprobs[0]),
                                   rtol=0, atol=1e-4)


PROPOSERS = {  # proposers with per-row data of their own (a draft KV cache, hidden states), a token tree
    "speculative": lambda: {"draft": make_tiny_lm(seed=1, layers=1)},
    "self_speculative": lambda: {"draft_layers": 1},
    "blockwise": lambda: {"heads": BlockwiseHeads(64, 3, init="random"), "draft_tokens": 3},
    "prompt_lookup_tree": lambda: {"num_candidates": 3},
}


@pytest.mark.parametrize("name", PROPOSERS)
def test_every_proposer_batch_equals_greedy_alone(lm, eos, compact, name):
    compact(True)
    log = RowLog()
    batch = _gen(lm, PROMPTS, name.replace("_tree", ""), eos, log, **PROPOSERS[name]())
    assert _shrank(log)
    assert batch.token_ids == [_gen(lm, [p], "greedy", eos).token_ids[0] for p in PROMPTS]


@pytest.mark.parametrize("name, options", [
    ("sample", {"seed": 3, "temperature": 1.5}),
    ("eas", {"seed": 0, "lower": 1.0, "upper": 3.0}),
    ("ead", {"seed": 0, "lower": 1.0, "upper": 3.0}),
    ("handover", {"seed": 2, "primary": "greedy", "fallback": "sample"}),
])
def test_seeded_sampling_is_unchanged_by_compaction(lm, compact, name, options):
    """Sampling guarantees: the same seed gives the same output (not: a batch equals its prompts
    alone, as the draws are shaped by the batch). Rows that left keep their place in the draws, so
    compaction changes nothing."""
    eos = eos_ids(lm, name, **options)
    compact(False)
    full = _gen(lm, PROMPTS, name, eos, **options)
    compact(True)
    log = RowLog()
    compacted = _gen(lm, PROMPTS, name, eos, log, **options)
    assert len({len(t) for t in full.token_ids}) >= 2  # rows end at different steps
    assert _shrank(log)
    _same(compacted, full)
    assert set(compacted.stats.extra) == set(full.stats.extra)
    for a, b in zip(compacted.traces, full.traces):
        assert (a.prompt, a.row, a.token_ids) == (b.prompt, b.row, b.token_ids)
        for key in b.signals:
            torch.testing.assert_close(torch.tensor(a.signals[key]), torch.tensor(b.signals[key]),
                                       rtol=0, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("strategy", ["greedy", "prompt_lookup", "sample"])
def test_monitors_stop_strings_and_streams_follow_their_rows(lm, eos, compact, strategy):
    """Signal monitors (traces, flags, stops), a plain monitor that stops a row, stop strings and a
    stream: the same with and without compaction, and every row's trace is its own."""
    free = decodekit.generate(lm, PROMPTS, max_new_tokens=M, eos_token_id=[], chat=False)
    stop = free.texts[4][5:8]  # a stop string from prompt 4's text, early in it
    assert stop and stop not in free.texts[1]
    opts = {"seed": 5} if strategy == "sample" else {}

    def run():
        log, streamed = RowLog(), {}
        monitors = [Record(("entropy", "margin")), Threshold("max_prob", below=0.5, action="flag"),
                    StopPromptAt(1, 6)]
        gen = _gen(lm, PROMPTS, strategy, eos, log, monitors, stop_strings=[stop],
                   stream=lambda p, text: streamed.__setitem__(p, streamed.get(p, "") + text), **opts)
        return gen, log, streamed

    compact(False)
    full, full_log, full_stream = run()
    compact(True)
    compacted, log, streamed = run()
    assert all(len(r) == len(PROMPTS) for r in full_log.rows)
    assert _shrank(log)
    _same(compacted, full)
    assert "monitor" in full.finish_reasons and "eos" in full.finish_reasons  # rows end for different reasons
    if strategy != "sample":  # the stop string comes from prompt 4's greedy text
        assert "stop_string" in full.finish_reasons
    assert streamed == full_stream == dict(enumerate(compacted.texts))
    assert [(t.prompt, t.row) for t in compacted.traces] == [(p, p) for p in range(len(PROMPTS))]
    for t, ids in zip(compacted.traces, compacted.token_ids):
        assert t.token_ids == ids
        assert all(len(v) == len(ids) for v in t.signals.values())
        torch.testing.assert_close(torch.tensor(t.signals["entropy"]),
                                   torch.tensor(full.traces[t.row].signals["entropy"]), rtol=0, atol=1e-4)


def test_rows_stay_where_compaction_is_not_safe(lm, eos, compact):
    """A plain monitor that does not declare ``compactable``, beams, and speculative sampling keep
    every row in the batch (their per-row data or draws depend on the batch)."""
    compact(True)

    class Plain(RowLog):
        compactable = False

    plain = Plain()
    _gen(lm, PROMPTS, "greedy", eos, plain)
    assert all(len(r) == len(PROMPTS) for r in plain.rows)
    for name, options in [("beam", {"num_beams": 2}), ("prompt_lookup", {"do_sample": True, "seed": 0})]:
        log = RowLog()
        _gen(lm, PROMPTS, name, eos, log, **options)
        assert len({len(r) for r in log.rows}) == 1, name


def test_forward_passes_count_only_the_rows_in_the_batch(lm, eos, compact):
    """``target_forwards_per_token`` counts each pass once per row it carried: fewer with compaction
    (rows that left), and greedy-like (1 pass per token and row, plus the prefill) without."""
    compact(False)
    full = _gen(lm, PROMPTS, "prompt_lookup", eos, draft_tokens=1, adaptive=False, draft_policy="schedule")
    compact(True)
    compacted = _gen(lm, PROMPTS, "prompt_lookup", eos, draft_tokens=1, adaptive=False, draft_policy="schedule")
    assert compacted.token_ids == full.token_ids
    same = {k: v for k, v in full.stats.extra.items() if k != "target_forwards_per_token"}
    assert {k: compacted.stats.extra[k] for k in same} == same  # acceptance counts: every row's
    rows, steps, tokens = len(PROMPTS), full.stats.steps, full.stats.new_tokens
    assert rows * steps / tokens <= full.stats.extra["target_forwards_per_token"] <= rows * (1 + steps) / tokens
    assert compacted.stats.extra["target_forwards_per_token"] < full.stats.extra["target_forwards_per_token"]


@pytest.mark.parametrize("name", ["greedy", "prompt_lookup"])
def test_static_cache_drops_rows_too(lm, eos, compact, name):
    """The fast path's static cache (here without CUDA graphs, on the CPU) selects rows the same way."""
    compact(True)
    fast = make_tiny_lm()
    fast.fast = FastPath(fast, capture=False)
    log = RowLog()
    got = _gen(fast, PROMPTS, name, eos, log)
    assert _shrank(log)
    assert got.token_ids == _gen(lm, PROMPTS, "greedy", eos).token_ids
