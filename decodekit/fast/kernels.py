"""Triton kernels of the fused step: RMSNorm, rotary + KV-cache write, decode attention, SiLU-and-mul.

A decode step of a small model is launch-bound: on an H200 each kernel of a CUDA graph costs ~2 us
however little it does, so the fused step (:mod:`decodekit.fast.fused`) wants as few as possible.
transformers' building blocks spend several kernels where one does:

* ``rope_write``: rotary embeddings on q and k, the k and v writes into the static cache, and q in
  ``[N, heads, head_dim]`` for attention -- one kernel instead of five (mul, flip, addcmul, two
  ``index_copy_``);
* ``attend``: attention of ``T`` new tokens over the static cache, reading the slab's 2-D column
  mask directly (no 4-D bias, no GQA repetition) and looping only over the columns up to each
  query's own (its cost follows the real length, not the slab's capacity); online softmax in fp32;
* ``rms_norm``: one program per row; ``silu_mul``: ``silu(gate) * up`` from the fused gate/up
  product in one pass.

Each computes in fp32 and rounds once to the output dtype, so results agree with transformers'
bf16 building blocks to bf16 rounding and exactly (to fp32 rounding) in fp32. They run on CUDA, or
on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``, the tests). :func:`kernel_reason`
says why they cannot run.

Example:
    >>> from decodekit.fast import kernels
    >>> kernels.kernel_reason(torch.device("cpu"))          # doctest: +SKIP
    'Triton kernels need CUDA (or TRITON_INTERPRET=1 and kernels=True)'
    >>> lm.fast.kernels                                     # on CUDA with Triton  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

__all__ = ["kernel_reason", "rms_norm", "rope_write", "attend", "silu_mul", "ATTEND_MAX_COLUMNS"]

ATTEND_MAX_COLUMNS = 4096  # longer caches use SDPA: one program per (row, kv head, token) walks the columns


def kernel_reason(device: torch.device, interpret: bool = False) -> str | None:
    """Why decodekit's Triton kernels cannot run on ``device``, or None when they can.

    With ``interpret``, a CPU device is fine when Triton's interpreter is on (``TRITON_INTERPRET=1``
    before Triton is imported; slow, for tests).
    """
    if triton is None:
        return "Triton is not installed"
    if device.type != "cuda" and not (interpret and os.environ.get("TRITON_INTERPRET") == "1"):
        return "Triton kernels need CUDA (or TRITON_INTERPRET=1 and kernels=True)"
    return None


def _pow2(n: int) -> int:
    return triton.next_power_of_2(n)


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(x, w, out, D, eps, s_x, s_out, BLOCK: tl.constexpr):
        n = tl.program_id(0)
        i = tl.arange(0, BLOCK)
        m = i < D
        v = tl.load(x + n * s_x + i, mask=m, other=0.0).to(tl.float32)
        r = tl.rsqrt(tl.sum(v * v, 0) / D + eps)
        g = tl.load(w + i, mask=m, other=0.0).to(tl.float32)
        tl.store(out + n * s_out + i, (v * r * g).to(out.dtype.element_ty), mask=m)

    @triton.jit
    def _rope_write_kernel(qkv, cos, sin, write, keys, values, q_out, T,
                           s_qkv, s_cs, s_kr, s_kh, s_kc, s_vr, s_vh, s_vc, s_qn, s_qh,
                           H: tl.constexpr, KVH: tl.constexpr, HD: tl.constexpr, BLOCK_D: tl.constexpr):
        n = tl.program_id(0)  # token: row n // T, step token n % T
        hh = tl.program_id(1)  # q heads 0..H-1, then k heads (each also copies its v head)
        r = n // T
        t = n % T
        d = tl.arange(0, BLOCK_D)
        m = d < HD
        half = HD // 2
        src = qkv + n * s_qkv + hh * HD
        x = tl.load(src + d, mask=m, other=0.0).to(tl.float32)
        xs = tl.load(src + (d + half) % HD, mask=m, other=0.0).to(tl.float32)  # rotate_half, unsigned
        c = tl.load(cos + n * s_cs + d, mask=m, other=0.0).to(tl.float32)
        s = tl.load(sin + n * s_cs + d, mask=m, other=0.0).to(tl.float32)
        y = x * c + tl.where(d < half, -xs, xs) * s
        if hh < H:
            tl.store(q_out + n * s_qn + hh * s_qh + d, y.to(q_out.dtype.element_ty), mask=m)
        else:
            kh = hh - H
            col = tl.load(write + t)
            tl.store(keys + r * s_kr + kh * s_kh + col * s_kc + d, y.to(keys.dtype.element_ty), mask=m)
            v = tl.load(qkv + n * s_qkv + (H + KVH + kh) * HD + d, mask=m, other=0.0)
            tl.store(values + r * s_vr + kh * s_vh + col * s_vc + d, v.to(values.dtype.element_ty), mask=m)

    @triton.jit
    def _attend_block(qv, keys, values, mask, start, last, r, j, m_i, l_i, acc, s_kr, s_kh, s_kc, s_vr, s_vh, s_vc,
                      s_mr, HD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
        """Online-softmax update with cache columns ``start .. start + BLOCK_C - 1``."""
        d = tl.arange(0, BLOCK_D)
        c = start + tl.arange(0, BLOCK_C)
        own = (c <= last) & (tl.load(mask + r * s_mr + c, mask=c <= last, other=0) > 0)  # [BLOCK_C]
        kvm = own[:, None] & (d[None, :] < HD)
        k = tl.load(keys + r * s_kr + j * s_kh + c[:, None] * s_kc + d[None, :], mask=kvm, other=0.0)
        s = tl.sum(qv[:, None, :] * k.to(tl.float32)[None, :, :], 2)  # [GP, BLOCK_C]
        s = tl.where(own[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])  # [GP, BLOCK_C]
        alpha = tl.exp(m_i - m_new)
        v = tl.load(values + r * s_vr + j * s_vh + c[:, None] * s_vc + d[None, :], mask=kvm, other=0.0)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], 1)
        l_i = l_i * alpha + tl.sum(p, 1)
        return m_new, l_i, acc

    @triton.jit
    def _attend_kernel(q, keys, values, mask, write, out, T, scale,
                       s_qn, s_qh, s_kr, s_kh, s_kc, s_vr, s_vh, s_vc, s_mr, s_on, s_oh,
                       G: tl.constexpr, GP: tl.constexpr, HD: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_C: tl.constexpr, STATIC_C: tl.constexpr):
        n = tl.program_id(0)  # token: row n // T, step token n % T
        j = tl.program_id(1)  # kv head: query heads j * G .. j * G + G - 1
        r = n // T
        t = n % T
        gi = tl.arange(0, GP)
        d = tl.arange(0, BLOCK_D)
        qm = (gi[:, None] < G) & (d[None, :] < HD)
        qv = tl.load(q + n * s_qn + (j * G + gi[:, None]) * s_qh + d[None, :], mask=qm, other=0.0)
        qv = qv.to(tl.float32) * scale  # [GP, BLOCK_D]
        last = tl.load(write + t)  # the token's own column: it sees owned columns <= last
        m_i = tl.full([GP], -1e30, tl.float32)
        l_i = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, BLOCK_D], tl.float32)
        if STATIC_C == 0:  # stop at the token's own column (a device value: no host sync, capture-safe)
            for start in range(0, last + 1, BLOCK_C):
                m_i, l_i, acc = _attend_block(qv, keys, values, mask, start, last, r, j, m_i, l_i, acc, s_kr, s_kh,
                                              s_kc, s_vr, s_vh, s_vc, s_mr, HD, BLOCK_D, BLOCK_C)
        else:  # Triton's interpreter wants host loop bounds: walk every column, masked
            for start in range(0, STATIC_C, BLOCK_C):
                m_i, l_i, acc = _attend_block(qv, keys, values, mask, start, last, r, j, m_i, l_i, acc, s_kr, s_kh,
                                              s_kc, s_vr, s_vh, s_vc, s_mr, HD, BLOCK_D, BLOCK_C)
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # a token that owns no column (left padding): 0
        tl.store(out + n * s_on + (j * G + gi[:, None]) * s_oh + d[None, :], o.to(out.dtype.element_ty), mask=qm)

    @triton.jit
    def _silu_mul_kernel(gu, out, FF, s_gu, s_out, BLOCK: tl.constexpr):
        n = tl.program_id(0)
        i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = i < FF
        g = tl.load(gu + n * s_gu + i, mask=m, other=0.0).to(tl.float32)
        u = tl.load(gu + n * s_gu + FF + i, mask=m, other=0.0).to(tl.float32)
        tl.store(out + n * s_out + i, (g / (1.0 + tl.exp(-g)) * u).to(out.dtype.element_ty), mask=m)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of the rows of ``x [N, d]`` (last dim contiguous) with ``weight [d]``: ``[N, d]``."""
    N, D = x.shape
    out = torch.empty_like(x)
    block = _pow2(D)
    _rms_norm_kernel[(N,)](x, weight, out, D, eps, x.stride(0), out.stride(0), BLOCK=block,
                           num_warps=4 if block <= 2048 else 8)
    return out


