"""EAS / EAD (Arora et al. 2023, arXiv:2302.06784): reductions to greedy and to sampling, the step
logic on scripted entropies, EAD's backoff (rank-2 token at the right step, the cap) against a
from-scratch reference, and clear errors for bad bands and options."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

import decodekit
from decodekit.monitors.band import Band, default_band_path
from decodekit.monitors.calibration import calibrate_band, pydoc_prose
from tests.scripted_lm import ranked_logits, scripted_lm
from tests.toy import tiny_model

INF = float("inf")
PROMPTS = ["hello there", "ab", "The quick brown fox"]


@pytest.fixture(scope="module")
def tiny_band(tiny_lm, tmp_path_factory):
    band = calibrate_band(tiny_lm, pydoc_prose()[:3], prefix=8, tokens=24, max_texts=8)
    path = tmp_path_factory.mktemp("band") / "tiny.json"
    band.save(path)
    return str(path)


@pytest.mark.parametrize("name", ["eas", "ead"])
def test_infinitely_wide_band_is_greedy(tiny_lm, tiny_band, name):
    greedy = decodekit.generate(tiny_lm, PROMPTS, max_new_tokens=24)
    for opts in ({"lower": -INF, "upper": INF}, {"band": tiny_band, "a": INF}):
        gen = decodekit.generate(tiny_lm, PROMPTS, name, max_new_tokens=24, seed=0, **opts)
        assert gen.token_ids == greedy.token_ids
        assert gen.logprobs == greedy.logprobs
        assert gen.stats.extra["sampled"] == 0.0


@pytest.mark.parametrize("sampler", [{"sampler": "typical", "typical_p": 0.2},
                                     {"sampler": "top_k", "top_k": 30},
                                     {"sampler": "typical", "typical_p": 0.9, "temperature": 0.7}])
def test_always_outside_the_band_is_seeded_sampling(tiny_lm, sampler):
    kw = dict(sampler)
    kind = kw.pop("sampler")
    sample_opts = {k: v for k, v in kw.items()} if kind == "typical" else {"top_k": kw["top_k"]}
    for seed in (0, 7):
        want = decodekit.generate(tiny_lm, PROMPTS, "sample", max_new_tokens=20, seed=seed, **sample_opts)
        gen = decodekit.generate(tiny_lm, PROMPTS, "eas", max_new_tokens=20, seed=seed, g=0,
                                 lower=-INF, upper=-INF, **sampler)
        assert gen.token_ids == want.token_ids
        assert gen.stats.extra["sampled"] == sum(len(t) for t in want.token_ids)


# ---------------------------------------------------------------- scripted entropies

V, EOS = 16, 15


def _spread(best, k):
    out = [-100.0] * V
    for i in range(k):
        out[(best + i - 1) % 14 + 1] = 0.0 if i else 0.05
    return out


def test_eas_samples_exactly_where_entropy_is_high_after_g():
    high = {2, 3, 8, 9, 10}

    def script(prefix):
        i = len(prefix) - 1
        return _spread(i % 14 + 1, 8) if i in high else ranked_logits([i % 14 + 1], V)
    lm = scripted_lm(script, V, EOS)
    gen = decodekit.generate(lm, [[1]], "eas", max_new_tokens=14, seed=0, g=5, lower=0.0, upper=1.0)
    sampled = gen.traces[0].signals["eas_sampled"]
    assert [i for i, s in enumerate(sampled) if s] == [8, 9, 10]  # high and t >= g
    assert gen.stats.extra["sampled"] == 3
    smoothed = decodekit.generate(lm, [[1]], "eas", max_new_tokens=14, seed=0, g=5, lower=0.0,
                                  upper=1.0, smoothed=True)
    h = gen.traces[0].signals["eas_entropy"]
    sm = [sum(h[max(0, i - 4): i + 1]) / (i + 1 - max(0, i - 4)) for i in range(14)]
    want = [i for i in range(5, 14) if sm[i] > 1.0]
    assert [i for i, s in enumerate(smoothed.traces[0].signals["eas_sampled"]) if s] == want


def _cycle_script(prefix):
    """Low entropy everywhere: the next token of the cycle 1..8 first, then the following ones."""
    last = prefix[-1]
    return ranked_logits([(last + k - 1) % 8 + 1 for k in range(1, 9)], V)


def _entropy(logits):
    logp = torch.log_softmax(torch.tensor(logits), -1)
    return float(-(logp.exp() * logp).sum())


def reference_ead(script, prompt, n, g, patience, cap, lower):
    """EAD from scratch on plain lists: every distribution recomputed from the full prefix."""
    toks, runs, rank, backoffs, events = [], [], {}, 0, []
    step = 0
    while len(toks) < n:
        step += 1
        t = len(toks)
        h = _entropy(script(prompt + toks))
        low = t >= g and h < lower
        run = (runs[t - 1] if t else 0) + 1 if low else 0
        runs = runs[:t] + [run]
        if run > patience and backoffs < cap:
            s = max(t - patience - 1, g)
            del toks[s:]
            rank = {k: v for k, v in rank.items() if k <= s}
            rank[s] = rank.get(s, 0) + 1
            order = sorted(range(V), key=lambda v: -script(prompt + toks)[v])
            toks.append(order[rank[s]])
            backoffs += 1
            events.append((step, s, toks[-1]))
        else:
            logits = script(prompt + toks)
            toks.append(max(range(V), key=lambda v: logits[v]))
    return toks, events


def test_ead_backoff_takes_rank_two_at_the_right_step_and_stops_at_the_cap():
    lm = scripted_lm(_cycle_script, V, EOS)
    opts = dict(g=2, patience=2, max_backoffs=3, lower=1.0, upper=INF)
    gen = decodekit.generate(lm, [[1]], "ead", max_new_tokens=12, seed=0, **opts)
    toks, events = reference_ead(_cycle_script, [1], 12, 2, 2, 3, 1.0)
    # by hand: greedy 2 3 4 5; at step 5 (position 4) the run of 3 low tokens exceeds patience 2:
    # back to position 2, where the rank-2 token after [1, 2, 3] is 5 (rank 1 is 4)
    assert events[0] == (5, 2, 5)
    assert [e[1:] for e in events] == [(2, 5), (2, 6), (2, 7)]  # rank 2, 3, 4 at the same position
    assert gen.token_ids[0] == toks == [2, 3, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8]  # cap hit: greedy after
    assert gen.stats.extra["backoffs"] == 3
    assert gen.stats.steps == 12 + 3 * 2  # each backoff undid 2 tokens
    runs = gen.traces[0].signals["ead_low_run"]
    assert max(runs) > 2  # the run keeps growing once the cap is reached: no more backoffs


@pytest.mark.parametrize("g,patience,cap", [(0, 1, 5), (3, 4, 2), (1, 0, 4)])
def test_ead_matches_reference(g, patience, cap):
    lm = scripted_lm(_cycle_script, V, EOS)
    gen = decodekit.generate(lm, [[3]], "ead", max_new_tokens=16, seed=0, g=g, patience=patience,
                             max_backoffs=cap, lower=1.0, upper=INF)
    toks, events = reference_ead(_cycle_script, [3], 16, g, patience, cap, 1.0)
    assert gen.token_ids[0] == toks and gen.stats.extra["backoffs"] == len(events) == cap


def test_ead_backs_off_per_row():
    def script(prefix):  # prompts starting with 9: spread (high entropy), never backs off
        return _spread(len(prefix) % 14 + 1, 6) if prefix[0] == 9 else _cycle_script(prefix)
    lm = scripted_lm(script, V, EOS)
    opts = dict(g=1, patience=2, max_backoffs=2, lower=1.0, upper=INF)
    both = decodekit.generate(lm, [[1], [9, 9]], "ead", max_new_tokens=10, seed=0, **opts)
    alone = [decodekit.generate(lm, [p], "ead", max_new_tokens=10, seed=0, **opts).token_ids[0]
             for p in ([1], [9, 9])]
    assert both.token_ids == alone
    assert both.traces[1].signals["ead_low_run"] == [0.0] * 10


# ---------------------------------------------------------------- bands and bad input


def test_shipped_band_is_valid_and_documented():
    band = Band.load(default_band_path())
    assert band.vocab_size == 49152 and band.model_signature == "llama/30x576/v49152"
    assert band.width == 5 and len(band.mean) == 128 and min(band.count) >= 100
    assert 1.0 < band.sem < 5.0 and 0.1 < band.sev < 2.0
    assert band.command.startswith("decodekit calibrate-entropy") and "pydoc_data" in band.source


def test_band_for_another_model_is_refused(tiny_lm, tiny_band):
    with pytest.raises(ValueError, match=r"calibrated for 'SmolLM2-135M-Instruct' .*vocabulary 49152.*"
                                         r"this model .*vocabulary 259.*calibrate-entropy"):
        decodekit.generate(tiny_lm, "hi", "eas", max_new_tokens=2)
    other = decodekit.load(tiny_model(layers=3), tiny_lm.tokenizer)
    with pytest.raises(ValueError, match=r"llama/2x64/v259.*llama/3x64/v259"):
        decodekit.generate(other, "hi", "ead", max_new_tokens=2, band=tiny_band)


@pytest.mark.parametrize("content,match", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"format": "other"}', "'format' must be"),
    ("FIELDS-mean", "missing field"),
    ("NEG", "cannot be negative"),
    ("NAN", "non-finite"),
    ("LEN", "of one length"),
    ("EXTRA", "unknown field"),
])
def test_malformed_band_files(tmp_path, tiny_band, content, match):
    good = json.loads(open(tiny_band).read())
    if content == "FIELDS-mean":
        del good["mean"]
    elif content == "NEG":
        good["std"][3] = -1.0
    elif content == "NAN":
        good["sem"] = float("nan")
    elif content == "LEN":
        good["std"] = good["std"][:-1]
    elif content == "EXTRA":
        good["colour"] = "blue"
    text = json.dumps(good) if content.isupper() or content.startswith("FIELDS") else content
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        decodekit.strategies.get("eas")(band=str(path))


def test_bad_options():
    eas = decodekit.strategies.get("eas")
    with pytest.raises(ValueError, match="lower .* must be <= upper"):
        eas(lower=2.0, upper=1.0)
    with pytest.raises(ValueError, match="g must be >= 0"):
        eas(g=-1, lower=0.0, upper=1.0)
    with pytest.raises(ValueError, match="sampler must be one of 'typical', 'top_k'"):
        eas(sampler="nucleus", lower=0.0, upper=1.0)
    with pytest.raises(ValueError, match="typical_p"):
        eas(typical_p=0.0, lower=0.0, upper=1.0)
    with pytest.raises(ValueError, match="has no option 'patience'"):
        eas(patience=3)
    with pytest.raises(ValueError, match="patience must be >= 0"):
        decodekit.strategies.get("ead")(patience=-1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        eas(band="/no/such/band.json")


@pytest.mark.slow
def test_default_model_eas_and_ead(default_lm):
    prompts = ["The history of the city of Paris", "In the beginning of the twentieth century,"]
    greedy = decodekit.generate(default_lm, prompts, max_new_tokens=32, chat=False)
    wide = decodekit.generate(default_lm, prompts, "eas", max_new_tokens=32, chat=False, a=INF, seed=0)
    assert wide.token_ids == greedy.token_ids
    eas = decodekit.generate(default_lm, prompts, "eas", max_new_tokens=32, chat=False, seed=0)
    assert 0 < eas.stats.extra["sampled"] < 64 and eas.token_ids != greedy.token_ids
    ead = decodekit.generate(default_lm, prompts, "ead", max_new_tokens=32, chat=False, seed=0)
    assert ead.stats.extra["backoffs"] <= 20 and all(len(t) == 32 or t[-1] in default_lm.eos_token_ids
                                                     for t in ead.token_ids)
    assert not math.isnan(ead.traces[0].signals["eas_entropy"][0])
    assert os.path.exists(default_band_path())
