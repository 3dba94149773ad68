"""On the default model: heads trained for a few hundred steps by self-distillation propose better
than randomly initialised heads (measured on held-out prompts), and blockwise decoding with them
still equals greedy."""

from __future__ import annotations

import pytest

import decodekit
from decodekit.cli.prompts import default_prompts
from decodekit.strategies.speculative import BlockwiseHeads, acceptance, train_heads

pytestmark = pytest.mark.slow


def test_trained_heads_beat_random_heads(default_lm):
    prompts = [p.prompt for p in default_prompts()]
    train, held_out = prompts[:-4], prompts[-4:]
    heads = train_heads(default_lm, train, num_heads=3, steps=300, batch_positions=128, max_new_tokens=32)
    random = acceptance(default_lm, BlockwiseHeads(default_lm.config.hidden_size, 3, init="random"), held_out,
                        max_new_tokens=32)
    trained = acceptance(default_lm, heads, held_out, max_new_tokens=32)
    print(f"random heads {random}\ntrained heads {trained}")
    assert trained["acceptance_rate"] > random["acceptance_rate"] + 0.05
    assert trained["accepted_per_verify"] > random["accepted_per_verify"]
    want = decodekit.generate(default_lm, held_out, "greedy", max_new_tokens=32).token_ids
    got = decodekit.generate(default_lm, held_out, "blockwise", heads=heads, draft_tokens=3, max_new_tokens=32)
    assert got.token_ids == want
