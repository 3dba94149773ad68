"""Attention inputs for a static KV cache, computed on the device from static buffers.

Nothing here depends on tensor *values* on the host, so all of it can run inside a captured CUDA
graph: the write columns live in a device tensor, the 2-D mask in a static buffer, and the 4-D
additive bias we hand to transformers makes its mask creation return early (a 4-D mask is used
as given in transformers 5.17 and 5.24 alike; ``masking_utils._preprocess_mask_arguments``).

The semantics equal :meth:`decodekit.lm.LM.forward` on a ``DynamicCache``: a query at cache column
``c`` sees column ``j`` iff the row owns ``j`` (mask 1) and ``j <= c``; its position id is the
number of owned columns up to and including ``c``, minus one.
"""

from __future__ import annotations

import torch
from transformers import Cache
from transformers.cache_utils import CacheLayerMixin

__all__ = ["attention_bias", "positions", "SlabView"]


def attention_bias(
    mask: torch.Tensor,  # [rows, C] long: 1 = the row owns the column
    cols: torch.Tensor,  # [C] long: 0..C-1
    write: torch.Tensor,  # [T] long: the cache columns of the new tokens
    dtype: torch.dtype,
) -> torch.Tensor:  # [rows, 1, T, C] dtype: 0 where attended, dtype's min elsewhere
    """The additive attention bias of ``T`` new tokens over a static cache of ``C`` columns."""
    allowed = (mask[:, None, :] > 0) & (cols[None, None, :] <= write[None, :, None])  # [rows, T, C]
    bias = torch.zeros(allowed.shape, dtype=dtype, device=mask.device)  # [rows, T, C]
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def positions(
    mask: torch.Tensor,  # [rows, C] long
    write: torch.Tensor,  # [T] long
) -> torch.Tensor:  # [rows, T] long
    """Position ids of the new tokens: owned columns up to each one, minus one (holes don't count)."""
    rank = (mask.cumsum(-1) - 1).clamp_min(0)  # [rows, C]
    return rank.gather(1, write[None, :].expand(mask.shape[0], -1))


class _SlabLayer(CacheLayerMixin):
    """One layer's static keys and values (views into a slab)."""

    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):  # [rows, kv_heads, C, head_dim] each
        super().__init__()
        self.keys, self.values = keys, values
        self.is_initialized = True
        self.dtype, self.device = keys.dtype, keys.device

    def lazy_initialization(self, key_states, value_states) -> None:  # pragma: no cover - preallocated
        pass

    def update(self, key_states, value_states, *args, **kwargs):  # pragma: no cover - see SlabView
        raise NotImplementedError

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[-2], 0

    def get_seq_length(self) -> int:
        return self.keys.shape[-2]

    def get_max_length(self) -> int:
        return self.keys.shape[-2]


class SlabView(Cache):
    """A transformers ``Cache`` over a slab's preallocated K/V, writing new tokens at ``write``.

    ``update`` copies the new keys/values into columns ``write`` ([T] long, a device tensor) with
    ``index_copy_`` and returns the whole static ``[rows, kv_heads, C, head_dim]`` tensors; the 4-D
    bias masks the columns a row does not own. No host value is read: capture-safe.
    """

    def __init__(self, kv: list[torch.Tensor], write: torch.Tensor):
        # kv: 2 * layers tensors [rows, kv_heads, C, head_dim] (keys, values, keys, ...); write: [T] long
        super().__init__(layers=[_SlabLayer(kv[i], kv[i + 1]) for i in range(0, len(kv), 2)])
        self.write = write

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        # key_states, value_states: [rows, kv_heads, T, head_dim]
        layer = self.layers[layer_idx]
        if key_states.shape[1:2] + key_states.shape[3:] != layer.keys.shape[1:2] + layer.keys.shape[3:]:
            raise ValueError(
                f"decodekit.fast: layer {layer_idx} produced keys {tuple(key_states.shape)}, but the static "
                f"cache holds {tuple(layer.keys.shape)}; load the LM with cuda_graphs=False for this model")
        layer.keys.index_copy_(2, self.write, key_states.to(layer.keys.dtype))
        layer.values.index_copy_(2, self.write, value_states.to(layer.values.dtype))
        return layer.keys, layer.values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].keys.shape[-2]
