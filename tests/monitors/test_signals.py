"""Signals: values against direct computations, dependency resolution, computed once per step and
only when required, traces in the result, and the extension hooks (lookahead, memory)."""

from __future__ import annotations

import math

import pytest
import torch

import decodekit
from decodekit.metrics import repetition_rate
from decodekit.monitors import Record, Signal, SignalMonitor, Threshold
from decodekit.monitors.signals import SIGNALS, resolve, smoothed_entropy
from decodekit.state import Trace

PROMPTS = ["hello there", "ab"]


def _record(lm, names, **kw):
    return decodekit.generate(lm, PROMPTS, max_new_tokens=kw.pop("n", 24), monitors=[Record(tuple(names))], **kw)


def _teacher_logits(lm, prompt: list[int], new: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt + new])
    with torch.no_grad():
        return lm.model(ids).logits[0, len(prompt) - 1: -1].float()  # [len(new), V]


def test_resolve_orders_dependencies_once():
    names = [s.name for s in resolve(["perplexity", "smoothed_entropy", "mean_entropy", "entropy"])]
    assert names == ["seq_logprob", "mean_logprob", "perplexity", "log_probs", "entropy",
                     "smoothed_entropy", "mean_entropy"]
    assert len(names) == len(set(names))


def test_unknown_signal_names_list_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown signal 'entropi'; known signals: .*entropy.*smoothed_entropy"):
        resolve(["entropi"])
    with pytest.raises(ValueError, match="unknown signal 'nope'"):
        Threshold("nope", above=1.0)
    with pytest.raises(ValueError, match="unknown signal 'nope'"):
        Record(("entropy", "nope"))
    with pytest.raises(ValueError, match="intermediate"):
        Threshold("log_probs", above=1.0)


def test_distribution_signals_equal_direct_computation(tiny_lm):
    names = ["entropy", "max_prob", "margin", "logprob", "eos_logprob", "smoothed_entropy",
             "seq_logprob", "mean_logprob", "perplexity", "mean_entropy"]
    gen = _record(tiny_lm, names)
    assert [t.prompt for t in gen.traces] == [0, 1] and isinstance(gen.traces[0], Trace)
    for prompt, trace in zip(PROMPTS, gen.traces):
        p_ids = tiny_lm.tokenizer(prompt).input_ids
        assert trace.token_ids == gen.token_ids[trace.prompt]
        logp = torch.log_softmax(_teacher_logits(tiny_lm, p_ids, trace.token_ids), -1)  # [T, V]
        probs = logp.exp()
        top2 = probs.topk(2, -1).values
        h = -(probs * logp).sum(-1)
        lp = logp.gather(1, torch.tensor(trace.token_ids)[:, None])[:, 0]
        expect = {
            "entropy": h, "max_prob": top2[:, 0], "margin": top2[:, 0] - top2[:, 1], "logprob": lp,
            "eos_logprob": logp[:, list(tiny_lm.eos_token_ids)].logsumexp(-1),
            "smoothed_entropy": torch.tensor([h[max(0, i - 4): i + 1].mean() for i in range(len(h))]),
            "seq_logprob": lp.cumsum(0), "mean_logprob": lp.cumsum(0) / torch.arange(1, len(lp) + 1),
            "perplexity": torch.exp(-lp.cumsum(0) / torch.arange(1, len(lp) + 1)),
            "mean_entropy": h.cumsum(0) / torch.arange(1, len(h) + 1),
        }
        for name, want in expect.items():
            got = torch.tensor(trace.signals[name])
            torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-4, msg=name)


def test_smoothing_oracle_matches_reference_formula():
    h = torch.tensor([[3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]])
    pos = torch.arange(8)[None]
    ref = [sum(h[0, max(0, i - 4): i + 1].tolist()) / (i + 1 - max(0, i - 4)) for i in range(8)]
    torch.testing.assert_close(smoothed_entropy(h, pos)[0], torch.tensor(ref))


def test_repetition_signals_equal_the_metrics(tiny_lm):
    prompt = tiny_lm.tokenizer("abc").input_ids
    gen = decodekit.generate(tiny_lm, [prompt], max_new_tokens=60,
                             monitors=[Record(("rep_rate", "ngram_repeat", "loop_span"))])
    toks, sig = gen.token_ids[0], gen.traces[0].signals
    for q in (10, 30, 59):
        want = repetition_rate([toks[: q + 1]], 4)
        assert sig["rep_rate"][q] == pytest.approx(0.0 if math.isnan(want) else want)
    assert sig["ngram_repeat"][:3] == [0.0, 0.0, 0.0]


def test_signals_computed_once_per_step_and_only_when_required(tiny_lm, monkeypatch):
    calls = {"entropy": 0, "loops": 0}
    for name in calls:
        sig = SIGNALS[name]
        monkeypatch.setattr(sig, "compute", _counted(sig.compute, calls, name))
    two = [Threshold("entropy", above=100.0), Threshold("smoothed_entropy", below=-1.0),
           Record(("entropy", "margin"))]
    gen = decodekit.generate(tiny_lm, PROMPTS, max_new_tokens=15, monitors=two)
    assert calls == {"entropy": gen.stats.steps, "loops": 0}
    calls["entropy"] = 0
    decodekit.generate(tiny_lm, PROMPTS, max_new_tokens=15, monitors=[Record(("loop_span",))])
    assert calls == {"entropy": 0, "loops": 15}
    plain = decodekit.generate(tiny_lm, PROMPTS, max_new_tokens=15)
    assert plain.traces == [] and plain.token_ids == gen.token_ids


def _counted(fn, calls, name):
    def wrapper(ctx):
        calls[name] += 1
        return fn(ctx)
    return wrapper


class HiddenNorm(Signal):
    """A user signal that needs the hidden states: it looks ahead (the forward the next step runs)."""

    name = "test_hidden_norm"

    def compute(self, ctx):
        fwd = ctx.lookahead(hidden=True)
        ctx.memory(self.name).setdefault("steps", 0)
        ctx.memory(self.name)["steps"] += 1
        return fwd.hidden[:, -1].norm(dim=-1)[:, None].expand_as(ctx.positions)  # [rows, n]


class NormMonitor(SignalMonitor):
    name, requires = "norm_monitor", ("test_hidden_norm", "entropy")

    def check(self, signals):
        return None


def test_hidden_state_signal_fits_without_loop_changes(tiny_lm):
    SIGNALS[HiddenNorm.name] = HiddenNorm()
    try:
        plain = decodekit.generate(tiny_lm, PROMPTS, max_new_tokens=12)
        gen = decodekit.generate(tiny_lm, PROMPTS, max_new_tokens=12, monitors=[NormMonitor()])
    finally:
        del SIGNALS[HiddenNorm.name]
    assert gen.token_ids == plain.token_ids
    assert gen.stats.forward_passes == plain.stats.forward_passes + 1  # the last lookahead is unused
    norms = gen.traces[0].signals["test_hidden_norm"]
    assert len(norms) == 12 and all(n > 0 for n in norms)
