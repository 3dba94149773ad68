"""Checking stops one step late (decodekit.lag): lagged == unlagged, token for token, and no host sync
per step but the (lagged) stop check.

The lag is forced on the CPU (``decodekit.lag.LAG = True``); it then runs exactly as on CUDA, minus
the pinned copy: the loop reads ``done`` of the step before the one just queued, so a decode whose
rows all end before ``max_new_tokens`` runs one idle step, which must change nothing.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import decodekit
import decodekit.compaction
import decodekit.lag
from decodekit.fast import FastPath
from decodekit.lag import StopCheck, lag_allowed
from decodekit.loop import prefill
from decodekit.state import StepOutput
from decodekit.stopping import Stopping
from tests.toy import ByteTokenizer, tiny_lm, tiny_model

M = 16  # max_new_tokens
PROMPTS = ["first", "second one", "x", "hello there"]
STRATEGIES = {
    "greedy": {},
    "sample": {"seed": 0},
    "beam": {"num_beams": 3, "num_return_sequences": 2},
    "diverse_beam": {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.5, "num_return_sequences": 2},
    "prompt_lookup": {},
    "speculative": {},  # draft: the fixture below
    "eas": {"seed": 0, "lower": 1.0, "upper": 3.0},  # writes traces
}
# per batch: which token of each row's free run (no EOS) becomes an EOS id (None: none)
SCENARIOS = {
    "b1_eos": ([PROMPTS[3]], [8]),
    "b1_length": ([PROMPTS[3]], [None]),
    "b4_mixed": (PROMPTS, [3, None, 7, None]),
    "b4_all_eos": (PROMPTS, [3, 9, 6, 1]),
}
# counters of the strategy's own passes: they count the idle step, which really ran
PASS_COUNTS = {"draft_forward_passes", "target_forwards_per_token"}


@pytest.fixture(scope="module")
def draft():
    return tiny_lm(seed=1, layers=1)


@pytest.fixture
def lag(monkeypatch):
    # lagged checks never drop finished rows (decodekit.compaction): keep them in unlagged runs too,
    # so both run the same batches (dropping rows changes log-probs in the last float bits)
    monkeypatch.setattr(decodekit.compaction, "COMPACT", False)

    def set_lag(value):
        monkeypatch.setattr(decodekit.lag, "LAG", value)
    return set_lag


def _generate(lm, prompts, strategy, options, eos):
    passes = lm.forward_passes
    gen = decodekit.generate(lm, prompts, strategy, max_new_tokens=M, eos_token_id=eos, chat=False, **options)
    return gen, lm.forward_passes - passes


def _result(gen):
    """Everything a caller sees, but the timings."""
    cands = [[(c.token_ids, c.logprobs, c.score, c.finish_reason, c.text) for c in cs] for cs in gen.candidates]
    extra = {k: v for k, v in gen.stats.extra.items() if k not in PASS_COUNTS}
    return (cands, gen.stats.new_tokens, gen.stats.steps, gen.stats.forward_passes, extra, repr(gen.traces),
            gen.flags)


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lagged_equals_unlagged(tiny_lm, draft, lag, strategy, scenario):
    options = dict(STRATEGIES[strategy], **({"draft": draft} if strategy == "speculative" else {}))
    prompts, at = SCENARIOS[scenario]
    lag(False)
    free = _generate(tiny_lm, prompts, strategy, options, [])[0].token_ids
    eos = sorted({free[r][a] for r, a in enumerate(at) if a is not None})
    plain, plain_passes = _generate(tiny_lm, prompts, strategy, options, eos)
    lag(True)
    lagged, lagged_passes = _generate(tiny_lm, prompts, strategy, options, eos)
    assert _result(lagged) == _result(plain)
    reasons = [c.finish_reason for cs in plain.candidates for c in cs]
    lengths = [len(c.token_ids) for cs in plain.candidates for c in cs]
    if eos:  # the scenario holds: rows end by EOS (at different steps), and by length where asked
        assert "eos" in reasons
        assert len({n for n, r in zip(lengths, reasons) if r == "eos"}) > 1 or len(prompts) == 1
    if strategy not in ("beam", "diverse_beam"):  # one row per prompt: it ends as the scenario says
        assert ("length" in reasons) == (None in at)
    # the lag ran: an idle step (one more forward pass than counted) exactly when every row was done
    # before max_new_tokens steps; none when the decode ran to max_new_tokens
    idle = plain.stats.steps < M
    assert lagged_passes - lagged.stats.forward_passes == int(idle)
    assert plain_passes == plain.stats.forward_passes
    if scenario in ("b1_eos", "b4_all_eos"):
        assert idle


def test_idle_step_gains_no_token(tiny_lm, lag):
    """Greedy, every row ends by EOS: the idle step runs, and each row still ends at its first EOS."""
    lag(False)
    free = decodekit.generate(tiny_lm, PROMPTS, max_new_tokens=M, eos_token_id=[], chat=False).token_ids
    eos = [free[0][2], free[1][5], free[3][4]]
    cut = [min([i for i, t in enumerate(f) if t in eos] + [M - 1]) + 1 for f in free]
    lag(True)
    passes = tiny_lm.forward_passes
    gen = decodekit.generate(tiny_lm, PROMPTS, max_new_tokens=M, eos_token_id=eos, chat=False)
    assert [len(t) for t in gen.token_ids] == cut and max(cut) < M
    assert gen.token_ids == [f[:n] for f, n in zip(free, cut)]
    assert gen.finish_reasons == ["eos"] * 4
    assert gen.stats.steps == max(cut) and gen.stats.new_tokens == sum(cut)
    assert tiny_lm.forward_passes - passes == gen.stats.forward_passes + 1  # the idle step's pass


def test_lag_allowed_only_where_safe(tiny_lm, lag):
    state = prefill(tiny_lm, [[5, 6, 7]], M, None, ())
    greedy, beam = decodekit.strategies.get("greedy")(), decodekit.strategies.get("beam")()
    plain = Stopping((2,))
    lag(None)  # automatic: CUDA only
    assert greedy.lagged_stops and beam.lagged_stops
    assert not decodekit.strategies.get("beam")(repetition_penalty=1.2).lagged_stops  # reads the host
    assert not decodekit.strategies.get("diverse_beam")(num_beams=4, num_beam_groups=2).lagged_stops
    assert not lag_allowed(state, greedy, plain, (), None)
    lag(True)
    assert lag_allowed(state, greedy, plain, (), None) and lag_allowed(state, beam, plain, (), None)
    assert not lag_allowed(state, greedy, plain, (object(),), None)  # monitors
    assert not lag_allowed(state, greedy, plain, (), object())  # a stream callback
    assert not lag_allowed(state, greedy, Stopping((2,), ("stop",)), (), None)
    assert not lag_allowed(state, greedy, Stopping((2,), (), (lambda s: s.done,)), (), None)
    lag(False)
    assert not lag_allowed(state, greedy, plain, (), None)


def test_no_lag_where_a_row_reaches_the_context(lag):
    """A row whose limit reaches the model's context: the idle step would feed a position beyond it."""
    lm = tiny_lm(max_pos=40)
    prompts = [[10 + i for i in range(24)], [7, 8]]
    lag(True)
    near = prefill(lm, prompts, M, None, ())
    assert near.limit.tolist() == [M, M] and not lag_allowed(near, decodekit.strategies.get("greedy")(),
                                                            Stopping((2,)), (), None)
    assert lag_allowed(prefill(lm, [prompts[1]], M, None, ()), decodekit.strategies.get("greedy")(),
                       Stopping((2,)), (), None)
    free = decodekit.generate(lm, prompts, max_new_tokens=M, eos_token_id=[]).token_ids
    eos = [free[0][3], free[1][5]]
    passes = lm.forward_passes
    gen = decodekit.generate(lm, prompts, max_new_tokens=M, eos_token_id=eos)
    assert gen.finish_reasons == ["eos", "eos"] and gen.stats.steps < M
    assert lm.forward_passes - passes == gen.stats.forward_passes  # no idle step


