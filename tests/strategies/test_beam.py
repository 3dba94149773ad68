"""Beam search: num_beams=1 is greedy; it equals transformers' beam search (and beam sampling):
all returned sequences and their scores, on tiny random models and on the default model."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import StoppingCriteria

import decodekit
from decodekit.strategies.beam import Beam
from tests.toy import EOS, ByteTokenizer, tiny_model

PAD = ByteTokenizer.pad_token_id
TINY_PROMPTS = ["Hello there", "A", "The cat sat on", "xyz"]


def eos_lm(seed: int = 0, eos_bias: float = 1.5) -> decodekit.LM:
    """A tiny model whose EOS is likely enough that hypotheses end at many lengths, and which never
    produces the pad id (so transformers' padded outputs read back unambiguously)."""
    model = tiny_model(seed)
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[EOS], head.bias[PAD] = eos_bias, -1e4
    model.lm_head = head
    return decodekit.load(model, ByteTokenizer())


def hf_beam(lm: decodekit.LM, prompts: list[list[int]], **kw) -> list[list[tuple[list[int], float]]]:
    """transformers' generate on left-padded prompts: per prompt, (generated columns, score)."""
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])  # [P, width]
    mask = (torch.arange(width)[None, :] >= width - torch.tensor([len(p) for p in prompts])[:, None]).long()
    out = lm.model.generate(ids, attention_mask=mask, eos_token_id=EOS, pad_token_id=PAD, output_scores=True,
                            return_dict_in_generate=True, **kw)
    seqs = out.sequences[:, width:].tolist()  # [P * nrs, L]
    scores = out.sequences_scores.tolist() if out.sequences_scores is not None else [0.0] * len(seqs)
    n = len(seqs) // len(prompts)
    return [list(zip(seqs[i * n:(i + 1) * n], scores[i * n:(i + 1) * n])) for i in range(len(prompts))]


def _unpad(toks: list[int]) -> list[int]:
    """transformers fills after EOS (with EOS when the pad id is 0); the pad id is never generated."""
    toks = toks[: toks.index(EOS) + 1] if EOS in toks else toks
    while toks and toks[-1] == PAD:
        toks = toks[:-1]
    return toks


def assert_same(gen: decodekit.Generation, ref: list[list[tuple[list[int], float]]], rel: float = 1e-5):
    """Every returned sequence equal and scores equal up to rounding: the
    prompt runs through the model once here, once per beam in transformers (other matmul shapes)."""
    assert len(gen.candidates) == len(ref)
    for cands, want in zip(gen.candidates, ref):
        assert len(cands) == len(want)
        for c, (toks, score) in zip(cands, want):
            assert c.token_ids == _unpad(toks)
            assert c.score == pytest.approx(score, rel=rel, abs=1e-6)


# ----------------------------------------------------------------------------- degenerate settings
def test_one_beam_is_greedy(tiny_lm):
    """(A repetition penalty acts on log-probs in beam search, on logits in greedy: not compared.)"""
    prompts = [tiny_lm.tokenizer.encode(p) for p in TINY_PROMPTS]
    for kw in ({}, {"no_repeat_ngram_size": 2}):
        greedy = decodekit.generate(tiny_lm, prompts, "greedy", max_new_tokens=20, **kw)
        beam = decodekit.generate(tiny_lm, prompts, "beam", num_beams=1, max_new_tokens=20, **kw)
        assert beam.token_ids == greedy.token_ids
        for got, want in zip(beam.logprobs, greedy.logprobs):
            assert got == pytest.approx(want)


def test_one_beam_is_greedy_with_eos():
    lm = eos_lm(1)
    prompts = [lm.tokenizer.encode(p) for p in TINY_PROMPTS]
    greedy = decodekit.generate(lm, prompts, "greedy", max_new_tokens=12)
    beam = decodekit.generate(lm, prompts, "beam", num_beams=1, max_new_tokens=12)
    assert EOS in sum(greedy.token_ids, [])  # some prompt ends early
    assert beam.token_ids == greedy.token_ids
    assert beam.finish_reasons == greedy.finish_reasons


