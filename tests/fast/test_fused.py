"""The fused Llama-family step (decodekit.fast.fused) computes transformers' forward: runs on CPU.

Same logits as transformers' own forward over the same static cache (prefill, decode, verify
widths, rows with holes in their masks), for Llama with GQA / MHA, Qwen2 (q/k/v biases) and the
llama3 rope scaling; the modules keep working (their weights became views of the fused ones);
greedy and sampling through the fused path equal the eager path token for token. With Triton, the
decode and verify steps run the GEMV kernels (norm + projection, activation + down + residual, and
once the output projection too), prefill keeps cuBLAS.
"""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import decodekit
from decodekit.fast import FastPath
from decodekit.fast import gemv as G
from decodekit.fast import kernels as K
from decodekit.fast.attention import SlabView
from decodekit.fast.fused import FusedLlama, fused_reason
from decodekit.fast.launch import kernel_reason
from decodekit.fast.path import _step
from tests.toy import ByteTokenizer, tiny_model

COMMON = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              max_position_embeddings=256, pad_token_id=0, tie_word_embeddings=False)


def _llama(kv_heads=2, **extra):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(num_attention_heads=4, num_key_value_heads=kv_heads, **COMMON, **extra)).eval()


def _qwen2():
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(num_attention_heads=4, num_key_value_heads=2, **COMMON)).eval()


MODELS = {
    "llama-gqa": _llama,
    "llama-mha": functools.partial(_llama, kv_heads=4),
    "llama3-rope": functools.partial(_llama, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                           "original_max_position_embeddings": 64}),
    "qwen2-bias": _qwen2,
}


def _cache(model, rows, C):
    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    shape = (rows, cfg.num_key_value_heads, C, hd)
    return [torch.zeros(shape) for _ in range(2 * cfg.num_hidden_layers)]


def _kernels_or_skip(kernels: bool) -> None:
    reason = kernel_reason(torch.device("cpu"), interpret=True)
    if kernels and reason is not None:
        pytest.skip(f"decodekit's Triton kernels: {reason}")


def _count_calls(monkeypatch, names: tuple[str, ...]) -> dict[str, list[int]]:
    """Record the row count of each call of the kernels ``names`` that the fused step makes."""
    calls = {n: [] for n in names}
    for n in names:
        mod = G if hasattr(G, n) else K
        fn = getattr(mod, n)
        monkeypatch.setattr(mod, n, lambda x, *a, _fn=fn, _n=n, **kw: calls[_n].append(x.shape[0]) or _fn(x, *a, **kw))
    return calls


# the Triton variants run under Triton's interpreter on the CPU (slow): a subset of the cases;
# "triton" is the default (GEMV kernels for decode steps of <= 4 tokens, with the output projection),
# "triton-plain" has no GEMV kernels (9 kernels a layer), "triton-gemv" takes them up to 16 tokens
# (also the 12-token verify) without the output projection, "triton-o" with it
LOGIT_CASES = [(name, "torch") for name in MODELS] + [("llama-gqa", "triton"), ("llama-gqa", "triton-plain"),
                                                      ("llama-gqa", "triton-gemv"), ("qwen2-bias", "triton-o")]
GEMV_MODES = {"triton-plain": dict(GEMV=False), "triton-gemv": dict(GEMV_FIT_ROWS=16, GEMV_O_PROJ=False),
              "triton-o": dict(GEMV_FIT_ROWS=16, GEMV_O_PROJ=True)}


