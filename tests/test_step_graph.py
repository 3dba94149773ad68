"""Whole loop steps from a plan (decodekit.fast.step_graph), run eagerly on the CPU.

``FastPath(capture=False, step_graphs=True)`` runs the very steps a CUDA graph replays (the static
cache's device-side inputs, the plan's tail, the copy-back of reassigned fields) without capture,
so the CPU checks their logic: tokens equal the ordinary loop's for greedy, sampling and prompt
lookup at a fixed width (which also equals greedy), with rows stopping at different steps and a
cache that has to move to a larger slab. tests/fast/test_step_graph_gpu.py checks the replays.
"""

from __future__ import annotations

import pytest

import decodekit
import decodekit.lag
from decodekit.fast import FastPath
from tests.toy import ByteTokenizer, tiny_model

PROMPTS = ["Hello there hello there hello", "Name a colour. Name a colour.",
           "The quick brown fox jumps over the quick brown fox", "1 2 3 4 1 2 3 4 1 2"]


@pytest.fixture(scope="module")
def lm():
    return decodekit.load(tiny_model(seed=0), ByteTokenizer())


def _run(lm, on: bool, strategy: str, monkeypatch, headroom: int = 8, **kw):
    """One decode over the static cache: with step graphs (eager) and the lagged stop check, or not."""
    monkeypatch.setattr(decodekit.lag, "LAG", on)
    lm.fast = FastPath(lm, capture=False, step_graphs=on, headroom=headroom)
    lm.cuda_graphs = True
    try:
        gen = decodekit.generate(lm, PROMPTS, strategy, **kw)
    finally:
        lm.cuda_graphs = False
    assert (lm.fast.graph_steps > 0) == on
    return gen


@pytest.mark.parametrize("strategy,kw", [("greedy", {}), ("sample", {"seed": 3}),
                                         ("prompt_lookup", {"adaptive": False, "draft_tokens": 5})])
def test_plan_steps_equal_ordinary_steps(lm, strategy, kw, monkeypatch):
    graph = _run(lm, True, strategy, monkeypatch, max_new_tokens=40, **kw)
    plain = _run(lm, False, strategy, monkeypatch, max_new_tokens=40, **kw)
    assert graph.token_ids == plain.token_ids
    assert graph.stats.steps == plain.stats.steps and graph.stats.forward_passes == plain.stats.forward_passes
    if strategy != "prompt_lookup":  # same forward widths: same log-probs
        assert graph.logprobs == plain.logprobs


def test_prompt_lookup_plan_equals_greedy_with_eos(lm, monkeypatch):
    """Rows stop at different steps (an EOS id row 0 produces early), several tokens a step."""
    free = _run(lm, False, "greedy", monkeypatch, max_new_tokens=40, eos_token_id=[])
    eos = free.token_ids[0][9]
    greedy = _run(lm, False, "greedy", monkeypatch, max_new_tokens=40, eos_token_id=eos)
    lengths = [len(t) for t in greedy.token_ids]
    assert lengths[0] <= 10 and len(set(lengths)) > 1
    graph = _run(lm, True, "prompt_lookup", monkeypatch, max_new_tokens=40, eos_token_id=eos,
                 adaptive=False, draft_tokens=6)
    assert graph.token_ids == greedy.token_ids and graph.finish_reasons == greedy.finish_reasons
    stats = graph.stats.extra
    assert stats["accepted_per_verify"] > 0.5 and 0 < stats["acceptance_rate"] <= 1  # it did copy


def test_plan_on_a_moved_slab(lm, monkeypatch):
    """The slab is too small for the steps left: the cache moves once, the plan follows."""
    graph = _run(lm, True, "prompt_lookup", monkeypatch, headroom=0, max_new_tokens=60, eos_token_id=[],
                 adaptive=False, draft_tokens=7)
    greedy = _run(lm, False, "greedy", monkeypatch, headroom=0, max_new_tokens=60, eos_token_id=[])
    assert graph.token_ids == greedy.token_ids and all(len(t) == 60 for t in graph.token_ids)