def test_stop_check_reads_the_step_before_the_queued_one(tiny_lm):
    state = prefill(tiny_lm, [[5, 6], [7]], M, None, ())
    check = StopCheck(state, lagged=True)
    assert not check.all_done(state)  # nothing queued yet: read at once
    state.steps = 1
    state.done = torch.tensor([True, True])
    check.queued(state)  # step 1 ended with every row done ...
    assert not check.all_done(state)  # ... but only the start is known when step 2 is queued
    state.steps = 2
    check.queued(state)
    assert check.all_done(state) and check.idle_steps == 1  # step 2 was idle


class _HostReads:
    """Counts device values read on the host (``bool``, ``int``, ``item``, ``tolist`` ...)."""

    NAMES = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero")

    def __init__(self, monkeypatch):
        self.count = Counter()
        for name in self.NAMES:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))

    def _wrap(self, name, method):
        def counted(tensor, *args, **kwargs):
            self.count[name] += 1
            return method(tensor, *args, **kwargs)
        return counted

    @property
    def total(self) -> int:
        return sum(self.count.values())


@pytest.mark.parametrize("lagged", [False, True])
def test_one_host_read_per_greedy_step_on_the_static_cache_path(lag, monkeypatch, lagged):
    """On the fast path's static cache (CUDA graphs off, so on the CPU) a greedy step reads one value
    on the host: the stop check (the step before the queued one when lagged). Stopping.update, clip,
    append and the forward read none."""
    lm = tiny_lm()
    lm.fast = FastPath(lm, capture=False)
    lag(lagged)
    reads = _HostReads(monkeypatch)
    totals = []
    for n in (8, 16):
        before = reads.total
        decodekit.generate(lm, ["hello", "abc de"], max_new_tokens=n, eos_token_id=[], chat=False)
        totals.append(reads.total - before)
    assert totals[1] - totals[0] == 8  # 8 more steps, one read each