# ----------------------------------------------------------------------------- transformers parity
@pytest.mark.parametrize("seed", [0, 2])
def test_equals_transformers_on_tiny_models(seed):
    lm = eos_lm(seed)
    prompts = [lm.tokenizer.encode(p) for p in TINY_PROMPTS[:2]]
    grid = itertools.product([2, 3, 4], [1.0, 0.0, 2.0, -1.0], [False, True, "never"])
    for i, (nb, lp, es) in enumerate(grid):
        nrs, n = 1 + i % nb, (4, 10)[i % 2]
        kw = dict(num_beams=nb, length_penalty=lp, early_stopping=es, num_return_sequences=nrs, max_new_tokens=n)
        gen = decodekit.generate(lm, prompts, "beam", **kw)
        assert_same(gen, hf_beam(lm, prompts, do_sample=False, **kw))


def test_penalties_equal_transformers():
    lm = eos_lm(3)
    prompts = [lm.tokenizer.encode(p) for p in TINY_PROMPTS]
    kw = dict(num_beams=3, num_return_sequences=3, max_new_tokens=12, repetition_penalty=1.5,
              no_repeat_ngram_size=2)
    assert_same(decodekit.generate(lm, prompts, "beam", **kw), hf_beam(lm, prompts, do_sample=False, **kw))


@pytest.mark.parametrize("warp", [dict(temperature=0.7, top_k=20, top_p=0.9), dict(temperature=1.3), dict(top_k=5)])
def test_beam_sampling_equals_transformers(warp):
    """Same seed, same draws: the candidates are sampled exactly as transformers samples them."""
    lm = eos_lm(4)
    prompts = [lm.tokenizer.encode("Hello")]
    kw = dict(num_beams=3, num_return_sequences=3, max_new_tokens=8)
    gen = decodekit.generate(lm, prompts, "beam", do_sample=True, seed=123, **kw, **warp)
    torch.manual_seed(123)
    full = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, **warp}
    assert_same(gen, hf_beam(lm, prompts, do_sample=True, **kw, **full))
    again = decodekit.generate(lm, prompts, "beam", do_sample=True, seed=123, **kw, **warp)
    assert again.candidates == gen.candidates


# ----------------------------------------------------------------------------- stopping
def test_stop_strings_end_hypotheses(tiny_lm):
    prompt = [tiny_lm.tokenizer.encode("Hello there")]
    free = decodekit.generate(tiny_lm, prompt, "beam", num_beams=3, max_new_tokens=12)
    stop = free.text[3]  # a character the best beam writes
    gen = decodekit.generate(tiny_lm, prompt, "beam", num_beams=3, num_return_sequences=3,
                             max_new_tokens=12, stop_strings=[stop])
    assert any(c.finish_reason == "stop_string" for c in gen.candidates[0])
    for c in gen.candidates[0]:
        if c.finish_reason == "stop_string":  # the stop string appears with the last token, not before
            assert stop in c.text and stop not in tiny_lm.decode(c.token_ids[:-1])
        else:
            assert stop not in c.text


class _StopAfter(StoppingCriteria):
    def __init__(self, length: int):
        self.length = length

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)


def test_beams_stopped_by_criteria_become_hypotheses(tiny_lm):
    ids = tiny_lm.tokenizer.encode("Hello there")
    gen = decodekit.generate(tiny_lm, [ids], "beam", num_beams=3, num_return_sequences=3, max_new_tokens=20,
                             stopping_criteria=[_StopAfter(len(ids) + 5)])
    assert [len(c.token_ids) for c in gen.candidates[0]] == [5, 5, 5]
    assert {c.finish_reason for c in gen.candidates[0]} == {"criteria"}
    free = decodekit.generate(tiny_lm, [ids], "beam", num_beams=3, num_return_sequences=3, max_new_tokens=5)
    assert [c.token_ids for c in gen.candidates[0]] == [c.token_ids for c in free.candidates[0]]


