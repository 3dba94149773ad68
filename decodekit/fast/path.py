"""FastPath: one model's static-cache fast path: its slab pool, graph memory pool and options.

An :class:`~decodekit.lm.LM` on CUDA builds one on its first ``new_cache()`` (unless made with
``cuda_graphs=False``); every cache it then hands out is a :class:`~decodekit.fast.cache.FastCache`
leasing a :class:`~decodekit.fast.slab.Slab` from this pool. Slabs (and their captured graphs) are
kept and reused by later decodes, so capture is paid once per batch-size bucket and step width.

Example:
    >>> lm = decodekit.load(device="cuda", dtype="bfloat16")          # doctest: +SKIP
    >>> decodekit.generate(lm, "Hi", max_new_tokens=32).text          # graph path, automatically  # doctest: +SKIP
    >>> lm.fast.capture_s, lm.fast.captures                           # time spent capturing   # doctest: +SKIP
    >>> lm.fast = FastPath(lm, capture=False)   # static cache, no graphs (also works on CPU)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import gc

import torch

from decodekit.fast.attention import attention_bias, positions
from decodekit.fast.fused import FusedLlama, fused_reason
from decodekit.fast.slab import Slab, bucket

__all__ = ["FastPath", "unsupported_reason"]


def unsupported_reason(lm) -> str | None:
    """Why ``lm`` cannot use the static-cache fast path, or None when it can."""
    cfg = lm.config
    if getattr(cfg, "is_encoder_decoder", False):
        return "encoder-decoder models are not supported"
    if any(getattr(cfg, a, None) is None for a in ("num_hidden_layers", "num_attention_heads", "hidden_size")):
        return "the config lacks num_hidden_layers / num_attention_heads / hidden_size"
    types = getattr(cfg, "layer_types", None)
    if types and any(t != "full_attention" for t in types):
        return f"layer types {sorted(set(types))}: only full-attention layers are supported"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) and not types:
        return "sliding-window attention is not supported"
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    if impl not in ("sdpa", "eager"):
        return f"attention implementation {impl!r}: the fast path passes a 4-D mask (sdpa / eager only)"
    return None


def _step(model, dtype, cache_kw, mask, cols, ids, write, view, last_only: bool, hidden: bool):
    """The forward of the fast path: bias and positions from the static mask, then the model.

    mask [rows, C] long; cols [C] long; ids [rows, T] long; write [T] long.
    Returns logits [rows, T or 1, vocab] float32 and the last hidden states [rows, T, d] or None.
    """
    bias = attention_bias(mask, cols, write, dtype)  # [rows, 1, T, C]
    pos = positions(mask, write)  # [rows, T]
    out = model(input_ids=ids, attention_mask=bias, position_ids=pos, use_cache=True,
                output_hidden_states=hidden, logits_to_keep=1 if last_only else 0, **{cache_kw: view})
    return out.logits.float(), (out.hidden_states[-1] if hidden else None)


class FastPath:
    """The static-cache (and, on CUDA, CUDA-graph) forward of one LM.

    Args:
        lm: the :class:`~decodekit.lm.LM`.
        capture: capture CUDA graphs (default: on CUDA). ``False`` runs the same static-cache path
            eagerly: same kernels, no capture (CPU, debugging).
        compile: ``None`` (default), or a ``torch.compile`` mode (``"default"``,
            ``"max-autotune-no-cudagraphs"``) for the captured step: fuses the small kernels, at the
            price of a compile wait on the first step of each bucket.
        max_graph_tokens: forwards of at most this many new tokens use graphs (decode, verify).
        headroom: spare cache columns allocated beyond the prompt (a slab grows when they run out).
        warmup: eager runs before the first capture (one before each later capture).
        fused: run decodekit's fused Llama-family forward (:mod:`decodekit.fast.fused`, ~3x fewer
            kernels) instead of transformers' forward; default: where the model supports it.
        kernels: let the fused forward use decodekit's Triton kernels (:mod:`decodekit.fast.kernels`:
            RMSNorm, rotary + cache write, attention, SiLU-and-mul); default: where Triton runs.
        step_graphs: replay whole loop steps (forward, token choice, bookkeeping) from CUDA graphs
            where the strategy offers a plan (:mod:`decodekit.fast.step_graph`); default: with
            ``capture``. ``capture=False, step_graphs=True`` runs the same steps eagerly (tests).
    """

    def __init__(self, lm, *, capture: bool | None = None, compile: str | None = None,
                 max_graph_tokens: int = 32, headroom: int = 256, warmup: int = 2, fused: bool | None = None,
                 kernels: bool | None = None, step_graphs: bool | None = None):
        reason = unsupported_reason(lm)
        if reason is not None:
            raise ValueError(f"decodekit.fast: {reason}; use cuda_graphs=False")
        cfg = lm.config
        self.model = lm.model
        self.device, self.dtype = lm.device, lm.dtype
        self.capture = self.device.type == "cuda" if capture is None else bool(capture)
        if self.capture and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA model; pass capture=False")
        self.layers = cfg.num_hidden_layers
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.pad_id = lm.pad_token_id
        self.eos_count = len(getattr(lm, "eos_token_ids", ()))  # what the precompile expects a decode to stop at
        self.max_graph_tokens, self.headroom, self.warmup = max_graph_tokens, headroom, warmup
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None
        self.step_graphs = self.capture if step_graphs is None else bool(step_graphs)
        reason = fused_reason(self.model)
        if fused and reason is not None:
            raise ValueError(f"decodekit.fast: fused=True, but {reason}")
        self.fused = reason is None if fused is None else bool(fused)
        if kernels and not self.fused:
            why = "fused=False was given" if reason is None else reason
            raise ValueError(f"decodekit.fast: kernels=True needs the fused step ({why})")
        if self.fused:
            self.eager_fn = FusedLlama(self.model, kernels=kernels)
        else:
            self.eager_fn = functools.partial(_step, self.model, self.dtype, lm._cache_kw)
        self.kernels = bool(getattr(self.eager_fn, "kernels", False))
        self.step_fn = self.eager_fn
        if compile:
            mode = None if compile == "default" else compile
            self.step_fn = torch.compile(self.eager_fn, mode=mode, dynamic=False)
        self.slabs: dict[int, list[Slab]] = {}  # bucket -> slabs
        self.capture_s = 0.0  # total seconds spent warming up and capturing graphs
        self.precompile_s = 0.0  # total seconds spent compiling Triton kernels ahead (decodekit.fast.precompile)
        self.captures = 0
        self.graph_steps = 0  # loop steps replayed whole from graphs (decodekit.fast.step_graph)

    def __repr__(self) -> str:
        n = sum(len(v) for v in self.slabs.values())
        return (f"FastPath(capture={self.capture}, fused={self.fused}, kernels={self.kernels}, "
                f"step_graphs={self.step_graphs}, slabs={n}, captures={self.captures}, "
                f"capture_s={self.capture_s:.2f}, precompile_s={self.precompile_s:.2f})")

    def new_cache(self):
        """An empty :class:`~decodekit.fast.cache.FastCache` (it leases a slab on its first forward)."""
        from decodekit.fast.cache import FastCache

        return FastCache(self)

    def lease(self, rows: int, capacity: int) -> "Lease":
        """A free slab of ``rows``' bucket with at least ``capacity`` columns (made if none is free)."""
        b = bucket(rows)
        slab = self._free(b, capacity)
        if slab is None and any(s.leased for s in self.slabs.get(b, [])):
            gc.collect()  # a finished decode in a reference cycle may still hold its lease
            slab = self._free(b, capacity)
        if slab is None:
            capacity = -(-capacity // 128) * 128
            self.slabs[b] = [s for s in self.slabs.get(b, []) if s.leased or s.capacity >= capacity]
            slab = Slab(self, b, capacity)
            self.slabs[b].append(slab)
        slab.mask[rows:].fill_(1)  # dummy rows attend to everything: finite, never read
        return Lease(slab)

    def _free(self, b: int, capacity: int) -> Slab | None:
        free = [s for s in self.slabs.get(b, []) if not s.leased and s.capacity >= capacity]
        return min(free, key=lambda s: s.capacity) if free else None

    def note_capture(self, seconds: float) -> None:
        self.capture_s += seconds
        self.captures += 1

    def clear(self) -> None:
        """Drop every free slab and its graphs (leased ones stay with their caches)."""
        self.slabs = {b: [s for s in v if s.leased] for b, v in self.slabs.items()}


class Lease:
    """Holds a slab for one cache; the slab returns to the pool when the lease is dropped."""

    def __init__(self, slab: Slab):
        self.slab = slab
        slab.leased = True

    def __del__(self):
        self.slab.leased = False