def test_prompt_lookup_default_replays_steps_at_a_fixed_width(lm, monkeypatch):
    """draft_policy="auto" (the default): where whole steps replay, graph_draft_tokens drafts every
    step from the plan; elsewhere the cost-aware width. Both equal greedy."""
    greedy = _run(lm, False, "greedy", monkeypatch, max_new_tokens=40, eos_token_id=[])
    graph = _run(lm, True, "prompt_lookup", monkeypatch, max_new_tokens=40, eos_token_id=[])
    assert graph.token_ids == greedy.token_ids
    assert graph.stats.extra["draft_tokens"] == 4 and lm.fast.graph_steps >= graph.stats.forward_passes - 2
    three = _run(lm, True, "prompt_lookup", monkeypatch, max_new_tokens=40, eos_token_id=[], graph_draft_tokens=3)
    assert three.token_ids == greedy.token_ids and three.stats.extra["draft_tokens"] == 3
    six = _run(lm, True, "prompt_lookup", monkeypatch, max_new_tokens=40, eos_token_id=[], adaptive=False,
               draft_tokens=6)  # a fixed width asked for: kept
    assert six.token_ids == greedy.token_ids and six.stats.extra["draft_tokens"] == 6
    plain = _run(lm, False, "prompt_lookup", monkeypatch, max_new_tokens=40, eos_token_id=[])
    assert plain.token_ids == greedy.token_ids and plain.stats.extra["draft_tokens"] != 4  # the cost-aware width


def test_prompt_lookup_default_width_follows_the_decode_kernels():
    """graph_draft_tokens=None (the default): as many drafts as keep the verify forward on the decode
    step's GEMV kernels (a row's layers then compute the same bits as in a decode step), at most 4, if
    at least 3; else 4."""
    from types import SimpleNamespace

    from decodekit.strategies.speculative.strategy import DraftVerify

    def width(gemv_tokens, rows):
        fn = None if gemv_tokens is None else SimpleNamespace(gemv_tokens=lambda: gemv_tokens)
        return DraftVerify._graph_width(SimpleNamespace(cache=SimpleNamespace(path=SimpleNamespace(eager_fn=fn)),
                                                        rows=rows))

    assert width(4, 1) == 3  # a small model at batch 1: a 4-token verify through the GEMV kernels
    assert width(5, 1) == 4 and width(16, 1) == 4  # at most 4
    assert width(4, 2) == 4 and width(4, 3) == 4  # two rows (or three: a bucket of 4) leave too few
    assert width(1, 1) == 4 and width(0, 1) == 4 and width(None, 1) == 4  # large weights; no GEMV kernels


def test_prompt_lookup_default_on_the_decode_kernels_equals_greedy(monkeypatch):
    """End to end with the Triton kernels (the interpreter on the CPU): one row, the default width is
    3 drafts a step, and the output is greedy's."""
    import torch

    from decodekit.fast.launch import kernel_reason

    if kernel_reason(torch.device("cpu"), interpret=True) is not None:
        pytest.skip("needs Triton's interpreter")
    lm = decodekit.load(tiny_model(seed=0), ByteTokenizer())
    monkeypatch.setattr(decodekit.lag, "LAG", True)
    gens = {}
    for strategy in ("greedy", "prompt_lookup"):
        lm.fast = FastPath(lm, capture=False, step_graphs=True, kernels=True, headroom=8)
        assert lm.fast.eager_fn.gemv_tokens() == 4
        lm.cuda_graphs = True
        try:
            gens[strategy] = decodekit.generate(lm, PROMPTS[0], strategy, max_new_tokens=10, eos_token_id=[])
        finally:
            lm.cuda_graphs = False
    assert gens["prompt_lookup"].stats.extra["draft_tokens"] == 3
    assert gens["prompt_lookup"].token_ids == gens["greedy"].token_ids
