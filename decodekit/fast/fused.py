"""A fused forward for Llama-family decoders over a static KV cache (the fast path's default step).

transformers' Llama forward launches ~43 kernels per layer for one decode token (RMSNorm in six
element-wise ops, three projections, rotary embeddings in a dozen slices and concatenations, GQA
key/value repetition, ...). Inside a CUDA graph each launch still costs ~2 us of GPU time, so for a
small model the step is launch-bound, not bandwidth-bound. This step computes the same function with
about 14 kernels per layer, reading the model's own weights:

* the q/k/v projections as one matmul and the gate/up projections as one matmul, over weights
  concatenated once (the modules' own parameters become views of them: no extra memory);
* RMSNorm as one ``torch.nn.functional.rms_norm``;
* rotary embeddings as ``x * cos + swap(x) * sin'`` on q and k together (``sin'`` carries
  ``rotate_half``'s sign; cos / sin come from the model's own rotary module, once per step);
* grouped-query attention without repeating keys: the ``g`` query heads of one key/value head are
  folded into the query length, so SDPA sees ``kv_heads`` heads of ``g * T`` queries;
* the residual additions fused into the output projections (``addmm_`` into the residual stream);
* with Triton (CUDA; :mod:`decodekit.fast.kernels`): RMSNorm, rotary + cache write + attention over
  the static cache (one kernel for decode and verify steps; rotary + cache write, then SDPA, for
  prefill and long caches) and SiLU-and-mul as one kernel each -- ~8 kernels per layer in all;
* for a few tokens times a small weight, or one token times a large one (decode steps;
  :func:`~decodekit.fast.gemv.gemv_fits`):
  each RMSNorm inside the projection after it (``norm_linear``: q/k/v, gate/up) and SiLU-and-mul
  with the residual inside the down projection (``act_linear_add_``) -- 5 kernels per layer: norm +
  q/k/v, rotary + cache write + attention, output projection + residual, norm + gate/up, activation
  + down + residual; with ``GEMV_HEAD`` (off by default: slower than cuBLAS) the output head takes the
  final norm too (:func:`~decodekit.fast.gemv.head_fits`). On Hopper and later the GEMV kernels and
  rotary + attention use programmatic dependent launch (:func:`~decodekit.fast.launch.pdl_meta`):
  each starts loading its weights (or cache block) while the kernel before finishes, ~18 % off a
  SmolLM2 decode step on an H200. The GEMV kernels compute each row alone
  (a row's result does not depend on the rows beside it); wider steps run cuBLAS, which rounds
  differently, so a verify step's logits equal a decode step's only to rounding.

Numerically it is the model's function with different rounding: fp32 results agree with
transformers' to ~1e-5, bf16 results to bf16 rounding (tests/fast/test_fused.py). It only runs on
models whose layout it knows (:func:`fused_reason`); others keep transformers' forward inside the
graph. ``FastPath(lm, fused=False)`` turns it off (``kernels=False``: the fused step without Triton).

Example:
    >>> lm = decodekit.load(device="cuda", dtype="bfloat16")      # doctest: +SKIP
    >>> lm.fast.fused                                             # doctest: +SKIP
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from decodekit.fast import gemv as G
from decodekit.fast import kernels as K
from decodekit.fast import launch as L
from decodekit.fast.attention import attention_bias, positions

__all__ = ["FusedLlama", "fused_reason"]

MODEL_TYPES = ("llama", "mistral", "qwen2")


def fused_reason(model) -> str | None:
    """Why ``model`` cannot use the fused step, or None when it can."""
    cfg = model.config
    if getattr(cfg, "model_type", None) not in MODEL_TYPES:
        return f"model type {getattr(cfg, 'model_type', None)!r} (fused: {', '.join(MODEL_TYPES)})"
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(model, "lm_head") or not hasattr(inner, "rotary_emb"):
        return "the model lacks model.layers / lm_head / model.rotary_emb"
    attn, mlp = layers[0].self_attn, layers[0].mlp
    if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
        return "attention without q/k/v/o projections"
    if any(hasattr(attn, n) for n in ("q_norm", "k_norm")):
        return "attention with q/k norms"
    if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return "MLP without gate/up/down projections"
    if getattr(mlp.gate_proj, "bias", None) is not None or getattr(mlp.down_proj, "bias", None) is not None:
        return "MLP biases"
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    return None


def _fuse_linear(mods: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight ``[sum(out), in]`` (and bias) for ``mods``; their parameters become views of it."""
    weight = torch.cat([m.weight.data for m in mods], 0)
    biases = [m.bias for m in mods]
    bias = torch.cat([b.data for b in biases], 0) if all(b is not None for b in biases) else None
    if any(b is not None for b in biases) and bias is None:
        raise ValueError("decodekit.fast: projections with and without bias")
    start = 0
    for m in mods:
        n = m.weight.shape[0]
        m.weight.data = weight[start:start + n]
        if bias is not None:
            m.bias.data = bias[start:start + n]
        start += n
    return weight, bias


