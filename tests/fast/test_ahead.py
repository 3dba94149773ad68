"""Compiling kernels from a model's config while it loads (decodekit.fast.ahead): the CPU-side rules.

The compile itself needs CUDA (tests/fast/test_precompile_gpu.py checks that a first decode after it
compiles nothing). Here: the stand-in model has the real model's fused weights in shape, dtype and
layout (what a kernel's specialisation sees) with one layer; nothing starts off CUDA; launches in
other threads wait for a compile-ahead thread, its own launches do not.
"""

from __future__ import annotations

import threading

import pytest
import torch

from decodekit.fast import ahead as A
from decodekit.fast import launch as L
from decodekit.fast.fused import FusedLlama
from tests.toy import tiny_model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stand_in_has_the_real_weights_layout(dtype):
    model = tiny_model(seed=1, layers=3).to(dtype)
    before = model.config.to_dict()
    lm = A.stand_in(model.config, dtype, torch.device("cpu"))
    assert model.config.to_dict() == before, "the stand-in changed the model's config"
    assert lm.model.config.num_hidden_layers == 1 and lm.dtype == dtype
    real, fake = FusedLlama(model, kernels=False), FusedLlama(lm.model, kernels=False)
    for name in ("qkv", "o", "gate_up", "down"):
        want, got = getattr(real.layers[0], name), getattr(fake.layers[0], name)
        assert (got.shape, got.stride(), got.dtype) == (want.shape, want.stride(), want.dtype), name
    for name in ("embed_tokens",):
        want, got = getattr(model.model, name).weight, getattr(lm.model.model, name).weight
        assert (got.shape, got.dtype) == (want.shape, want.dtype)
    assert lm.model.lm_head.weight.shape == model.lm_head.weight.shape
    assert lm.eos_token_ids == (model.config.eos_token_id,)


def test_nothing_starts_off_cuda(monkeypatch):
    config = tiny_model().config
    assert A.compile_ahead(config, torch.float32, "cpu") is None
    monkeypatch.setattr(A, "AHEAD", False)
    assert A.compile_ahead(config, torch.float32, torch.device("cuda")) is None


def test_a_run_reports_itself_not_an_earlier_one(monkeypatch):
    """_run (the thread's body) off CUDA: no kernels to compile, but it builds the stand-in, clears a
    previous run's error and times itself."""
    monkeypatch.setattr(A, "last_error", RuntimeError("an earlier run"))
    A._run(A._skeleton(tiny_model().config), torch.float32, torch.device("cpu"))
    assert A.last_error is None and {"stand_in_s", "total_s"} <= set(A.last_run)
    assert "precompile_s" not in A.last_run  # no Triton kernels on the CPU


def test_launches_wait_for_a_compile_ahead_thread(monkeypatch):
    monkeypatch.setattr(L, "_ahead", [])
    release, inside = threading.Event(), []

    def compile_ahead():
        L.wait_for_warm_up()  # its own launches: must not wait for itself
        inside.append("launched")
        release.wait(10)

    thread = threading.Thread(target=compile_ahead)
    L.launches_wait_for(thread)
    thread.start()
    waited = []
    other = threading.Thread(target=lambda: (L.wait_for_warm_up(), waited.append(release.is_set())))
    other.start()
    other.join(0.3)
    assert other.is_alive() and inside == ["launched"], "a launch elsewhere went ahead of the compile"
    release.set()
    other.join(10)
    thread.join(10)
    assert waited == [True] and L._ahead == []
