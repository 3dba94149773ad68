"""Bad configurations fail at construction with a clear message; registry and stats plumbing."""

from __future__ import annotations

import pytest

import decodekit


@pytest.mark.parametrize("name, options, message", [
    ("prompt_lookup", {"draft_tokens": 0}, "draft_tokens must be >= 1"),
    ("prompt_lookup", {"draft_tokens": 8, "max_draft_tokens": 4}, "max_draft_tokens"),
    ("prompt_lookup", {"temperature": 0.7}, "only applies when sampling: pass do_sample=True"),
    ("prompt_lookup", {"top_p": 0.9}, "do_sample=True"),
    ("prompt_lookup", {"do_sample": True, "top_p": 1.5}, "top_p"),
    ("prompt_lookup", {"do_sample": True, "temperature": 0.0}, "temperature"),
    ("prompt_lookup", {"min_ngram": 0}, "min_ngram must be >= 1"),
    ("prompt_lookup", {"max_ngram": 1, "min_ngram": 2}, "max_ngram"),
    ("prompt_lookup", {"draft_tokens": 2.5}, "draft_tokens must be int"),
    ("prompt_lookup", {"num_tokens": 3}, "has no option 'num_tokens'"),
    ("speculative", {}, "pass draft="),
    ("speculative", {"draft": 3}, "draft must be an LM"),
    ("self_speculative", {"draft_layers": -1}, "draft_layers must be >= 0"),
])
def test_bad_config_raises(name, options, message):
    with pytest.raises(ValueError, match=message):
        decodekit.strategies.get(name)(**options)


def test_too_many_draft_layers(tiny_lm):
    with pytest.raises(ValueError, match=r"draft_layers must be in \[1, 2\]"):
        decodekit.generate(tiny_lm, "abc", "self_speculative", draft_layers=3, chat=False)


def test_registered_with_documented_fields():
    fields = decodekit.strategies.available()
    assert {"prompt_lookup", "speculative", "self_speculative"} <= set(fields)
    names = {f["name"] for f in fields["prompt_lookup"]}
    assert {"draft_tokens", "adaptive", "do_sample", "max_ngram", "min_ngram"} <= names


def test_stats_reach_the_generation(tiny_lm):
    gen = decodekit.generate(tiny_lm, ["abcabcabcabc", "xyz"], "prompt_lookup", max_new_tokens=20, chat=False)
    extra = gen.stats.extra
    for key in ("accepted_per_verify", "acceptance_rate", "tokens_per_step", "target_forwards_per_token"):
        assert key in extra
    assert 0 <= extra["acceptance_rate"] <= 1
    # one prefill + one verify per step, for the rows' tokens
    assert extra["target_forwards_per_token"] == pytest.approx((1 + gen.stats.steps) * 2 / gen.stats.new_tokens)
