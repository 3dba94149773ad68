"""Built-in monitors on scripted models: threshold, entropy band, non-termination, switch + handover;
flags at the right steps, actions applied, and clear errors for bad configurations."""

from __future__ import annotations


import pytest

import decodekit
from decodekit.monitors import (EntropyBand, LoopDetector, NonTermination, Record, Threshold,
                                violation_rates)
from decodekit.registry import register_strategy
from decodekit.state import StepOutput
from decodekit.strategies.base import Strategy
from tests.scripted_lm import ranked_logits, scripted_lm

V, EOS = 16, 15


def spread(best: int, k: int) -> list[float]:
    """Nearly uniform over k tokens from ``best`` (entropy ~ log k), ``best`` slightly ahead."""
    out = [-100.0] * V
    for i in range(k):
        out[(best + i - 1) % 14 + 1] = 0.0 if i else 0.05
    return out


# entropy per generated position: low (peaked) except positions 6..9 (spread over 8: ~log 8)
HIGH = range(6, 10)


def _script(prefix):
    i = len(prefix) - 1
    nxt = i % 14 + 1
    return spread(nxt, 8) if i in HIGH else ranked_logits([nxt], V)


LM = scripted_lm(_script, V, EOS)


def test_threshold_flags_each_stretch_once_and_with_patience():
    gen = decodekit.generate(LM, [[1]], max_new_tokens=14, monitors=[Threshold("entropy", above=1.0)])
    assert [(f.step, f.action) for f in gen.flags] == [(7, "flag")]  # position 6 is the 7th token
    hits = gen.traces[0].signals["threshold_hit"]
    assert [i for i, h in enumerate(hits) if h] == list(HIGH)
    gen = decodekit.generate(LM, [[1]], max_new_tokens=14,
                             monitors=[Threshold("entropy", above=1.0, patience=3, action="stop")])
    assert gen.finish_reasons == ["monitor"] and len(gen.token_ids[0]) == 9  # 3 high tokens: 6, 7, 8


def test_entropy_band_sides_and_violation_rates():
    mon = EntropyBand(lower=0.5, upper=1.5, smoothed=False, below="ok", above="flag")
    gen = decodekit.generate(LM, [[1]], max_new_tokens=14, monitors=[mon])
    assert [(f.step, f.detail) for f in gen.flags] == [(7, "entropy above the band")]
    sig = gen.traces[0].signals
    assert [i for i, h in enumerate(sig["entropy_band_above"]) if h] == list(HIGH)
    assert "entropy_band_below" not in sig
    rates = violation_rates(sig["entropy"], 0.5, 1.5)
    assert rates == {"elvr": pytest.approx(10 / 14), "euvr": pytest.approx(4 / 14), "evr": pytest.approx(1.0)}
    smooth = decodekit.generate(LM, [[1]], max_new_tokens=14,
                                monitors=[EntropyBand(lower=0.0, upper=1.0, below="ok")])
    first = smooth.traces[0].signals["smoothed_entropy"].index(
        next(v for v in smooth.traces[0].signals["smoothed_entropy"] if v > 1.0))
    assert [f.step for f in smooth.flags] == [first + 1]


def _eos_script(slope):
    def script(prefix):
        out = ranked_logits([len(prefix) % 14 + 1], V)
        out[EOS] = 2.0 + slope * len(prefix)  # falling (slope < 0) or flat EOS logit
        return out
    return script


def test_non_termination_guard():
    falling = scripted_lm(_eos_script(-0.1), V, EOS)
    gen = decodekit.generate(falling, [[1]], max_new_tokens=40,
                             monitors=[NonTermination(min_tokens=20, action="stop")])
    assert gen.finish_reasons == ["monitor"] and len(gen.token_ids[0]) == 20
    assert gen.traces[0].signals["eos_trend"][19] == pytest.approx(-0.1, abs=1e-3)
    flat = scripted_lm(_eos_script(0.0), V, EOS)
    gen = decodekit.generate(flat, [[1]], max_new_tokens=40, monitors=[NonTermination(min_tokens=20)])
    assert gen.flags == [] and gen.finish_reasons == ["length"]


@register_strategy("test_second_best")
class SecondBest(Strategy):
    """Always the rank-2 token (a recognisable fallback for the switch test)."""

    def step(self, state):
        logits = state.advance()
        return StepOutput.single(logits.topk(2, -1).indices[:, 1], logits)


def _loop_script(prefix):  # greedy loops 1 2 3 1 2 3 ...; the runner-up is 10 + (i % 3)
    i = len(prefix) % 3
    return ranked_logits([i + 1, 10 + i], V)


def test_switch_hands_the_row_to_the_fallback():
    lm = scripted_lm(_loop_script, V, EOS)
    mon = LoopDetector(min_span=6, action="switch")
    gen = decodekit.generate(lm, [[1], [4]], "handover", max_new_tokens=12, fallback="test_second_best",
                             monitors=[mon])
    toks = gen.token_ids[0]
    first = next(f.step for f in gen.flags if f.prompt == 0)
    assert first == 6 and all(f.action == "switch" for f in gen.flags)
    assert all(t == 1 + (i + 1) % 3 for i, t in enumerate(toks[:first]))  # greedy loop
    assert all(t >= 10 for t in toks[first:])  # the fallback's rank-2 tokens afterwards
    assert gen.stats.extra["handed_over"] == 2 * (12 - first)


def test_bad_monitor_configs():
    with pytest.raises(ValueError, match="give above=, below= or both"):
        Threshold("entropy")
    with pytest.raises(ValueError, match="action must be one of 'flag', 'stop', 'rollback', 'switch'"):
        Threshold("entropy", above=1.0, action="explode")
    with pytest.raises(ValueError, match="needs rollback >= 1"):
        Threshold("entropy", above=1.0, action="rollback")
    with pytest.raises(ValueError, match="min_repeats must be >= 2"):
        LoopDetector(min_repeats=1)
    with pytest.raises(ValueError, match="max_period must be in"):
        LoopDetector(max_period=99)
    with pytest.raises(ValueError, match="must be 'flag', 'stop' or 'switch'"):
        NonTermination(action="rollback")
    with pytest.raises(ValueError, match="patience must be int"):
        Threshold("entropy", above=1.0, patience=1.5)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EntropyBand(band="/nonexistent/band.json")
    with pytest.raises(TypeError, match="needs observe"):
        decodekit.generate(LM, [[1]], max_new_tokens=2, monitors=[object()])
    with pytest.raises(TypeError, match="acts on signals"):
        Record().observe(None, None)


def test_monitors_by_registry_name():
    assert set(decodekit.MONITORS.names()) >= {"threshold", "record", "entropy_band", "loop", "nontermination"}
    mon = decodekit.MONITORS.get("loop")(action="stop")
    assert isinstance(mon, LoopDetector) and mon.name == "loop"


def test_two_monitors_of_one_kind_keep_their_own_traces():
    mons = [Threshold("entropy", above=1.0), Threshold("entropy", below=1.0)]
    gen = decodekit.generate(LM, [[1]], max_new_tokens=14, monitors=mons)
    sig = gen.traces[0].signals
    assert [i for i, h in enumerate(sig["threshold_hit"]) if h] == list(HIGH)
    assert [i for i, h in enumerate(sig["threshold_2_hit"]) if h] == [i for i in range(14) if i not in HIGH]
    assert [(f.step, f.monitor) for f in gen.flags] == [(1, "threshold"), (7, "threshold"), (11, "threshold")]
