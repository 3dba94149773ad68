"""Blockwise prediction heads (Stern, Shazeer, Uszkoreit, NeurIPS 2018, arXiv:1811.03115): extra
heads on the target's last hidden state that predict the tokens 2, 3, ... positions ahead.

Head i maps the final (normed) hidden state ``h_t`` through a residual feed-forward block,
``x + SiLU(W_i x + b_i)`` (the block Medusa uses, Cai et al. 2024, arXiv:2401.10774), and then the
model's own, frozen LM head; it predicts the token ``i`` positions after the one the model itself
predicts from ``h_t``. Stern's heads are independent (``x = h_t``). With ``sequential=True`` (the
default) head i also sees the token before the one it predicts, ``x = h_t + U_i e(y_{t+i})``
(``e`` = the model's input embedding; Hydra, Ankner et al. 2024, arXiv:2402.05109): at proposal
time that token is known (the pending one for head 1, the previous proposal after that), and small
models predict far better with it. Zero-initialised blocks (the default) start as copies of the
model's head. Heads are saved as safetensors with their shape and the model in the metadata.

Example:
    >>> heads = BlockwiseHeads(hidden_size=8, num_heads=3)
    >>> heads(torch.zeros(2, 8), torch.zeros(2, 3, 8)).shape     # [rows, heads, hidden]
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
        sequential: condition head i on the embedding of the token before its target (Hydra).
    """

    def __init__(self, hidden_size: int, num_heads: int, init: str = "zero", seed: int = 0,
                 sequential: bool = True):
        super().__init__()
        if num_heads < 1 or hidden_size < 1:
            raise ValueError(f"heads need num_heads >= 1 and hidden_size >= 1, got {num_heads}, {hidden_size}")
        if init not in ("zero", "random"):
            raise ValueError(f"init must be 'zero' or 'random', got {init!r}")
        self.hidden_size, self.num_heads, self.sequential = hidden_size, num_heads, sequential
        self.blocks = nn.ModuleList(ResBlock(hidden_size) for _ in range(num_heads))
        self.token_proj = nn.ModuleList(nn.Linear(hidden_size, hidden_size, bias=False)
                                        for _ in range(num_heads if sequential else 0))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for w in [b.linear.weight for b in self.blocks] + [p.weight for p in self.token_proj]:
                w.copy_(torch.zeros_like(w) if init == "zero" else torch.randn(w.shape, generator=g) * 0.02)
            for block in self.blocks:
                block.linear.bias.zero_()

    def step(self, i: int, h: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        """Head ``i``'s hidden state ``[..., H]`` from ``h [..., H]`` and, when sequential, the
        embedding ``prev [..., H]`` of the token before its target."""
        x = h + self.token_proj[i](prev) if self.sequential else h  # [..., H]
        return self.blocks[i](x)  # [..., H]

    def forward(self, h: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        """All heads, teacher-forced: ``h [..., H]``, ``prev [..., n, H]`` -> ``[..., n, H]``."""
        return torch.stack([self.step(i, h, None if prev is None else prev[..., i, :])
                            for i in range(self.num_heads)], -2)  # [..., n, H]


def save_heads(heads: BlockwiseHeads, path: str | os.PathLike, meta: dict | None = None) -> None:
    """Write the heads' weights and shape (plus ``meta``: model name, training settings) to safetensors."""
    from safetensors.torch import save_file

    info = {"hidden_size": heads.hidden_size, "num_heads": heads.num_heads, "sequential": heads.sequential,
            **(meta or {})}
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
    heads = BlockwiseHeads(int(meta["hidden_size"]), int(meta["num_heads"]), sequential=bool(meta.get("sequential")))
    heads.load_state_dict(tensors)
    return heads.eval(), meta
