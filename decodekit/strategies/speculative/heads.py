"""Blockwise prediction heads (Stern, Shazeer, Uszkoreit, NeurIPS 2018, arXiv:1811.03115): extra
heads on the target's last hidden state that predict the tokens 2, 3, ... positions ahead.

Head i maps the final (normed) hidden state ``h_t`` through a residual feed-forward block,
``h_t + SiLU(W_i h_t + b_i)`` (the block Medusa uses, Cai et al. 2024, arXiv:2401.10774), and then the
model's own, frozen LM head; it predicts the token ``i`` positions after the one the model itself
predicts from ``h_t``. Zero-initialised blocks (the default) start as copies of the model's head.
Heads are saved as safetensors with their shape and the model they were trained for in the metadata.

Example:
    >>> heads = BlockwiseHeads(hidden_size=8, num_heads=3)
    >>> heads(torch.zeros(2, 8)).shape          # [rows, heads, hidden]
    torch.Size([2, 3, 8])
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

__all__ = ["BlockwiseHeads", "save_heads", "load_heads"]


class ResBlock(nn.Module):
    """``h + SiLU(W h + b)`` on ``[..., hidden]``."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + nn.functional.silu(self.linear(h))  # [..., hidden]


class BlockwiseHeads(nn.Module):
    """``num_heads`` residual blocks; ``forward(h [..., H]) -> [..., num_heads, H]``.

    Args:
        hidden_size: the model's hidden size.
        num_heads: heads for positions t+2 .. t+1+num_heads (the model itself predicts t+1).
        init: ``"zero"`` (each head starts as the model's head) or ``"random"`` (normal, std 0.02,
            for untrained baselines).
        seed: seeds the random init.
    """

    def __init__(self, hidden_size: int, num_heads: int, init: str = "zero", seed: int = 0):
        super().__init__()
        if num_heads < 1 or hidden_size < 1:
            raise ValueError(f"heads need num_heads >= 1 and hidden_size >= 1, got {num_heads}, {hidden_size}")
        if init not in ("zero", "random"):
            raise ValueError(f"init must be 'zero' or 'random', got {init!r}")
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.blocks = nn.ModuleList(ResBlock(hidden_size) for _ in range(num_heads))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for block in self.blocks:
                if init == "zero":
                    block.linear.weight.zero_()
                else:
                    block.linear.weight.copy_(torch.randn(block.linear.weight.shape, generator=g) * 0.02)
                block.linear.bias.zero_()

    def forward(self, h: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """Hidden states of the first ``n`` heads (all by default): ``[..., n, H]``."""
        blocks = self.blocks[: self.num_heads if n is None else n]
        return torch.stack([block(h) for block in blocks], -2)  # [..., n, H]

    def logits(self, lm_head: nn.Module, h: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """``[rows, n, V]`` logits of the first ``n`` heads from ``h [rows, H]`` via the model's head."""
        out = self(h.to(self.blocks[0].linear.weight.dtype), n)  # [rows, n, H]
        return lm_head(out.to(lm_head.weight.dtype)).float()  # [rows, n, V]


def save_heads(heads: BlockwiseHeads, path: str | os.PathLike, meta: dict | None = None) -> None:
    """Write the heads' weights and shape (plus ``meta``: model name, training settings) to safetensors."""
    from safetensors.torch import save_file

    info = {"hidden_size": heads.hidden_size, "num_heads": heads.num_heads, **(meta or {})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
    save_file(tensors, os.fspath(path), metadata={"decodekit_heads": json.dumps(info)})


def load_heads(path: str | os.PathLike) -> tuple[BlockwiseHeads, dict]:
    """Load heads written by :func:`save_heads`; returns ``(heads, metadata)``."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no heads file at {path!r} (train one with `decodekit train-heads`)")
    with safe_open(path, framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("decodekit_heads", "null") or "null")
        if not meta:
            raise ValueError(f"{path} is not a decodekit heads file (no 'decodekit_heads' metadata)")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    heads = BlockwiseHeads(int(meta["hidden_size"]), int(meta["num_heads"]))
    heads.load_state_dict(tensors)
    return heads.eval(), meta
