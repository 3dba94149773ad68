"""Draft-model, self-draft and random-draft speculative decoding with greedy verification == greedy."""

from __future__ import annotations

import pytest
import torch

import decodekit
from decodekit.strategies.speculative import early_exit_lm
from tests.strategies.speculative.helpers import RandomDraft, check_cache_content, run_steps
from tests.toy import ByteTokenizer, tiny_lm, tiny_model

PROMPTS = ["hello hello hello world", "abc", "the cat sat on the mat. the cat", "Zebras"]


@pytest.fixture(scope="module")
def greedy(tiny_lm):
    return decodekit.generate(tiny_lm, PROMPTS, "greedy", max_new_tokens=30, chat=False)


@pytest.fixture(scope="module")
def other_draft():
    return tiny_lm(seed=1, layers=1)


def _gen(lm, strategy, prompts=PROMPTS, **options):
    return decodekit.generate(lm, prompts, strategy, max_new_tokens=30, chat=False, **options)


def test_target_as_its_own_draft_accepts_everything(tiny_lm, greedy):
    got = _gen(tiny_lm, "speculative", draft=tiny_lm, draft_tokens=5, adaptive=False)
    assert got.token_ids == greedy.token_ids
    assert got.stats.extra["acceptance_rate"] == 1.0
    assert got.stats.extra["accepted_per_verify"] > 4  # 5 per verify except where rows end


@pytest.mark.parametrize("options", [{}, {"draft_tokens": 1, "adaptive": False}, {"draft_tokens": 7}])
def test_other_draft_model_equals_greedy_batched_and_alone(tiny_lm, greedy, other_draft, options):
    got = _gen(tiny_lm, "speculative", draft=other_draft, **options)
    assert got.token_ids == greedy.token_ids
    for i in (0, 3):
        assert _gen(tiny_lm, "speculative", [PROMPTS[i]], draft=other_draft, **options).token_ids[0] == greedy.token_ids[i]


def test_random_token_proposer_equals_greedy(tiny_lm, greedy):
    got = decodekit.generate(tiny_lm, PROMPTS, RandomDraft(draft_tokens=3), max_new_tokens=30, chat=False)
    assert got.token_ids == greedy.token_ids


@pytest.mark.parametrize("layers", [1, 2])
def test_self_draft_equals_greedy(tiny_lm, greedy, layers):
    got = _gen(tiny_lm, "self_speculative", draft_layers=layers)
    assert got.token_ids == greedy.token_ids
    if layers == 2:  # all layers: the draft is the target
        assert got.stats.extra["acceptance_rate"] == 1.0


def test_early_exit_shares_weights_and_matches_a_truncated_model():
    lm = tiny_lm(layers=3)
    draft = early_exit_lm(lm, 2)
    assert draft.config.num_hidden_layers == 2 and lm.config.num_hidden_layers == 3
    assert draft.model.lm_head.weight is lm.model.lm_head.weight
    assert len(draft.model.model.layers) == 2 and len(lm.model.model.layers) == 3
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    x = lm.model.model.embed_tokens(ids)
    pos = torch.arange(4)[None]
    emb = lm.model.model.rotary_emb(x, position_ids=pos)
    with torch.no_grad():
        for layer in lm.model.model.layers[:2]:
            x = layer(x, attention_mask=None, position_embeddings=emb, position_ids=pos)
        want = lm.model.lm_head(lm.model.model.norm(x))
    got = draft.forward(ids, draft.new_cache(), mask).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_draft_cache_and_target_cache_stay_consistent(tiny_lm, other_draft):
    strategy = decodekit.strategies.get("speculative")(draft=other_draft, draft_tokens=4)
    state = run_steps(tiny_lm, strategy, PROMPTS, 23)
    check_cache_content(state)
    dc = state.extra["_spec_draft_cache"]  # the draft holds a prefix of every row's tokens
    assert bool((dc.held <= state.end - state.start).all())
    assert dc.mask.sum(1).tolist() == dc.held.tolist()


def test_sampling_mode_runs_and_is_seeded(tiny_lm, other_draft):
    a = _gen(tiny_lm, "speculative", draft=other_draft, do_sample=True, temperature=0.8, top_p=0.9, seed=3)
    b = _gen(tiny_lm, "speculative", draft=other_draft, do_sample=True, temperature=0.8, top_p=0.9, seed=3)
    assert a.token_ids == b.token_ids and all(len(t) == 30 or t[-1] in tiny_lm.eos_token_ids for t in a.token_ids)


def test_vocabulary_mismatch_is_a_clear_error(tiny_lm):
    small_vocab = decodekit.load(tiny_model(vocab=300), ByteTokenizer())
    with pytest.raises(ValueError, match="vocabulary has 300 tokens"):
        _gen(tiny_lm, "speculative", draft=small_vocab)


class RollbackTwice:
    """Rolls every running row back 3 tokens at steps 2 and 4 (greedy re-decodes the same tokens)."""

    name = "rollback_twice"

    def observe(self, state, out):
        from decodekit.monitors.base import ROLLBACK, Verdict

        hit = ~state.done & (state.n_new >= 3) & torch.tensor(state.steps in (2, 4))
        return Verdict.where(hit, ROLLBACK, 3)


@pytest.mark.parametrize("strategy, options", [("speculative", {"draft_tokens": 3}), ("prompt_lookup", {})])
def test_monitor_rollbacks_keep_target_and_draft_caches_right(tiny_lm, greedy, other_draft, strategy, options):
    if strategy == "speculative":
        options = {**options, "draft": other_draft}
    got = _gen(tiny_lm, strategy, monitors=[RollbackTwice()], **options)
    assert got.token_ids == greedy.token_ids
    assert len(got.flags) > 0


def test_adaptive_draft_length_grows_and_shrinks(tiny_lm):
    full = _gen(tiny_lm, "speculative", draft=tiny_lm, draft_tokens=2, max_draft_tokens=6)
    assert full.stats.extra["draft_tokens"] == 6  # every draft accepted: grows to the bound
    rand = decodekit.generate(tiny_lm, PROMPTS, RandomDraft(draft_tokens=5), max_new_tokens=30, chat=False)
    assert rand.stats.extra["draft_tokens"] <= 2  # random drafts are rejected: shrinks
    fixed = _gen(tiny_lm, "speculative", draft=tiny_lm, draft_tokens=2, adaptive=False)
    assert fixed.stats.extra["draft_tokens"] == 2
