"""Greedy decoding equals transformers' greedy generate, token for token (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

import decodekit

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "List three primary colours.",
    "What is 17 times 3?",
    "Translate 'good morning' into German.",
    "def fibonacci(n):",
    "Summarise in one sentence: The Industrial Revolution began in Britain in the late 18th century "
    "and spread to Europe and North America, transforming economies that had been based on agriculture.",
    "Once upon a time, in a small village by the mountains, there lived",
]
N = 24


def _hf_greedy(lm, ids: list[int], n: int, **kw) -> list[int]:
    out = lm.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                            max_new_tokens=n, do_sample=False, **kw)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def prompt_ids(default_lm):
    chat = decodekit.api.encode_prompts(default_lm, PROMPTS[:4])
    raw = decodekit.api.encode_prompts(default_lm, PROMPTS[4:], chat=False)
    return chat + raw


@pytest.mark.slow
def test_greedy_equals_transformers(default_lm, prompt_ids):
    gen = decodekit.generate(default_lm, prompt_ids[:1], max_new_tokens=N)  # warm
    for ids in prompt_ids:
        gen = decodekit.generate(default_lm, [ids], max_new_tokens=N)
        assert gen.token_ids[0] == _hf_greedy(default_lm, ids, N)


@pytest.mark.slow
def test_batch_of_mixed_lengths_equals_one_by_one(default_lm, prompt_ids):
    batch = decodekit.generate(default_lm, prompt_ids, max_new_tokens=N)
    assert len({len(p) for p in prompt_ids}) > 4
    for ids, got in zip(prompt_ids, batch.token_ids):
        assert got == decodekit.generate(default_lm, [ids], max_new_tokens=N).token_ids[0]


@pytest.mark.slow
def test_greedy_with_penalties_equals_transformers(default_lm, prompt_ids):
    for ids in prompt_ids[4:6]:
        gen = decodekit.generate(default_lm, [ids], max_new_tokens=N, repetition_penalty=1.3,
                                 no_repeat_ngram_size=3)
        assert gen.token_ids[0] == _hf_greedy(default_lm, ids, N, repetition_penalty=1.3,
                                              no_repeat_ngram_size=3)


def test_greedy_logprobs_are_model_logprobs(tiny_lm):
    gen = decodekit.generate(tiny_lm, "abc", max_new_tokens=5)
    ids = tiny_lm.tokenizer("abc").input_ids + gen.token_ids[0]
    with torch.no_grad():
        logp = torch.log_softmax(tiny_lm.model(torch.tensor([ids])).logits[0, 2:-1], -1)
    want = logp.gather(-1, torch.tensor(gen.token_ids[0])[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(gen.logprobs[0]), want, rtol=1e-4, atol=1e-4)
    assert gen.token_ids[0] == logp.argmax(-1).tolist()
