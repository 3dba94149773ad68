"""The static-cache path of decodekit.fast without CUDA graphs: runs on CPU, in CI.

The graph path replays exactly these forwards (same buffers, same kernels), so equality here plus
the GPU tests' graph == no-graph check cover the fast path end to end.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig

import decodekit
from decodekit.fast import FastCache, FastPath, bucket, unsupported_reason
from decodekit.fast.attention import attention_bias, positions
from tests.toy import tiny_lm

PROMPTS = ["Hello there", "a", "The quick brown fox jumps"]


def _fast(lm, **kw) -> FastPath:
    lm.fast = FastPath(lm, capture=False, **kw)
    return lm.fast


def _both(lm, prompts, strategy="greedy", **kw):
    lm.fast = None
    eager = decodekit.generate(lm, prompts, strategy, **kw)
    _fast(lm, headroom=8)
    fast = decodekit.generate(lm, prompts, strategy, **kw)
    lm.fast = None
    return eager, fast


def test_bucket():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 4, 4, 8, 8, 16]


def test_bias_and_positions_follow_the_mask():
    mask = torch.tensor([[0, 1, 1, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])  # [2, 8], holes in row 0
    write = torch.tensor([4, 5])  # two new tokens at columns 4 and 5
    bias = attention_bias(mask, torch.arange(8), write, torch.float32)  # [2, 1, 2, 8]
    allowed = bias[:, 0] == 0
    assert allowed[0].tolist() == [[False, True, True, False, True, False, False, False],
                                   [False, True, True, False, True, True, False, False]]
    assert allowed[1].tolist() == [[True] * 5 + [False] * 3, [True] * 6 + [False] * 2]
    assert positions(mask, write).tolist() == [[2, 3], [4, 5]]  # holes do not count


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS + ["x y z"]], ids=["batch1", "batch4"])
@pytest.mark.parametrize("strategy,kw", [("greedy", {}), ("sample", {"seed": 3, "temperature": 0.8})])
def test_static_path_equals_eager(prompts, strategy, kw):
    lm = tiny_lm()
    eager, fast = _both(lm, prompts, strategy, max_new_tokens=16, **kw)
    assert fast.token_ids == eager.token_ids
    for a, b in zip(fast.logprobs, eager.logprobs):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)


@pytest.mark.parametrize("strategy", ["beam", "prompt_lookup", "self_speculative"])
def test_static_path_equals_eager_other_strategies(strategy):
    """Row reordering (beam), k+1-token verify with holes and crops (speculative) over a static cache."""
    if strategy == "beam":
        pytest.importorskip("decodekit.strategies.beam")
    if strategy not in decodekit.strategies.available():
        pytest.skip(f"{strategy} is not registered")
    lm = tiny_lm()
    eager, fast = _both(lm, PROMPTS, strategy, max_new_tokens=16, seed=0)
    assert fast.token_ids == eager.token_ids


def test_slab_grows_past_its_capacity():
    lm = tiny_lm()
    kw = dict(max_new_tokens=110, eos_token_id=400)
    eager = decodekit.generate(lm, PROMPTS[2:], **kw)
    path = _fast(lm, headroom=8)  # 25 + 8 columns -> a 128-column slab, outgrown at token 104
    fast = decodekit.generate(lm, PROMPTS[2:], **kw)
    assert fast.token_ids == eager.token_ids and len(fast.token_ids[0]) == 110
    assert max(s.capacity for s in path.slabs[1]) > 128


def test_slabs_are_reused_across_calls():
    lm = tiny_lm()
    path = _fast(lm)
    first = decodekit.generate(lm, PROMPTS, max_new_tokens=8)
    second = decodekit.generate(lm, PROMPTS, max_new_tokens=8)
    assert first.token_ids == second.token_ids
    assert sum(len(v) for v in path.slabs.values()) == 1


def test_forward_with_holes_and_cache_ops_match_dynamic_cache():
    lm = tiny_lm()
    _fast(lm)
    ids = torch.randint(3, 200, (3, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6, [0, 1, 1, 1, 1, 1]])
    fast, dyn = lm.new_cache(), DynamicCache(config=lm.config)
    assert isinstance(fast, FastCache)
    for cache in (fast, dyn):
        lm.forward(ids, cache, mask)
        lm.select_rows(cache, torch.tensor([2, 0, 0, 1]))  # 3 -> 4 rows, same bucket
        lm.crop(cache, 5)  # drop the last column: it becomes a hole for everyone
    assert lm.cache_length(fast) == lm.cache_length(dyn) == 5
    mask4 = mask[[2, 0, 0, 1], :5]
    nxt = torch.randint(3, 200, (4, 2))
    step = torch.cat([mask4, torch.ones(4, 2, dtype=torch.long)], 1)
    step[1, 5] = 0  # a hole inside the new tokens
    copy = lm.copy_cache(fast)
    a = lm.forward(nxt, fast, step).logits
    b = lm.forward(nxt, dyn, step).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(lm.forward(nxt, copy, step).logits, a, atol=1e-6)  # the copy is independent
    lm.select_rows(fast, torch.tensor([3]))  # bucket 4 -> 1: moves slab
    lm.select_rows(dyn, torch.tensor([3]))
    one = torch.ones(1, 1, dtype=torch.long)
    assert torch.allclose(lm.forward(nxt[3:, :1], fast, torch.cat([step[3:], one], 1)).logits,
                          lm.forward(nxt[3:, :1], dyn, torch.cat([step[3:], one], 1)).logits, atol=1e-5)


def test_hidden_states_on_the_static_path():
    lm = tiny_lm()
    ids, mask = torch.randint(3, 200, (2, 4)), torch.ones(2, 4, dtype=torch.long)
    ref = lm.forward(ids, DynamicCache(config=lm.config), mask, hidden=True)
    _fast(lm)
    out = lm.forward(ids, lm.new_cache(), mask, hidden=True)
    assert torch.allclose(out.hidden, ref.hidden, atol=1e-5)


def test_switches_and_errors():
    lm = tiny_lm()
    assert isinstance(lm.new_cache(), DynamicCache)  # CPU: no fast path unless installed
    _fast(lm)
    lm.cuda_graphs = False
    assert isinstance(lm.new_cache(), DynamicCache)
    assert decodekit.load(lm, cuda_graphs=True).cuda_graphs
    with pytest.raises(ValueError, match="CUDA"):
        FastPath(lm, capture=True)
    cache = FastPath(lm, capture=False).new_cache()
    with pytest.raises(ValueError, match="cache columns"):
        cache.forward(torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))


def test_unsupported_models_are_refused():
    lm = tiny_lm()
    assert unsupported_reason(lm) is None
    lm.config.layer_types = ["sliding_attention", "full_attention"]
    assert "layer types" in unsupported_reason(lm)
    lm.config = LlamaConfig(sliding_window=16)
    lm.config.use_sliding_window = True
    assert "sliding" in unsupported_reason(lm)
