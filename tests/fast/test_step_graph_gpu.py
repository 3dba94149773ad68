"""Whole loop steps replayed from CUDA graphs (decodekit.fast.step_graph) == the ordinary loop step.

On a GPU only (skipped without CUDA). The ordinary step over the same static cache and forward
graphs (``step_graphs=False``) is the reference: tokens and log-probs must be bitwise equal, with
rows that stop at different steps (EOS), a cache that outgrows its slab, a second decode on the same
slab, and seeded sampling. A replay that read a stale copy of any state field (the copy-back) or the
wrong cache column would change the tokens. Prompt lookup at a fixed width replays its whole
draft-verify step too (decodekit.strategies.speculative.graph_plan): its output must equal greedy.
"""

from __future__ import annotations

import pytest
import torch

import decodekit
from decodekit.fast import FastPath
from tests.strategies.test_beam_graph import _candidates
from tests.toy import ByteTokenizer, tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PROMPTS = ["Hello there", "Name a colour.", "The quick brown fox jumps", "1 2 3 4"]


@pytest.fixture(scope="module")
def lm():
    return decodekit.load(tiny_model(seed=0).to("cuda"), ByteTokenizer())


def _both(lm, prompts, strategy="greedy", headroom=256, **kw):
    """(with step graphs, without) for the same decode; asserts the step graphs really ran."""
    out = {}
    for on in (False, True):
        lm.fast = FastPath(lm, step_graphs=on, headroom=headroom)
        out[on] = decodekit.generate(lm, prompts, strategy, **kw)
        assert (lm.fast.graph_steps > 0) == on
    return out[True], out[False]


@pytest.mark.parametrize("batch", [1, 4])
def test_greedy_equals_ordinary_step(lm, batch):
    graph, plain = _both(lm, PROMPTS[:batch], max_new_tokens=40)
    assert graph.token_ids == plain.token_ids and graph.logprobs == plain.logprobs
    assert graph.stats.forward_passes == plain.stats.forward_passes and graph.stats.steps == plain.stats.steps


def test_rows_finishing_at_different_steps(lm):
    """EOS set to a token row 0 produces early: rows stop at different steps (and row 0 early)."""
    lm.fast = FastPath(lm, step_graphs=False)
    free = decodekit.generate(lm, PROMPTS, max_new_tokens=40, eos_token_id=[])
    eos = free.token_ids[0][6]
    graph, plain = _both(lm, PROMPTS, max_new_tokens=40, eos_token_id=eos)
    lengths = [len(t) for t in plain.token_ids]
    assert lengths[0] <= 7 and len(set(lengths)) > 1
    assert graph.token_ids == plain.token_ids and graph.logprobs == plain.logprobs
    assert graph.finish_reasons == plain.finish_reasons


def test_cache_outgrowing_its_slab(lm):
    """A small headroom: the cache moves to a larger slab (at once with step graphs, step by step
    without: attention then splits other column counts, so log-probs agree to float rounding)."""
    graph, plain = _both(lm, PROMPTS[:2], headroom=8, max_new_tokens=150, eos_token_id=[])
    assert graph.token_ids == plain.token_ids
    torch.testing.assert_close(torch.tensor(graph.logprobs), torch.tensor(plain.logprobs), rtol=0, atol=1e-4)
    assert all(len(t) == 150 for t in graph.token_ids)


def test_second_decode_on_the_same_slab(lm):
    lm.fast = FastPath(lm)
    first = decodekit.generate(lm, PROMPTS[:2], max_new_tokens=24)
    again = decodekit.generate(lm, PROMPTS[:2], max_new_tokens=24)
    other = decodekit.generate(lm, PROMPTS[2:], max_new_tokens=24)
    lm.fast = FastPath(lm, step_graphs=False)
    assert again.token_ids == first.token_ids
    assert other.token_ids == decodekit.generate(lm, PROMPTS[2:], max_new_tokens=24).token_ids


@pytest.mark.parametrize("generator", ["seed", "none"])
def test_seeded_sampling_equals_ordinary_step(lm, generator):
    kw = {"seed": 11} if generator == "seed" else {}
    if generator == "none":
        torch.manual_seed(3)
    graph = None
    lm.fast = FastPath(lm, step_graphs=True)
    graph = decodekit.generate(lm, PROMPTS, "sample", max_new_tokens=40, **kw)
    assert lm.fast.graph_steps > 0
    if generator == "none":
        torch.manual_seed(3)
    lm.fast = FastPath(lm, step_graphs=False)
    plain = decodekit.generate(lm, PROMPTS, "sample", max_new_tokens=40, **kw)
    assert graph.token_ids == plain.token_ids and graph.logprobs == plain.logprobs


