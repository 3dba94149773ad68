"""Loop detector: the section 11.3 oracles, device == host reference, scripted loops of periods 1..4
caught at the first step they qualify (and with the right period), never on loop-free text."""

from __future__ import annotations

import random

import pytest
import torch

import decodekit
from decodekit.monitors import LoopDetector
from decodekit.monitors.calibration import pydoc_prose
from decodekit.monitors.sequence import loop_detect, suffix_loops
from tests.scripted_lm import ranked_logits, scripted_lm

V, EOS = 40, 39
WARMUP = [30, 31, 32, 33, 34]  # no repeats before the loop starts


def test_host_oracles():
    a, b, c, d = 1, 2, 3, 4
    assert loop_detect([a, b, c, a, b, c, a, b, c]) == (True, 0, 3)
    assert loop_detect([a, b, c, d]) == (False, -1, 0)
    assert loop_detect([7, a, a, a, a], min_repeats=4) == (True, 1, 1)
    assert loop_detect([a, b, a, b, a], min_covered=6) == (False, -1, 0)


@pytest.mark.parametrize("seed", range(5))
def test_device_spans_equal_host_reference(seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(6):
        unit = [rng.randrange(5) for _ in range(rng.randint(1, 6))]
        rows.append([rng.randrange(5) for _ in range(rng.randint(0, 8))] + unit * rng.randint(1, 5))
    width = max(len(r) for r in rows) + 3
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    ends = []
    for i, r in enumerate(rows):
        ids[i, 3: 3 + len(r)] = torch.tensor(r, dtype=torch.long)
        ends.append(3 + len(r))
    spans = suffix_loops(ids, 3, torch.tensor(ends), max_period=8, window=64)  # [rows, 8]
    for i, r in enumerate(rows):
        for min_repeats in (2, 3):
            for min_covered in (1, 6):
                ok = (spans[i] >= min_covered) & (spans[i] >= min_repeats * torch.arange(1, 9))
                p = int(ok.long().argmax()) + 1 if bool(ok.any()) else 0
                host = loop_detect(r, 8, min_repeats, min_covered)
                assert (host[0], host[2]) == (bool(ok.any()), p), (r, min_repeats, min_covered)
                if host[0]:
                    assert len(r) - host[1] == int(spans[i, p - 1])


def _looping_lm(period: int, prompt_len: int):
    """Greedy: the warm-up tokens, then 1..period over and over."""
    def script(prefix):
        i = len(prefix) - prompt_len  # generated so far
        nxt = WARMUP[i] if i < len(WARMUP) else 1 + (i - len(WARMUP)) % period
        return ranked_logits([nxt, (nxt + 7) % 30 + 1], V)
    return scripted_lm(script, V, EOS)


@pytest.mark.parametrize("period", [1, 2, 3, 4])
def test_catches_scripted_loops_at_the_right_step(period):
    prompt = [20, 21]
    lm = _looping_lm(period, len(prompt))
    mon = LoopDetector(min_span=8, min_repeats=2)
    gen = decodekit.generate(lm, [prompt], max_new_tokens=30, monitors=[mon])
    toks = gen.token_ids[0]
    first = next(i for i in range(1, 31) if loop_detect(toks[:i], 32, 2, 8)[0])  # tokens when it qualifies
    assert [(f.step, f.action) for f in gen.flags] == [(first, "flag")]  # flagged once, at onset
    sig = gen.traces[0].signals
    assert sig["loop_period"][first - 1] == period
    assert sig["loop_span"][first - 1] == loop_detect(toks[:first], 32, 2, 8)[1] * -1 + first
    assert sig["loop_hit"][first - 2] == 0 and all(h == 1 for h in sig["loop_hit"][first - 1:])


def test_stop_action_ends_the_looping_row_only():
    loop = _looping_lm(3, 2).model.script

    def script(prefix):  # prompt [20, 21]: loops; prompt [22]: counts up, never repeats
        return loop(prefix) if prefix[0] == 20 else ranked_logits([len(prefix) % 38 + 1], V)
    gen = decodekit.generate(scripted_lm(script, V, EOS), [[20, 21], [22]], max_new_tokens=40,
                             monitors=[LoopDetector(action="stop")])
    assert gen.finish_reasons == ["monitor", "length"]
    assert len(gen.token_ids[0]) == 5 + 16 and len(gen.token_ids[1]) == 40  # 16 tokens of loop
    assert [(f.prompt, f.action) for f in gen.flags] == [(0, "stop")]


def test_silent_on_loop_free_text():
    prompt = [1]

    def counting(prefix):  # 1, 2, 3, ... never a repeat
        return ranked_logits([len(prefix) % 38 + 1], V)
    gen = decodekit.generate(scripted_lm(counting, V, EOS), [prompt], max_new_tokens=36,
                             monitors=[LoopDetector(min_span=4)])
    assert gen.flags == [] and max(gen.traces[0].signals["loop_span"]) == 0


def test_silent_on_natural_prose(tiny_lm):
    """Every prefix of real English prose, as bytes and as SmolLM-like word pieces: no loop."""
    text = " ".join(pydoc_prose()[:6])[:4000]
    byte_ids = tiny_lm.tokenizer(text).input_ids
    words = {w: i for i, w in enumerate(dict.fromkeys(text.split()))}
    word_ids = [words[w] for w in text.split()]
    mon = LoopDetector()
    p = torch.arange(1, 33)
    for toks in (byte_ids, word_ids):
        ends = torch.arange(2, len(toks) + 1)
        for chunk in ends.split(256):  # every prefix, 256 at a time
            ids = torch.tensor([toks]).expand(len(chunk), -1)
            spans = suffix_loops(ids, 0, chunk)  # [chunk, 32]
            hit = ((spans >= mon.min_span) & (spans >= mon.min_repeats * p)).any(1)
            assert not bool(hit.any()), int(chunk[hit][0])
