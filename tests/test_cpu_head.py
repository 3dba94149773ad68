"""decodekit.cpu_head: the small-batch vocabulary projection computes the model's own logits."""

from __future__ import annotations

import torch
from transformers import DynamicCache

import decodekit
from decodekit.cpu_head import MAX_ROWS, MIN_ROWS, PlainHead
from tests.toy import ByteTokenizer, tiny_model


def test_head_logits_equal_the_models_own():
    model = tiny_model(seed=3)
    head = PlainHead.of(model)
    assert head is not None and head.applies(4) and not head.applies(1) and not head.applies(MAX_ROWS + 1)
    ids = torch.randint(1, 250, (4, 7))
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[0, :3] = 0
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    kw = decodekit.load(model, ByteTokenizer())._cache_kw  # "cache" (transformers >= 5.2x) or "past_key_values"
    for keep in (0, 1):
        want = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=keep,
                     output_hidden_states=True, **{kw: DynamicCache(config=model.config)})
        got = head.run(model, keep, True, input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                       **{kw: DynamicCache(config=model.config)})
        torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.hidden_states[-1], want.hidden_states[-1])


def test_heads_it_does_not_know_are_left_to_the_model():
    model = tiny_model(seed=0)
    model.config.final_logit_softcapping = 30.0
    assert PlainHead.of(model) is None
    model = tiny_model(seed=0)
    model.config.model_type = "gemma"
    assert PlainHead.of(model) is None


def test_generation_is_unchanged_by_the_head(monkeypatch):
    lm = decodekit.load(tiny_model(seed=0), ByteTokenizer())
    assert lm._head is not None
    prompts = ["Hello there", "a", "The quick brown fox"]
    calls = []
    run = PlainHead.run
    monkeypatch.setattr(PlainHead, "run", lambda self, *a, **k: calls.append(1) or run(self, *a, **k))
    cases = ((prompts, "greedy", {}), (prompts[:1], "beam", {"num_beams": 4, "num_return_sequences": 4}))
    fast = [decodekit.generate(lm, p, s, max_new_tokens=10, **kw).candidates for p, s, kw in cases]
    assert calls  # the batched steps went through the head
    lm._head = None
    slow = [decodekit.generate(lm, p, s, max_new_tokens=10, **kw).candidates for p, s, kw in cases]
    for a, b in zip(fast, slow):
        assert [[c.token_ids for c in p] for p in a] == [[c.token_ids for c in p] for p in b]
        for pa, pb in zip(a, b):
            for ca, cb in zip(pa, pb):
                assert abs(ca.score - cb.score) < 1e-4
    assert MIN_ROWS == 2
