"""Small-batch logits on the CPU: ``(W @ hᵀ)ᵀ`` instead of ``h @ Wᵀ`` for the vocabulary projection.

The last projection of a causal LM (``lm_head``, ``[vocab, d]``) is its largest matrix: for the
default model 49152 x 576 floats, 113 MB, a fifth of all weights. On the CPU a decode step reads it
once, so its cost is memory bandwidth. With one row (greedy, batch 1) BLAS runs a matrix-vector
product and streams the matrix once. With 2-5 rows (a beam of 4, a batch of 4, a short verify) it
runs a general matrix product that packs the transposed matrix first, about twice the traffic:
measured with one MKL thread, 4 rows took 34 ms as ``h @ Wᵀ`` and 16 ms as ``(W @ hᵀ)ᵀ``, which
streams ``W`` in its stored layout. From about 6 rows on the packed product wins again.

So for 2-5 rows on a CPU, :func:`logits` runs the model's body and computes the projection itself;
otherwise (and for heads it does not know: biases, soft-capping, scaled logits) the model's own
forward runs unchanged. The values are the same function with another summation order (fp32
rounding differences only).

Example:
    >>> head = PlainHead.of(lm.model)           # None when the model's head is not a plain matmul  # doctest: +SKIP
    >>> head.applies(lm.model, rows=4)          # doctest: +SKIP
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch

__all__ = ["PlainHead", "MIN_ROWS", "MAX_ROWS"]

MIN_ROWS, MAX_ROWS = 2, 5  # where (W @ hᵀ)ᵀ beats h @ Wᵀ (one MKL thread, 576 x 49152 fp32)
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # CausalLM forward = lm_head(body(...)[:, keep])


@dataclass(frozen=True)
class PlainHead:
    """The vocabulary projection of a model whose logits are exactly ``lm_head(last hidden state)``."""

    weight: torch.Tensor  # [vocab, d]

    @staticmethod
    def of(model) -> "PlainHead | None":
        """The head of ``model`` when decodekit may compute it itself, else None."""
        cfg = model.config
        head = getattr(model, "lm_head", None)
        if getattr(cfg, "model_type", None) not in MODEL_TYPES or not isinstance(head, torch.nn.Linear):
            return None
        if head.bias is not None or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
            return None
        if getattr(model, "model", None) is None or getattr(cfg, "pretraining_tp", 1) not in (None, 1):
            return None
        return PlainHead(head.weight)

    def applies(self, rows: int) -> bool:
        """Whether ``rows`` rows of hidden states are faster as ``(W @ hᵀ)ᵀ`` (CPU tensors only)."""
        return self.weight.device.type == "cpu" and MIN_ROWS <= rows <= MAX_ROWS

    def run(self, model, keep: int, hidden: bool, **inputs) -> SimpleNamespace:
        """The model's body, then this head on the last ``keep`` positions (0: all).

        Returns what the model's forward would: ``.logits [rows, T or keep, vocab]`` and, with
        ``hidden``, ``.hidden_states`` (the body's tuple; the last one after the final norm).
        """
        out = model.model(**inputs, output_hidden_states=hidden)
        h = out.last_hidden_state  # [rows, T, d]
        if keep:
            h = h[:, -keep:]
        rows, T, d = h.shape
        logits = torch.mm(self.weight, h.reshape(rows * T, d).t()).t().reshape(rows, T, -1)  # [rows, T, vocab]
        return SimpleNamespace(logits=logits, hidden_states=out.hidden_states if hidden else None)
