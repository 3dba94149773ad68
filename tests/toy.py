"""Tiny test models: a random 2-layer Llama with a byte tokenizer, built in memory in a second."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import decodekit

EOS = 2


class ByteTokenizer:
    """UTF-8 bytes as tokens 3..258; 0 = pad, 1 = bos, 2 = eos. No chat template."""

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = EOS
    chat_template = None
    offset = 3

    def __call__(self, text: str, add_special_tokens: bool = True):
        return SimpleNamespace(input_ids=[b + self.offset for b in text.encode("utf-8")])

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self(text).input_ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        data = bytes(i - self.offset for i in ids if self.offset <= i < self.offset + 256)
        return data.decode("utf-8", errors="replace")


def tiny_model(seed: int = 0, layers: int = 2, vocab: int = 259, hidden: int = 64, max_pos: int = 512):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_pos,
        bos_token_id=1, eos_token_id=EOS, pad_token_id=0, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharper distributions than the default init: outputs vary with context
        model.lm_head.weight.mul_(8.0)
    return model


def tiny_lm(seed: int = 0, **kw) -> decodekit.LM:
    return decodekit.load(tiny_model(seed, **kw), ByteTokenizer())