def test_update_reads_nothing_on_the_host(tiny_lm, monkeypatch):
    """EOS and length only: clip, append and update mark rows done on the device."""
    state = prefill(tiny_lm, [[5, 6], [7]], 3, None, ())
    state.limit = torch.tensor([3, 1])
    stopping = Stopping((9,))
    reads = _HostReads(monkeypatch)
    for tokens in ([4, 8], [9, 4], [4, 4]):
        out = StepOutput.single(torch.tensor(tokens), torch.zeros(2, tiny_lm.vocab_size))
        state.append(stopping.clip(state, out))
        stopping.update(state)
    assert reads.total == 0
    monkeypatch.undo()
    assert state.done.tolist() == [True, True] and state.n_new.tolist() == [2, 1]
    assert state.finish == ["eos", "length"]


def test_finish_reasons_recorded_on_the_device(tiny_lm):
    """``finish`` names what ``mark_done`` recorded, through row moves and rollbacks."""
    state = prefill(tiny_lm, [[5, 6], [7], [8]], 4, None, ())
    state.mark_done(torch.tensor([True, False, False]), torch.tensor([1, 2, 2]))
    state.mark_done(torch.tensor([False, False, True]), torch.tensor([2, 2, 2]))
    assert state.finish_codes is not None
    state.select_rows(torch.tensor([2, 0, 1]))  # names first, in the old order, then moved
    assert state.finish == ["length", "eos", ""] and state.finish_codes is None
    assert state.done.tolist() == [True, True, False]
    state.mark_done(torch.tensor([False, False, True]), torch.tensor([1, 1, 1]))
    state.finish[0] = "monitor"  # a host write sees the device's reasons first
    assert state.finish == ["monitor", "eos", "eos"]
    state.mark_done(torch.tensor([True, False, False]), torch.tensor([2, 2, 2]))
    state.finish = ["", "", ""]  # replaces every reason, those on the device too
    assert state.finish == ["", "", ""]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("strategy", ["greedy", "sample"])
def test_lagged_equals_unlagged_on_cuda(lag, strategy):
    """On CUDA the lag is on by default (pinned copies, events); every row ends by EOS: idle step."""
    lm = decodekit.load(tiny_model().to("cuda"), ByteTokenizer())
    options = {"seed": 0} if strategy == "sample" else {}
    lag(False)
    free = _generate(lm, PROMPTS, strategy, options, [])[0].token_ids
    eos = sorted({free[r][a] for r, a in enumerate(SCENARIOS["b4_all_eos"][1])})
    plain, _ = _generate(lm, PROMPTS, strategy, options, eos)
    lag(None)
    lagged, passes = _generate(lm, PROMPTS, strategy, options, eos)
    assert _result(lagged) == _result(plain)
    assert passes - lagged.stats.forward_passes == int(plain.stats.steps < M)