REPEATING = ["Hello there hello there hello", "Name a colour. Name a colour.",
             "The quick brown fox jumps over the quick brown fox", "1 2 3 4 1 2 3 4 1 2"]


@pytest.mark.parametrize("batch", [1, 4])
def test_prompt_lookup_plan_equals_greedy(lm, batch):
    """Prompt lookup at a fixed width: its whole draft-verify step from graphs == greedy."""
    lm.fast = FastPath(lm, step_graphs=False)
    greedy = decodekit.generate(lm, REPEATING[:batch], max_new_tokens=40, eos_token_id=[])
    graph, plain = _both(lm, REPEATING[:batch], "prompt_lookup", max_new_tokens=40, eos_token_id=[],
                         adaptive=False, draft_tokens=6)
    assert graph.token_ids == plain.token_ids == greedy.token_ids
    assert graph.stats.extra["accepted_per_verify"] > 0.5  # it copied


@pytest.mark.parametrize("batch", [1, 4])
def test_prompt_lookup_default_on_the_gpu(lm, batch):
    """The default (draft_policy="auto"): a fixed width every step -- 3 drafts at batch 1 (a 4-token
    verify on the decode step's GEMV kernels), 4 at batch 4 -- whole steps from graphs (the one-kernel
    tail, decodekit.fast.lookup_step), == greedy; without step graphs the cost-aware width."""
    lm.fast = FastPath(lm, step_graphs=False)
    greedy = decodekit.generate(lm, REPEATING[:batch], max_new_tokens=40, eos_token_id=[])
    graph, plain = _both(lm, REPEATING[:batch], "prompt_lookup", max_new_tokens=40, eos_token_id=[])
    assert graph.token_ids == plain.token_ids == greedy.token_ids
    assert graph.stats.extra["draft_tokens"] == (3 if batch == 1 else 4)
    assert graph.stats.forward_passes < greedy.stats.forward_passes  # it copied


def test_prompt_lookup_plan_rows_stopping_early(lm):
    lm.fast = FastPath(lm, step_graphs=False)
    free = decodekit.generate(lm, REPEATING, max_new_tokens=40, eos_token_id=[])
    eos = free.token_ids[0][9]
    greedy = decodekit.generate(lm, REPEATING, max_new_tokens=40, eos_token_id=eos)
    assert len({len(t) for t in greedy.token_ids}) > 1
    graph, _ = _both(lm, REPEATING, "prompt_lookup", headroom=0, max_new_tokens=40, eos_token_id=eos,
                     adaptive=False, draft_tokens=6)
    assert graph.token_ids == greedy.token_ids and graph.finish_reasons == greedy.finish_reasons


def test_processors_keep_the_ordinary_step(lm):
    lm.fast = FastPath(lm)
    decodekit.generate(lm, PROMPTS[:1], max_new_tokens=8, repetition_penalty=1.3)
    assert lm.fast.graph_steps == 0


@pytest.fixture(scope="module")
def beam_lm():
    """A tiny model with a likely EOS: hypotheses end at many lengths (tests/strategies/test_beam.py)."""
    from tests.strategies.test_beam import eos_lm

    return decodekit.load(eos_lm(seed=1).model.to("cuda"), ByteTokenizer())


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("kw", [
    {"num_beams": 4, "num_return_sequences": 2},
    {"num_beams": 4, "num_return_sequences": 4, "length_penalty": 0.7, "early_stopping": "never"},
    {"num_beams": 3, "early_stopping": True, "length_penalty": 1.3},
    {"num_beams": 3, "do_sample": True, "temperature": 0.9, "top_k": 20, "seed": 3},
])
def test_beam_plan_equals_ordinary_step(beam_lm, batch, kw):
    """Beam search's whole step from graphs (decodekit.strategies.beam_graph): every candidate's
    tokens, log-probs, score and finish reason bitwise equal to the ordinary beam step's."""
    graph, plain = _both(beam_lm, PROMPTS[:batch], "beam", max_new_tokens=32, **kw)
    assert _candidates(graph) == _candidates(plain)
    assert graph.stats.steps == plain.stats.steps


def test_beam_plan_on_a_moved_slab(beam_lm):
    graph, plain = _both(beam_lm, PROMPTS, "beam", headroom=0, max_new_tokens=60, eos_token_id=[],
                         num_beams=4, num_return_sequences=2)
    assert _candidates(graph) == _candidates(plain)
    assert all(len(c.token_ids) == 60 for cands in graph.candidates for c in cands)