def rope_write(
    qkv: torch.Tensor,  # [N, (h + 2 kv) * hd], N = rows * T, rows contiguous
    cos: torch.Tensor,  # [N, hd]
    sin: torch.Tensor,  # [N, hd]
    write: torch.Tensor,  # [T] long: cache columns of the new tokens
    keys: torch.Tensor,  # [rows, kv, C, hd], last dim contiguous
    values: torch.Tensor,  # [rows, kv, C, hd], last dim contiguous
    heads: int,
    kv_heads: int,
    head_dim: int,
) -> torch.Tensor:  # [N, h, hd]: rotated queries
    """Rotary embeddings (``rotate_half`` convention) on q and k; k and v into the cache at ``write``."""
    N = qkv.shape[0]
    T = write.shape[0]
    q = torch.empty(N, heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    _rope_write_kernel[(N, heads + kv_heads)](
        qkv, cos, sin, write, keys, values, q, T,
        qkv.stride(0), cos.stride(0), keys.stride(0), keys.stride(1), keys.stride(2),
        values.stride(0), values.stride(1), values.stride(2), q.stride(0), q.stride(1),
        H=heads, KVH=kv_heads, HD=head_dim, BLOCK_D=_pow2(head_dim), num_warps=1)
    return q


def attend(
    q: torch.Tensor,  # [N, h, hd] rotated queries, N = rows * T
    keys: torch.Tensor,  # [rows, kv, C, hd]
    values: torch.Tensor,  # [rows, kv, C, hd]
    mask: torch.Tensor,  # [rows', C] long (rows' >= rows): 1 = the row owns the column
    write: torch.Tensor,  # [T] long: the new tokens' columns
    scale: float,
) -> torch.Tensor:  # [N, h, hd]
    """Attention of each new token over the owned cache columns up to its own (grouped-query)."""
    N, h, hd = q.shape
    kvh = keys.shape[1]
    g = h // kvh
    out = torch.empty_like(q)
    block_d = _pow2(hd)
    block_c = 32 if block_d >= 128 else 64
    _attend_kernel[(N, kvh)](
        q, keys, values, mask, write, out, write.shape[0], scale,
        q.stride(0), q.stride(1), keys.stride(0), keys.stride(1), keys.stride(2),
        values.stride(0), values.stride(1), values.stride(2), mask.stride(0), out.stride(0), out.stride(1),
        G=g, GP=max(_pow2(g), 2), HD=hd, BLOCK_D=block_d, BLOCK_C=block_c,
        STATIC_C=keys.shape[2] if os.environ.get("TRITON_INTERPRET") == "1" else 0, num_warps=4)
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up [N, 2 * ff]`` (gate first): ``[N, ff]``."""
    N, two_ff = gate_up.shape
    ff = two_ff // 2
    out = torch.empty(N, ff, dtype=gate_up.dtype, device=gate_up.device)
    block = min(_pow2(ff), 2048)
    _silu_mul_kernel[(N, triton.cdiv(ff, block))](gate_up, out, ff, gate_up.stride(0), out.stride(0),
                                                  BLOCK=block, num_warps=4)
    return out
