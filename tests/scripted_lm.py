"""ScriptedLM: a torch module with the HF causal-LM interface whose next-token logits are a fixed
function of the prefix. Exact, hand-checkable oracles for decoders and monitors.

The KV cache stores the token ids themselves (one layer, one head, one feature), so the model always
sees exactly the row's valid prefix through the attention mask: padding, masked (rolled-back)
columns and row selection behave as with a real model, and a stale column would change the prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace

import torch
from transformers import LlamaConfig

import decodekit


class IdTokenizer:
    """Token ids as text: ``[3, 4] <-> "3 4 "``. No chat template."""

    pad_token_id = 0
    chat_template = None

    def __init__(self, eos: int):
        self.eos_token_id = eos

    def __call__(self, text: str, add_special_tokens: bool = True):
        return SimpleNamespace(input_ids=[int(t) for t in text.split()])

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self(text).input_ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return "".join(f"{i} " for i in ids)


class ScriptedModel(torch.nn.Module):
    """``logits = script(prefix)``: ``script(list[int]) -> sequence of vocab floats``."""

    def __init__(self, script: Callable[[list[int]], Sequence[float]], vocab: int, eos: int):
        super().__init__()
        self.script = script
        self.config = LlamaConfig(vocab_size=vocab, hidden_size=4, intermediate_size=4, num_hidden_layers=1,
                                  num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=4096,
                                  eos_token_id=eos, pad_token_id=0, bos_token_id=0)
        self.lm_head = torch.nn.Linear(4, vocab, bias=False)
        self.calls: list[list[list[int]]] = []  # prefixes seen by each forward

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=True, output_hidden_states=False, logits_to_keep=0, **kwargs):
        rows, t = input_ids.shape
        ids = input_ids.float()[:, None, :, None]  # [rows, 1, T, 1]
        keys, _ = past_key_values.update(ids, ids, 0)  # [rows, 1, S, 1] every column's token
        tokens = keys[:, 0, :, 0].long()  # [rows, S]
        mask = attention_mask.bool()  # [rows, S]
        start = tokens.shape[1] - t
        logits = torch.zeros(rows, t, self.config.vocab_size)
        seen = []
        for r in range(rows):
            for j in range(t):
                col = start + j
                prefix = tokens[r, : col + 1][mask[r, : col + 1]].tolist()
                if prefix:  # a padding column has no prefix: its logits stay 0 (never used)
                    logits[r, j] = torch.tensor(list(self.script(prefix)), dtype=torch.float32)
                seen.append(prefix)
        self.calls.append(seen)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        hidden = torch.nn.functional.one_hot(input_ids % 4, 4).float()  # [rows, T, 4]
        return SimpleNamespace(logits=logits, past_key_values=past_key_values,
                               hidden_states=(hidden, hidden) if output_hidden_states else None)


def scripted_lm(script: Callable[[list[int]], Sequence[float]], vocab: int, eos: int) -> decodekit.LM:
    return decodekit.load(ScriptedModel(script, vocab, eos), IdTokenizer(eos))


def ranked_logits(order: Sequence[int], vocab: int, step: float = 3.0) -> list[float]:
    """Logits ranking ``order`` first, second, ... (gaps of ``step``); the rest far below."""
    out = [-100.0] * vocab
    for i, tok in enumerate(order):
        out[tok] = 10.0 - step * i
    return out
