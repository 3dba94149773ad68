"""Loading from local files (decodekit.models): a model folder, the config read once and first."""

from __future__ import annotations

import pytest
import torch

import decodekit
from decodekit.models import load_model
from tests.toy import tiny_model


def _folder(tmp_path):
    """A tiny Llama and a word-level tokenizer saved as a model folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = tiny_model(seed=4)
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(model.config.vocab_size)}, unk_token="w3"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=words, eos_token="w2", pad_token="w0", unk_token="w3")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return model


def test_load_a_folder_hands_over_the_config_before_the_weights(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = _folder(tmp_path)
    loaded_weights, seen = [], []
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kw):
        loaded_weights.append(kw.get("config"))
        return real(*args, **kw)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    hf_model, tok = load_model(tmp_path, on_config=lambda cfg: seen.append((cfg, list(loaded_weights))))
    (config, weights_then), = seen
    assert weights_then == [], "on_config came after the weights"
    assert loaded_weights == [config], "the weights' load read the config again"
    assert config.hidden_size == model.config.hidden_size and config.num_hidden_layers == 2
    for name, p in model.state_dict().items():
        assert torch.equal(hf_model.state_dict()[name], p), name
    lm = decodekit.load(tmp_path)
    assert decodekit.generate(lm, "w5 w6 w7", max_new_tokens=4).token_ids[0] == \
        decodekit.generate(decodekit.load(model, tok), "w5 w6 w7", max_new_tokens=4).token_ids[0]


def test_load_rejects_what_is_not_a_model(tmp_path):
    with pytest.raises(decodekit.ModelNotFoundError, match="neither a config.json"):
        load_model(tmp_path)