class _Layer:
    """One decoder layer's fused weights."""

    def __init__(self, layer):
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv, self.qkv_bias = _fuse_linear([attn.q_proj, attn.k_proj, attn.v_proj])  # [(h + 2kv) * hd, d]
        self.o, self.o_bias = attn.o_proj.weight, attn.o_proj.bias  # [d, h * hd]
        self.gate_up, _ = _fuse_linear([mlp.gate_proj, mlp.up_proj])  # [2 * ff, d]
        self.down = mlp.down_proj.weight  # [d, ff]
        self.act = mlp.act_fn
        self.norm1 = (layer.input_layernorm.weight, _eps(layer.input_layernorm))
        self.norm2 = (layer.post_attention_layernorm.weight, _eps(layer.post_attention_layernorm))


def _eps(norm) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


def _add_linear_(x: torch.Tensor, a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x += a @ w.T (+ b)`` in place for ``x [N, d]``, ``a [N, k]``, ``w [d, k]``: one GEMM, beta = 1."""
    x.addmm_(a, w.t())
    return x if b is None else x.add_(b)


def kernels_reason(model, interpret: bool = False) -> str | None:
    """Why the fused step of ``model`` cannot use decodekit's Triton kernels, or None when it can.

    By default they run on CUDA only; ``interpret=True`` also accepts Triton's CPU interpreter
    (``TRITON_INTERPRET=1``: slow, for tests).
    """
    reason = L.kernel_reason(next(model.parameters()).device, interpret)
    if reason is not None:
        return reason
    act = getattr(model.config, "hidden_act", None)
    if act not in ("silu", "swish"):
        return f"activation {act!r} (kernels: silu)"
    return None


class FusedLlama:
    """The fused decode / verify / prefill step of one Llama-family model (see the module doc).

    Called like the fast path's generic step: ``(mask, cols, ids, write, view, last_only, hidden)``;
    returns float32 logits ``[rows, T or 1, vocab]`` and, with ``hidden``, the final-norm hidden
    states ``[rows, T, d]`` (transformers' ``hidden_states[-1]``).
    """

    def __init__(self, model, kernels: bool | None = None):
        reason = fused_reason(model)
        if reason is not None:
            raise ValueError(f"decodekit.fast: no fused step: {reason}")
        reason = kernels_reason(model, interpret=bool(kernels))
        if kernels and reason is not None:
            raise ValueError(f"decodekit.fast: kernels=True, but {reason}")
        self.kernels = reason is None if kernels is None else bool(kernels)
        cfg = model.config
        self.model = model
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.embed = model.model.embed_tokens
        self.rotary = model.model.rotary_emb
        self.final_norm = (model.model.norm.weight, _eps(model.model.norm))
        self.scale = float(getattr(model.model.layers[0].self_attn, "scaling", self.head_dim ** -0.5))
        self.lm_head = model.lm_head
        with torch.no_grad():
            self.layers = [_Layer(layer) for layer in model.model.layers]

    def gemv_tokens(self) -> int:
        """The most tokens (rows x step width) a forward may hold while every layer projection runs
        the GEMV kernels (:func:`~decodekit.fast.gemv.gemv_fits`; 0 when none does). Up to it a token's
        layers compute the same bits whatever tokens share its forward (the kernels reduce each row
        alone): a verify step's layers equal the decode steps' (the output head is cuBLAS's)."""
        if not (self.kernels and G.GEMV_O_PROJ):
            return 0
        layer = self.layers[0]
        shapes = [layer.qkv.shape, layer.o.shape, layer.gate_up.shape, layer.down.shape]
        tokens = 0
        while tokens < G.GEMV_MAX_ROWS and all(G.gemv_fits(tokens + 1, *shape) for shape in shapes):
            tokens += 1
        return tokens

    def _norm_linear(self, x: torch.Tensor, norm: tuple[torch.Tensor, float], w: torch.Tensor,
                     b: torch.Tensor | None) -> torch.Tensor:  # [N, out]
        """``F.linear(rms_norm(x), w, b)`` for ``x [N, d]``, ``w [out, d]``: one kernel where it fits."""
        if not self.kernels:
            return F.linear(F.rms_norm(x, (x.shape[-1],), *norm), w, b)
        if G.gemv_fits(x.shape[0], *w.shape):
            return G.norm_linear(x, *norm, w, b)
        return F.linear(K.rms_norm(x, *norm), w, b)

    def _out_proj_(self, x: torch.Tensor, o: torch.Tensor, layer: _Layer) -> None:
        """``x += o @ layer.o.T (+ bias)`` in place for ``x [N, d]``, ``o [N, h * hd]``."""
        if self.kernels and G.GEMV_O_PROJ and G.gemv_fits(x.shape[0], *layer.o.shape):
            G.linear_add_(x, o, layer.o, layer.o_bias)
        else:
            _add_linear_(x, o, layer.o, layer.o_bias)

    def _mlp_out_(self, x: torch.Tensor, gate_up: torch.Tensor, layer: _Layer) -> None:
        """``x += (act(gate) * up) @ layer.down.T`` in place for ``x [N, d]``, ``gate_up [N, 2 * ff]``."""
        if not self.kernels:
            gate, up = gate_up.chunk(2, -1)  # [N, ff] each
            _add_linear_(x, layer.act(gate).mul_(up), layer.down, None)
        elif G.gemv_fits(x.shape[0], *layer.down.shape):
            G.act_linear_add_(x, gate_up, layer.down)
        else:
            _add_linear_(x, K.silu_mul(gate_up), layer.down, None)

    @torch.no_grad()
    def __call__(self, mask, cols, ids, write, view, last_only: bool, hidden: bool):
        # mask [rows, C] long; cols [C] long; ids [rows, T] long; write [T] long; view: SlabView
        rows, T = ids.shape
        N, h, kvh, hd = rows * T, self.heads, self.kv_heads, self.head_dim
        x = self.embed(ids)  # [rows, T, d]
        d = x.shape[-1]
        cos, sin = self.rotary(x, positions(mask, write))  # [rows, T, hd] each
        # the kernels' attention walks each row's columns up to the token's own; SDPA otherwise
        attend = self.kernels and K.attend_fits(N, mask.shape[1])
        bias = None if attend else self._bias(mask, cols, write, x.dtype)  # [rows, 1, g*T, C]
        if self.kernels:
            cos, sin = cos.reshape(N, hd), sin.reshape(N, hd)  # [N, hd]
        else:
            half = hd // 2
            sin = torch.cat([-sin[..., :half], sin[..., half:]], -1)[:, :, None]  # [rows, T, 1, hd]
            cos = cos[:, :, None]  # [rows, T, 1, hd]
        x = x.view(N, d)  # [N, d] residual stream, updated in place
        # a dry forward (compile only: decodekit.fast.precompile) walks one layer: every layer has
        # the same shapes, so launches the same kernel specialisations
        layers = self.layers[:1] if L.COMPILE_ONLY.get() else self.layers
        for i, layer in enumerate(layers):
            keys, values = view.layers[i].keys, view.layers[i].values  # [rows, kv, C, hd] each
            qkv = self._norm_linear(x, layer.norm1, layer.qkv, layer.qkv_bias)  # [N, (h + 2kv) * hd]
            if attend:  # rotary, cache write and attention in one kernel
                o = K.rope_attend(qkv, cos, sin, write, keys, values, mask, h, kvh, hd, self.scale).view(N, h * hd)
            elif self.kernels:
                q = K.rope_write(qkv, cos, sin, write, keys, values, h, kvh, hd)  # [N, h, hd]
                o = self._sdpa(q.view(rows, T, h, hd), keys, values, bias)
            else:
                qkv = qkv.view(rows, T, h + 2 * kvh, hd)
                qk = qkv[:, :, :h + kvh]  # [rows, T, h+kv, hd]
                swapped = qk.unflatten(-1, (2, hd // 2)).flip(-2).flatten(-2)  # [rows, T, h+kv, hd]
                qk = torch.addcmul(qk * cos, swapped, sin)  # rotary, [rows, T, h+kv, hd]
                keys.index_copy_(2, write, qk[:, :, h:].transpose(1, 2))
                values.index_copy_(2, write, qkv[:, :, h + kvh:].transpose(1, 2))
                o = self._sdpa(qk[:, :, :h], keys, values, bias)
            self._out_proj_(x, o, layer)  # [N, d]
            gate_up = self._norm_linear(x, layer.norm2, layer.gate_up, None)  # [N, 2 * ff]
            self._mlp_out_(x, gate_up, layer)  # [N, d]
        x = x.view(rows, T, d)
        if last_only:
            x = x[:, -1:]
        w = self.lm_head.weight  # [V, d]
        if self.kernels and not hidden and G.head_fits(x.shape[0] * x.shape[1], *w.shape):
            logits = G.norm_linear(x.reshape(-1, d), *self.final_norm, w, self.lm_head.bias)  # [rows * T', V]
            return logits.float().view(rows, x.shape[1], -1), None
        if self.kernels:  # one kernel (torch's takes one thread block for a row: ~6 us for d = 4096)
            out = K.rms_norm(x.reshape(-1, d), *self.final_norm).view(x.shape)  # [rows, T or 1, d]
        else:
            out = F.rms_norm(x, (d,), *self.final_norm)  # [rows, T or 1, d]
        logits = self.lm_head(out).float()  # [rows, T or 1, V]
        return logits, (out if hidden else None)

    def _bias(self, mask, cols, write, dtype) -> torch.Tensor:  # [rows, 1, g*T, C]
        """The additive bias for SDPA, repeated for the ``g`` query heads folded into the length."""
        g, T = self.heads // self.kv_heads, write.shape[0]
        bias = attention_bias(mask, cols, write, dtype)  # [rows, 1, T, C]
        return bias.expand(mask.shape[0], g, T, bias.shape[-1]).reshape(mask.shape[0], 1, g * T, -1)

    def _sdpa(self, q: torch.Tensor, keys, values, bias) -> torch.Tensor:  # q [rows, T, h, hd] -> [N, h*hd]
        """SDPA with the ``g`` query heads of each key/value head folded into the query length."""
        rows, T, h, hd = q.shape
        kvh = self.kv_heads
        g = h // kvh
        q = q.unflatten(2, (kvh, g)).permute(0, 2, 3, 1, 4).reshape(rows, kvh, g * T, hd)  # [rows, kv, g*T, hd]
        o = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, scale=self.scale)  # [rows, kv, g*T, hd]
        return o.view(rows, kvh, g, T, hd).permute(0, 3, 1, 2, 4).reshape(rows * T, h * hd)  # [N, h*hd]