@pytest.mark.parametrize("name,mode", LOGIT_CASES, ids=[f"{n}-{m}" for n, m in LOGIT_CASES])
def test_fused_logits_equal_transformers(name, mode, monkeypatch):
    kernels = mode != "torch"
    _kernels_or_skip(kernels)
    for name_, value in GEMV_MODES.get(mode, {}).items():
        monkeypatch.setattr(G, name_, value)
    calls = _count_calls(monkeypatch, ("norm_linear", "act_linear_add_", "linear_add_", "rms_norm"))
    model = MODELS[name]()
    reference = functools.partial(_step, model, torch.float32, decodekit.load(model, ByteTokenizer())._cache_kw)
    fused = FusedLlama(model, kernels=kernels)  # rebinds the modules' weights as views: the reference still works
    assert fused.kernels == kernels
    rows, C = 3, 24
    mask = torch.ones(rows, C, dtype=torch.long)
    mask[0, :5] = 0  # left padding
    mask[1, 7:9] = 0  # holes (rolled-back / rejected columns)
    cols = torch.arange(C)
    kv_ref, kv_fused = _cache(model, rows, C), _cache(model, rows, C)
    g = torch.Generator().manual_seed(1)
    start = 0
    for T, last_only in ((10, True), (1, False), (4, False), (1, False)):  # prefill, decode, verify, decode
        ids = torch.randint(1, 97, (rows, T), generator=g)
        write = cols[start:start + T]
        want, hid_want = reference(mask, cols, ids, write, SlabView(kv_ref, write), last_only, True)
        got, hid_got = fused(mask, cols, ids, write, SlabView(kv_fused, write), last_only, True)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(hid_got, hid_want[:, -got.shape[1]:], rtol=1e-4, atol=1e-4)
        start += T
    layers = model.config.num_hidden_layers

    def norms(*separate: bool) -> list[int]:
        """rms_norm's rows over the 4 forwards: the layers' two norms where they are not inside a
        GEMV kernel (``separate``), and the final norm of each forward (the prefill's last tokens)."""
        rows_of = (30, 3, 12, 3)
        return [n for T, sep, last in zip(rows_of, separate, (3, 3, 12, 3)) for n in [T] * 2 * layers * sep + [last]]

    if mode == "triton":  # the defaults: decode steps (3 tokens) fused, prefill and verify (12) cuBLAS
        assert calls["rms_norm"] == norms(True, False, True, False)
        assert calls["norm_linear"] == [3] * 2 * layers + [3] * 2 * layers
        assert calls["act_linear_add_"] == [3] * layers + [3] * layers == calls["linear_add_"]
    elif mode == "triton-plain":  # every step: rms_norm, then cuBLAS
        assert calls["rms_norm"] == norms(True, True, True, True)
        assert not calls["norm_linear"] and not calls["act_linear_add_"] and not calls["linear_add_"]
    elif kernels:  # prefill (30 tokens) keeps cuBLAS after rms_norm; decode (3) and verify (12) fuse
        assert calls["rms_norm"] == norms(True, False, False, False)
        assert calls["norm_linear"] == [3] * 2 * layers + [12] * 2 * layers + [3] * 2 * layers
        assert calls["act_linear_add_"] == [3] * layers + [12] * layers + [3] * layers
        assert calls["linear_add_"] == (calls["act_linear_add_"] if mode == "triton-o" else [])
    else:
        assert not any(calls.values())
    owned = mask[:, None, :start, None].bool().expand(-1, kv_ref[0].shape[1], -1, kv_ref[0].shape[-1])
    for a, b in zip(kv_fused, kv_ref):  # padding columns hold garbage nobody reads (and may differ)
        torch.testing.assert_close(a[:, :, :start][owned], b[:, :, :start][owned], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,split_k", [("llama-gqa", 1), ("qwen2-bias", 1), ("llama-gqa", None)])
def test_fused_large_weight_launch_equals_transformers(name, split_k, monkeypatch):
    """Every weight counted as large (GEMV_MAX_ELEMENTS = 0): one-token decode steps take the GEMV
    kernels with the large-weight launch (4-6 reduction blocks a program summed late; or, with the
    default split rule, split-K over them), wider steps keep cuBLAS; logits, hidden states and the
    cache equal transformers' to fp32 rounding either way."""
    _kernels_or_skip(True)
    monkeypatch.setattr(G, "GEMV_MAX_ELEMENTS", 0)
    monkeypatch.setattr(G, "LARGE_BLOCKS", dict(block_o=8, block_k=16, late=True, split_k=split_k))
    calls = _count_calls(monkeypatch, ("norm_linear", "act_linear_add_", "linear_add_"))
    model = MODELS[name]()
    reference = functools.partial(_step, model, torch.float32, decodekit.load(model, ByteTokenizer())._cache_kw)
    fused = FusedLlama(model, kernels=True)
    C = 16
    mask, cols = torch.ones(1, C, dtype=torch.long), torch.arange(C)
    kv_ref, kv_fused = _cache(model, 1, C), _cache(model, 1, C)
    g = torch.Generator().manual_seed(2)
    start = 0
    for T in (6, 1, 3, 1):  # prefill, decode, verify, decode
        ids = torch.randint(1, 97, (1, T), generator=g)
        write = cols[start:start + T]
        want, hid_want = reference(mask, cols, ids, write, SlabView(kv_ref, write), False, True)
        got, hid_got = fused(mask, cols, ids, write, SlabView(kv_fused, write), False, True)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(hid_got, hid_want, rtol=1e-4, atol=1e-4)
        start += T
    layers = model.config.num_hidden_layers
    assert calls["norm_linear"] == [1] * 4 * layers  # q/k/v and gate/up of the two decode steps
    assert calls["act_linear_add_"] == [1] * 2 * layers == calls["linear_add_"]
    for a, b in zip(kv_fused, kv_ref):
        torch.testing.assert_close(a[:, :, :start], b[:, :, :start], rtol=1e-5, atol=1e-5)


def test_kernels_without_fused_step_or_triton_is_a_clear_error():
    lm = decodekit.load(tiny_model(seed=0), ByteTokenizer())
    with pytest.raises(ValueError, match="kernels=True needs the fused step"):
        FastPath(lm, capture=False, fused=False, kernels=True)
    assert FastPath(lm, capture=False).kernels is False  # on CPU the default never interprets


def test_unsupported_models_are_named():
    model = _llama()
    model.config.model_type = "gemma"
    assert "gemma" in fused_reason(model)
    with pytest.raises(ValueError, match="no fused step"):
        FusedLlama(model)


GEN_CASES = [("greedy", {}, False), ("sample", {"seed": 3, "temperature": 0.8, "top_k": 20}, False),
             ("beam", {"num_beams": 3}, False), ("prompt_lookup", {"num_candidates": 1}, False),
             ("greedy", {}, True), ("prompt_lookup", {"num_candidates": 1}, True)]


@pytest.mark.parametrize("strategy,kw,kernels", GEN_CASES,
                         ids=[f"{s}-{'triton' if k else 'torch'}" for s, _, k in GEN_CASES])
def test_generation_through_the_fused_path_equals_eager(strategy, kw, kernels):
    _kernels_or_skip(kernels)
    lm = decodekit.load(tiny_model(seed=0), ByteTokenizer())
    prompts = ["Hello there", "a", "The quick brown fox"]
    eager = decodekit.generate(lm, prompts, strategy, max_new_tokens=12, **kw)
    lm.fast = FastPath(lm, capture=False, headroom=8, kernels=kernels)
    assert lm.fast.fused and lm.fast.kernels == kernels
    fast = decodekit.generate(lm, prompts, strategy, max_new_tokens=12, **kw)
    assert fast.token_ids == eager.token_ids


@pytest.mark.parametrize("fit_rows", [4, 16])
def test_output_head_gemv(fit_rows, monkeypatch):
    """Without hidden states, decode and verify steps of a small model run the final norm and the
    output head as one norm_linear (head_fits): logits as transformers' (wider steps keep cuBLAS)."""
    _kernels_or_skip(True)
    monkeypatch.setattr(G, "GEMV_FIT_ROWS", fit_rows)
    monkeypatch.setattr(G, "GEMV_HEAD", True)
    calls = _count_calls(monkeypatch, ("norm_linear",))
    model = MODELS["llama-gqa"]()
    vocab = model.config.vocab_size
    reference = functools.partial(_step, model, torch.float32, decodekit.load(model, ByteTokenizer())._cache_kw)
    fused = FusedLlama(model, kernels=True)
    rows, C = 1, 24
    mask, cols = torch.ones(rows, C, dtype=torch.long), torch.arange(C)
    kv_ref, kv_fused = _cache(model, rows, C), _cache(model, rows, C)
    g = torch.Generator().manual_seed(2)
    start, heads = 0, []
    for T, last_only in ((6, True), (1, False), (5, False), (1, False)):  # prefill, decode, verify, decode
        ids = torch.randint(1, 97, (rows, T), generator=g)
        write = cols[start:start + T]
        want, _ = reference(mask, cols, ids, write, SlabView(kv_ref, write), last_only, False)
        n = len(calls["norm_linear"])
        got, hid = fused(mask, cols, ids, write, SlabView(kv_fused, write), last_only, False)
        assert hid is None
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        heads.append(sum(1 for _ in calls["norm_linear"][n:]) - 2 * model.config.num_hidden_layers * (
            G.gemv_fits(rows * T, 192, 64)))
        start += T
    assert G.head_fits(1, vocab, 64)
    assert heads == [1, 1, int(fit_rows >= 5), 1]  # prefill's last token, decode, verify if it fits, decode
