"""Speculative sampling reproduces the target's distribution, end to end on small models.

A 6-token vocabulary, 3 new tokens, a draft of 2 tokens: every path of the algorithm occurs
(accept, reject + residual, bonus token, EOS and length clipping). The exact distribution of the
3-token continuations (EOS ends one early) is enumerated from the target's processed distributions;
20 000 rows of one batch (one seeded generator) give 20 000 independent samples; a chi-square test
compares them. The same harness rejects deliberately broken verifiers (a residual without ``- q``, a
bonus token drawn at the wrong position), which shows the test has the power to catch them.
"""

from __future__ import annotations


import pytest
import torch
from scipy import stats

import decodekit
from decodekit.processors import apply_processors, build_processors
from decodekit.strategies.speculative import strategy as strategy_module
from decodekit.strategies.speculative.verify import Verified, race, sample_verify
from tests.toy import EOS, ByteTokenizer, tiny_model
from tests.strategies.speculative.helpers import sequence_distribution

V, NEW, ROWS = 6, 3, 20_000
PROMPT = [3, 4, 5, 1, 3]
OPTIONS = {"temperature": 2.0, "top_k": 5}  # applied to target and draft alike


@pytest.fixture(scope="module")
def models():
    target = decodekit.load(tiny_model(seed=0, vocab=V, hidden=16), ByteTokenizer())
    draft = decodekit.load(tiny_model(seed=3, vocab=V, hidden=16, layers=1), ByteTokenizer())
    return target, draft


def _exact(target) -> dict[tuple[int, ...], float]:
    """P(continuation) under the processed target, for every continuation of NEW tokens / to EOS."""
    procs = build_processors(**OPTIONS)

    def dist(prefix):
        ids = torch.tensor([PROMPT + list(prefix)])
        logits = target.forward(ids, target.new_cache(), torch.ones_like(ids)).logits[:, -1]  # [1, V]
        return apply_processors(procs, logits, None).softmax(-1)[0].tolist()

    return sequence_distribution(dist, NEW, EOS)


def _pvalue(target, draft, seed=0, rows=ROWS) -> float:
    gen = decodekit.generate(target, [PROMPT] * rows, "speculative", draft=draft, do_sample=True,
                             draft_tokens=2, adaptive=False, max_new_tokens=NEW, seed=seed, **OPTIONS)
    exact = _exact(target)
    counts = dict.fromkeys(exact, 0)
    for toks in gen.token_ids:
        if tuple(toks) not in counts:  # a continuation the target cannot produce
            return 0.0
        counts[tuple(toks)] += 1
    keys = sorted(exact, key=exact.get)
    obs, exp, acc_o, acc_e = [], [], 0, 0.0
    for key in keys:  # merge the least likely continuations until each bin expects >= 5
        acc_o, acc_e = acc_o + counts[key], acc_e + exact[key] * rows
        if acc_e >= 5:
            obs.append(acc_o), exp.append(acc_e)
            acc_o, acc_e = 0, 0.0
    exp[-1] += acc_e
    obs[-1] += acc_o
    exp = [e * rows / sum(exp) for e in exp]  # float rounding: scipy wants equal sums
    return float(stats.chisquare(obs, exp).pvalue)


def test_speculative_sampling_matches_target_distribution(models):
    p = _pvalue(*models)
    assert p > 1e-3, p


def test_target_as_draft_accepts_all_and_emits_the_bonus(models):
    target, _ = models
    gen = decodekit.generate(target, [PROMPT] * 2000, "speculative", draft=target, do_sample=True,
                             draft_tokens=2, adaptive=False, max_new_tokens=NEW, seed=1, **OPTIONS)
    assert gen.stats.extra["acceptance_rate"] > 0.999
    assert gen.stats.steps == 1  # 2 drafts + the bonus token = all 3 tokens in one step


def _broken(mode: str):
    """sample_verify with one deliberate bug (to show the statistical test catches it)."""

    def verify(p, drafts, count, q, generator):
        rows, k = drafts.shape
        good = sample_verify(p, drafts, count, q, generator)
        a = good.accepted
        if mode == "residual_is_p":  # resample from p instead of (p - q)+ after a rejection
            redo = race(p.gather(1, a[:, None, None].expand(rows, 1, p.shape[-1]))[:, 0], generator)
        else:  # "bonus_wrong_position": the bonus drawn from p_k instead of p_{k+1}
            redo = race(p[:, k - 1], generator)
        fix = (a < count) if mode == "residual_is_p" else (a == count)
        last = torch.where(fix, redo, good.tokens.gather(1, a[:, None])[:, 0])
        return Verified(good.tokens.scatter(1, a[:, None], last[:, None]), a)

    return verify


@pytest.mark.parametrize("mode", ["residual_is_p", "bonus_wrong_position"])
def test_the_test_catches_broken_verification(models, monkeypatch, mode):
    monkeypatch.setattr(strategy_module, "sample_verify", _broken(mode))
    p = _pvalue(*models, rows=5000)  # the bugs are gross: a quarter of the draws suffices
    assert p < 1e-6, p