# ----------------------------------------------------------------------------- cache and batches
def test_cache_rows_are_reordered_in_place(tiny_lm):
    enc = tiny_lm.encode([[5, 6, 7], [8, 9, 10], [11, 12, 13]])
    cache = tiny_lm.new_cache()
    tiny_lm.forward(enc.ids, cache, enc.mask)
    layer = cache.layers[0]
    before, ptr = layer.keys.clone(), layer.keys.data_ptr()
    tiny_lm.select_rows(cache, torch.tensor([1, 1, 0]))  # row 2 <- 0, row 0 <- 1, row 1 stays
    assert layer.keys.data_ptr() == ptr  # same storage: nothing re-allocated
    assert torch.equal(layer.keys, before[[1, 1, 0]])


def test_batch_equals_one_by_one():
    lm = eos_lm(5)
    prompts = [lm.tokenizer.encode(p) for p in TINY_PROMPTS]
    kw = dict(num_beams=3, num_return_sequences=2, max_new_tokens=10)
    batch = decodekit.generate(lm, prompts, "beam", **kw)
    for p, cands in zip(prompts, batch.candidates):
        alone = decodekit.generate(lm, [p], "beam", **kw).candidates[0]
        assert [c.token_ids for c in cands] == [c.token_ids for c in alone]
        assert [c.score for c in cands] == pytest.approx([c.score for c in alone], rel=1e-5)


# ----------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("options", [
    dict(num_beams=0), dict(num_beams=2, num_return_sequences=3), dict(num_return_sequences=0),
    dict(early_stopping="always"), dict(length_penalty=float("nan")), dict(temperature=0.5),
    dict(do_sample=True, temperature=0.0), dict(do_sample=True, top_p=1.5), dict(repetition_penalty=0.0),
    dict(no_repeat_ngram_size=-1), dict(num_beams=2.0),
])
def test_bad_configs_raise(options):
    with pytest.raises(ValueError):
        Beam(**options)


def test_registered_with_its_options():
    fields = {f["name"] for f in decodekit.strategies.available()["beam"]}
    assert {"num_beams", "length_penalty", "early_stopping", "num_return_sequences", "do_sample"} <= fields


# ----------------------------------------------------------------------------- the default model
DEFAULT_PROMPTS = [
    ("Name three uses for a paperclip.", True),
    ("What is the capital of Italy?", True),
    ("The best way to learn a new language is", False),
    ("def fibonacci(n):", False),
]
DEFAULT_SETTINGS = [
    dict(num_beams=2, num_return_sequences=2),
    dict(num_beams=4, num_return_sequences=4),
    dict(num_beams=4, num_return_sequences=2, length_penalty=2.0, early_stopping=True),
    dict(num_beams=3, num_return_sequences=3, length_penalty=0.0, early_stopping="never"),
    dict(num_beams=5, num_return_sequences=1, length_penalty=-0.5),
]


@pytest.mark.slow
def test_equals_transformers_on_the_default_model(default_lm):
    prompts = [decodekit.api.encode_prompts(default_lm, [t], chat=c)[0] for t, c in DEFAULT_PROMPTS]
    eos = default_lm.model.generation_config.eos_token_id
    for settings in DEFAULT_SETTINGS:
        for ids in prompts:
            gen = decodekit.generate(default_lm, [ids], "beam", max_new_tokens=20, eos_token_id=eos, **settings)
            out = default_lm.model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False,
                max_new_tokens=20, eos_token_id=eos, pad_token_id=eos, output_scores=True,
                return_dict_in_generate=True, **settings)
            for c, row, score in zip(gen.candidates[0], out.sequences[:, len(ids):].tolist(),
                                     out.sequences_scores.tolist()):
                assert c.token_ids == (row[: row.index(eos) + 1] if eos in row else row)
                assert c.score == pytest.approx(score, rel=1e-5)
            assert len(gen.candidates[0]) == settings["num_return_sequences"]
