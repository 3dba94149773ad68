"""A scripted causal LM: next-token logits are a fixed table row chosen by the last token.

It has the transformers causal-LM interface that :class:`decodekit.LM` uses (``config``,
``get_output_embeddings``, ``forward(input_ids, attention_mask, position_ids, past_key_values, ...)``)
and never touches the KV cache, so every score a decoder sees is known in advance: exact,
hand-checkable oracles.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import LlamaConfig

import decodekit
from tests.toy import ByteTokenizer


class ScriptedLM(torch.nn.Module):
    """``logits[b, t] = table[input_ids[b, t]]`` for a ``table [V, V]`` (row = last token)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        vocab = table.shape[0]
        self.config = LlamaConfig(vocab_size=vocab, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                  num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=256,
                                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
        self.register_buffer("table", table.float())  # [V, V]
        self.head = torch.nn.Linear(8, vocab, bias=False)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.head

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=True, output_hidden_states=False, logits_to_keep=0, **kwargs):
        logits = self.table[input_ids]  # [B, T, V]
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, hidden_states=None)


def scripted_lm(table: torch.Tensor) -> decodekit.LM:
    """An LM over the byte tokenizer's 259 ids (0 pad, 1 bos, 2 eos) from a ``[259, 259]`` table."""
    return decodekit.load(ScriptedLM(table), ByteTokenizer())


def constant_table(logprobs: dict[int, float], vocab: int = 259, floor: float = -30.0) -> torch.Tensor:
    """Every row the same: the given tokens get these log-probs (normalised), all others ``floor``."""
    row = torch.full((vocab,), floor)
    for tok, lp in logprobs.items():
        row[tok] = lp
    row = torch.log_softmax(row, -1)
    return row.expand(vocab, vocab).clone()
