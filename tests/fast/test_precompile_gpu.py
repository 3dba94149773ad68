"""Compiling a slab's Triton kernels ahead (decodekit.fast.precompile): complete and side-effect free.

On a GPU only. After the precompile of a new slab, its prefill and decode forwards must compile no
further kernel (Triton's in-memory kernel caches do not grow), the slab's cache and mask must be
untouched by the dry forwards, and the tokens must equal those of a decode that compiled its
kernels on first launch.
"""

from __future__ import annotations

import pytest
import torch

import decodekit
import decodekit.fast.precompile as P
from decodekit.fast import FastPath
from decodekit.fast import gemv as G
from decodekit.fast import kernels as K
from decodekit.fast import launch as L
from decodekit.fast import pick as PK
from decodekit.fast import slab as SL
from decodekit.fast import token_step as TS
from tests.toy import ByteTokenizer, tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

KERNELS = [K._rms_norm_kernel, K._rope_write_kernel, K._attend_split_kernel, K._silu_mul_kernel, G._gemv_kernel,
           PK._pick_kernel, TS._finish_kernel]


def _compiled() -> int:
    """Kernels compiled in this process so far (every specialisation of decodekit's forward kernels)."""
    return sum(len(cache[0]) for k in KERNELS for cache in k.device_caches.values())


@pytest.fixture()
def lm():
    return decodekit.load(tiny_model(seed=3).to("cuda", torch.bfloat16), ByteTokenizer())


def test_precompile_covers_prefill_and_decode(lm):
    lm.fast = FastPath(lm, headroom=200)  # a capacity no other test used: new specialisations
    assert lm.fast.kernels
    lease = lm.fast.lease(1, 333)
    slab = lease.slab
    for k in KERNELS:  # forget this process's compiled kernels (they load again from Triton's disk cache)
        k.device_caches.clear()
    before = _compiled()
    kv = [t.clone() for t in slab.kv]
    mask = slab.mask.clone()
    assert P.precompile(lm.fast, slab, [23, 1]) > 0
    assert _compiled() > before, "the precompile compiled nothing"
    assert all(torch.equal(a, b) for a, b in zip(kv, slab.kv)) and torch.equal(mask, slab.mask)
    after = _compiled()
    slab.precompiled = True
    ids = torch.randint(5, 200, (1, 23), device="cuda")
    slab.mask[:1, :23] = 1
    slab.run(ids, 0, True, False)  # prefill
    slab.mask[:1, 23] = 1
    slab.run(ids[:, :1], 23, False, False)  # a decode step (captures its graph)
    PK.greedy_pick(torch.randn(1, lm.vocab_size, device="cuda"))  # greedy's choice after it
    assert _compiled() == after, "a forward compiled a kernel the precompile missed"


def test_precompile_covers_a_whole_greedy_decode(lm, monkeypatch):
    """Greedy's step graph (the pick and the one-kernel bookkeeping after the forward) too."""
    lm.fast = FastPath(lm, headroom=210)
    counts = []

    def spy(*args):
        seconds = P.precompile(*args)
        counts.append(_compiled())
        return seconds

    monkeypatch.setattr(SL, "precompile", spy)
    for k in KERNELS:
        k.device_caches.clear()
    decodekit.generate(lm, "Hello there", max_new_tokens=12)
    assert lm.fast.graph_steps > 0 and sum(len(c[0]) for c in TS._finish_kernel.device_caches.values()) > 0
    assert counts and _compiled() == counts[0], "the decode compiled a kernel the precompile missed"


def test_tokens_equal_without_precompile(lm, monkeypatch):
    prompts = ["Hello there", "The quick brown fox"]
    lm.fast = FastPath(lm, headroom=300)
    on = decodekit.generate(lm, prompts, max_new_tokens=24)
    assert lm.fast.precompile_s > 0
    monkeypatch.setattr(P, "PRECOMPILE", False)
    lm.fast = FastPath(lm, headroom=300)
    off = decodekit.generate(lm, prompts, max_new_tokens=24)
    assert lm.fast.precompile_s == 0
    assert on.token_ids == off.token_ids and on.logprobs == off.logprobs


def test_warm_up_compiles_and_loads_a_kernel():
    """decodekit.load's background warm-up takes the whole compile chain once (it swallows errors:
    this checks it did the work)."""
    L.warm_up()
    L.wait_for_warm_up()
    compiled = [k for c in L._warm_kernel.device_caches.values() for k in c[0].values()]
    assert compiled and all(getattr(k, "function", None) is not None for k in compiled)  # loaded


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_compile_ahead_covers_the_first_decode(dtype):
    """Kernels compiled from the config alone (decodekit.fast.ahead, what decodekit.load starts while
    a model file's weights load) are every kernel the model's first batch-1 decode launches: it
    compiles nothing more (the stand-in's one layer, its slab and its prefill width differ from the
    real decode's; none of that may change a kernel's specialisation)."""
    import decodekit.fast.ahead as A

    model = tiny_model(seed=6, layers=3).to("cuda", dtype)
    for k in KERNELS:
        k.device_caches.clear()
    before = _compiled()
    assert A.compile_ahead(model.config, dtype, "cuda") is not None
    L.wait_for_warm_up()  # joins the compile-ahead thread
    assert A.last_error is None, A.last_error
    ahead = _compiled()
    assert ahead > before, "the compile ahead compiled nothing"
    lm = decodekit.load(model, ByteTokenizer())
    out = decodekit.generate(lm, "Hello there, how are you today?", max_new_tokens=20)
    assert lm.fast.graph_steps > 0 and len(out.token_ids[0]) > 0
    assert _compiled() == ahead, "the first decode compiled a kernel the compile ahead missed"
