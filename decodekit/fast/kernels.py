"""Triton kernels of the fused step: RMSNorm, rotary + KV-cache write, decode attention, SiLU-and-mul.

A decode step of a small model is launch-bound: on an H200 each kernel of a CUDA graph costs ~2 us
however little it does, so the fused step (:mod:`decodekit.fast.fused`) wants as few as possible.
transformers' building blocks spend several kernels where one does:

* ``rope_write``: rotary embeddings on q and k, the k and v writes into the static cache, and q in
  ``[N, heads, head_dim]`` for attention -- one kernel instead of five (mul, flip, addcmul, two
  ``index_copy_``);
* ``attend``: attention of ``T`` new tokens over the static cache, reading the slab's 2-D column
  mask directly (no 4-D bias, no GQA repetition), split over column blocks (flash-decoding: on
  CUDA the last block of each token and head combines the partials, under Triton's interpreter a
  second kernel does); blocks past a token's own column read no memory; softmax in fp32;
* ``rope_attend``: both in one kernel (the fused step's decode and verify steps): the attention
  programs rotate their queries, take the step's new keys / values from the projection and write
  them into the cache -- one launch per layer fewer, same results;
* ``rms_norm``: one program per row; ``silu_mul``: ``silu(gate) * up`` from the fused gate/up
  product in one pass;
* the GEMV kernels with RMSNorm, SiLU-and-mul and the residual inside live in
  :mod:`decodekit.fast.gemv`.

Programmatic dependent launch (Hopper and later, :func:`~decodekit.fast.launch.pdl_meta`;
``DECODEKIT_PDL=0`` turns it off): ``rope_attend`` and the GEMV kernels are launched so that their programs may start while the
kernel before them finishes. What they load before ``griddepcontrol.wait`` is only what no kernel of
the step writes (weights; for ``rope_attend`` its block of the cache, the mask and the columns,
which the projection before it does not touch); they signal their own dependents only after the
wait, so an early start overlaps one kernel, never two. Bit for bit the plain launches' results.

Each computes in fp32 and rounds once to the output dtype, so results agree with transformers'
bf16 building blocks to bf16 rounding and exactly (to fp32 rounding) in fp32. They run on CUDA, or
on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``, the tests).
:func:`decodekit.fast.launch.kernel_reason` says why they cannot run; every launch goes through
:func:`decodekit.fast.launch.launch`.

Example:
    >>> from decodekit.fast import kernels
    >>> kernels.silu_mul(gate_up).shape                     # [N, 2 * ff] -> [N, ff]  # doctest: +SKIP
    torch.Size([3, 1536])
    >>> lm.fast.kernels                                     # on CUDA with Triton  # doctest: +SKIP
    True
"""

from __future__ import annotations

import torch

from decodekit.fast.launch import gdc_launch_dependents, gdc_wait, launch, pdl_meta, pow2, tickets_for, triton

if triton is not None:
    import triton.language as tl

__all__ = ["rms_norm", "rope_write", "attend", "rope_attend", "attend_fits", "silu_mul"]

ATTEND_MAX_COLUMNS = 4096  # longer caches use SDPA (see attend_fits)
MAX_SPLITS = 64  # column blocks per (token, kv head): partials of at most 64 x GP x head_dim floats
COMBINE_ELEMENTS = 16384  # partial outputs (blocks x GP x head_dim floats) the combine loads at once


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
    def _rotate(src, cs, sn, d, m, HD: tl.constexpr):
        """The rotary embedding (``rotate_half`` convention), in fp32, of the head(s) at ``src`` (``[1]``
        or ``[heads, 1]`` pointers; ``m`` masks their loads) with the cos / sin rows at ``cs`` / ``sn``."""
        half = HD // 2
        x = tl.load(src + d, mask=m, other=0.0).to(tl.float32)
        xs = tl.load(src + (d + half) % HD, mask=m, other=0.0).to(tl.float32)  # rotate_half, unsigned
        c = tl.load(cs + d, mask=d < HD, other=0.0).to(tl.float32)
        s = tl.load(sn + d, mask=d < HD, other=0.0).to(tl.float32)
        return x * c + tl.where(d < half, -xs, xs) * s

    @triton.jit(do_not_specialize=["T"])  # one compile for prefill, decode (T = 1) and verify widths
    def _rope_write_kernel(qkv, cos, sin, write, keys, values, q_out, T,
                           s_qkv, s_cs, s_kr, s_kh, s_kc, s_vr, s_vh, s_vc, s_qn, s_qh,
                           H: tl.constexpr, KVH: tl.constexpr, HD: tl.constexpr, BLOCK_D: tl.constexpr):
        n = tl.program_id(0)  # token: row n // T, step token n % T
        hh = tl.program_id(1)  # q heads 0..H-1, then k heads (each also copies its v head)
        r = n // T
        t = n % T
        d = tl.arange(0, BLOCK_D)
        m = d < HD
        y = _rotate(qkv + n * s_qkv + hh * HD, cos + n * s_cs, sin + n * s_cs, d, m, HD)  # [BLOCK_D]
        if hh < H:
            tl.store(q_out + n * s_qn + hh * s_qh + d, y.to(q_out.dtype.element_ty), mask=m)
        else:
            kh = hh - H
            col = tl.load(write + t)
            tl.store(keys + r * s_kr + kh * s_kh + col * s_kc + d, y.to(keys.dtype.element_ty), mask=m)
            v = tl.load(qkv + n * s_qkv + (H + KVH + kh) * HD + d, mask=m, other=0.0)
            tl.store(values + r * s_vr + kh * s_vh + col * s_vc + d, v.to(values.dtype.element_ty), mask=m)

    @triton.jit
    def _combine(part_m, part_l, part_o, out, n, j, S, s_on, s_oh, base, G: tl.constexpr, GP: tl.constexpr,
                 HD: tl.constexpr, BLOCK_D: tl.constexpr, SP: tl.constexpr, RB: tl.constexpr):
        """Combine the first ``S`` partial softmaxes at ``base`` (the blocks that hold columns up to the
        token's own) into the output of (token n, kv head j)."""
        gi = tl.arange(0, GP)
        d = tl.arange(0, BLOCK_D)
        top = tl.full([GP], -1e30, tl.float32)
        total = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, BLOCK_D], tl.float32)
        for b0 in range(0, SP, RB):  # RB partials at a time, combined online (loads past S read nothing)
            sb = b0 + tl.arange(0, RB)
            used = sb < S
            # .cg: read from L2, not a stale L1 line (other programs wrote the partials)
            m = tl.load(part_m + (base + sb[:, None]) * GP + gi[None, :], mask=used[:, None], other=-1e30,
                        cache_modifier=".cg")  # [RB, GP]
            l_ = tl.load(part_l + (base + sb[:, None]) * GP + gi[None, :], mask=used[:, None], other=0.0,
                         cache_modifier=".cg")
            o = tl.load(part_o + ((base + sb[:, None, None]) * GP + gi[None, :, None]) * BLOCK_D + d[None, None, :],
                        mask=used[:, None, None], other=0.0, cache_modifier=".cg")  # [RB, GP, BLOCK_D]
            new_top = tl.maximum(top, tl.max(m, 0))  # [GP]
            alpha = tl.exp(top - new_top)
            w = tl.exp(m - new_top[None, :])  # [RB, GP]
            total = total * alpha + tl.sum(w * l_, 0)
            acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * o, 0)
            top = new_top
        res = acc / tl.where(total > 0, total, 1.0)[:, None]  # a token that owns no column (left padding): 0
        qm = (gi[:, None] < G) & (d[None, :] < HD)
        tl.store(out + n * s_on + (j * G + gi[:, None]) * s_oh + d[None, :], res.to(out.dtype.element_ty), mask=qm)

    @triton.jit(do_not_specialize=["T", "S"])
    def _attend_split_kernel(q, keys, values, mask, write, part_m, part_l, part_o, out, tickets, cos, sin,
                             T, S, scale, s_qn, s_qh, s_cs, s_kr, s_kh, s_kc, s_vr, s_vh, s_vc, s_mr, s_on, s_oh,
                             G: tl.constexpr, GP: tl.constexpr, HD: tl.constexpr, BLOCK_D: tl.constexpr,
                             BLOCK_C: tl.constexpr, SP: tl.constexpr, RB: tl.constexpr, LAST_COMBINES: tl.constexpr,
                             ROPE: tl.constexpr, H: tl.constexpr, KVH: tl.constexpr, PDL: tl.constexpr):
        """With ``ROPE``, ``q`` is the raw q/k/v projection ``[N, (H + 2 KVH) * HD]``: the program rotates
        its queries, takes the step's new keys / values from it rather than from the cache (rounded to
        the cache's dtype, as the cache will hold them) and, in the block holding its token's own
        column, writes the token's key and value into the cache: rotary, cache write and attention in
        one kernel, each result equal to :func:`rope_write` followed by the plain kernel. With ``PDL``
        (``ROPE`` only: then the kernel before does not write the cache) the programs load their
        cache block before they wait for the kernel before to finish."""
        n = tl.program_id(0)  # token: row n // T, step token n % T
        j = tl.program_id(1)  # kv head: query heads j * G .. j * G + G - 1
        b = tl.program_id(2)  # column block: columns b * BLOCK_C ..
        r = n // T
        t = n % T
        last = tl.load(write + t)  # the token's own column: it sees owned columns <= last
        head = n * tl.num_programs(1) + j
        base = head * SP  # partials [N, kv, SP, GP(, BLOCK_D)]
        gi = tl.arange(0, GP)
        d = tl.arange(0, BLOCK_D)
        c = b * BLOCK_C + tl.arange(0, BLOCK_C)
        seen = c <= last  # [BLOCK_C]; none in blocks past the token's own column: they load nothing
        kvm = seen[:, None] & (d[None, :] < HD)  # the mask, k and v loads do not wait for each other
        own = seen & (tl.load(mask + r * s_mr + c, mask=seen, other=0) > 0)  # [BLOCK_C]
        k_in = tl.load(keys + r * s_kr + j * s_kh + c[:, None] * s_kc + d[None, :], mask=kvm, other=0.0)
        v_in = tl.load(values + r * s_vr + j * s_vh + c[:, None] * s_vc + d[None, :], mask=kvm, other=0.0)
        if PDL:  # the cache, its mask and the columns are not written by the kernel before (the
            # projection: PDL is for ROPE only); its output, q, is read past this point
            gdc_wait()
            gdc_launch_dependents()
        if b * BLOCK_C <= last:  # blocks past the token's own column do nothing but take their ticket
            qm = (gi[:, None] < G) & (d[None, :] < HD)
            qp = q + n * s_qn + (j * G + gi[:, None]) * s_qh  # [GP, 1]
            if ROPE:  # rotated as rope_write does, rounded to the dtype it stores
                qv = _rotate(qp, cos + n * s_cs, sin + n * s_cs, d, qm, HD).to(out.dtype.element_ty)
            else:
                qv = tl.load(qp + d[None, :], mask=qm, other=0.0)
            qv = qv.to(tl.float32) * scale  # [GP, BLOCK_D]
            k = k_in.to(tl.float32)  # [BLOCK_C, BLOCK_D] (new names: a Triton variable keeps its type)
            v = v_in.to(tl.float32)
            if ROPE:  # the step's new columns in this block come from the projection, not the cache
                dm = d < HD
                t2 = 0
                while t2 < T:  # (a while loop: Triton's interpreter cannot range() over a runtime int)
                    col = tl.load(write + t2)
                    if (col >= b * BLOCK_C) & (col < b * BLOCK_C + BLOCK_C) & (col <= last):
                        n2 = r * T + t2
                        kn = _rotate(q + n2 * s_qn + (H + j) * HD, cos + n2 * s_cs, sin + n2 * s_cs, d, dm, HD)
                        kn = kn.to(keys.dtype.element_ty)  # [BLOCK_D]
                        vn = tl.load(q + n2 * s_qn + (H + KVH + j) * HD + d, mask=dm, other=0.0)
                        vn = vn.to(values.dtype.element_ty)
                        hit = (c == col)[:, None]  # [BLOCK_C, 1]
                        k = tl.where(hit, kn.to(tl.float32)[None, :], k)
                        v = tl.where(hit, vn.to(tl.float32)[None, :], v)
                        if t2 == t:  # the token's own key and value: written once, by this program
                            tl.store(keys + r * s_kr + j * s_kh + col * s_kc + d, kn, mask=dm)
                            tl.store(values + r * s_vr + j * s_vh + col * s_vc + d, vn, mask=dm)
                    t2 += 1
            v = tl.where(own[:, None], v, 0.0)  # unowned columns may hold anything
            s = tl.sum(qv[:, None, :] * k[None, :, :], 2)  # [GP, BLOCK_C]
            s = tl.where(own[None, :], s, float("-inf"))
            m = tl.maximum(tl.max(s, 1), -1e30)  # [GP]; -1e30 when the block owns no column
            p = tl.exp(s - m[:, None])  # [GP, BLOCK_C]
            o = tl.sum(p[:, :, None] * v[None, :, :], 1)  # [GP, BLOCK_D]
            tl.store(part_m + (base + b) * GP + gi, m)
            tl.store(part_l + (base + b) * GP + gi, tl.sum(p, 1))
            tl.store(part_o + ((base + b) * GP + gi[:, None]) * BLOCK_D + d[None, :], o)
        if LAST_COMBINES:  # the last block of (token, head) to finish combines: no second kernel
            tl.debug_barrier()  # every thread's partial stores are issued before the ticket
            ticket = tl.atomic_add(tickets + head, 1, sem="acq_rel", scope="gpu")
            if ticket == S - 1:
                used = tl.minimum(last // BLOCK_C + 1, S)  # blocks that wrote partials
                _combine(part_m, part_l, part_o, out, n, j, used, s_on, s_oh, base, G, GP, HD, BLOCK_D, SP, RB)
                tl.atomic_xchg(tickets + head, 0, sem="relaxed", scope="gpu")  # reset for the next launch

    @triton.jit(do_not_specialize=["T", "S"])
    def _attend_reduce_kernel(part_m, part_l, part_o, out, write, T, S, s_on, s_oh,
                              G: tl.constexpr, GP: tl.constexpr, HD: tl.constexpr, BLOCK_D: tl.constexpr,
                              BLOCK_C: tl.constexpr, SP: tl.constexpr, RB: tl.constexpr):
        n = tl.program_id(0)
        j = tl.program_id(1)
        used = tl.minimum(tl.load(write + n % T) // BLOCK_C + 1, S)  # blocks that wrote partials
        _combine(part_m, part_l, part_o, out, n, j, used, s_on, s_oh, (n * tl.num_programs(1) + j) * SP,
                 G, GP, HD, BLOCK_D, SP, RB)

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
    block = pow2(D)
    launch(_rms_norm_kernel, (N,), x, weight, out, D, eps, x.stride(0), out.stride(0), BLOCK=block,
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
    launch(
        _rope_write_kernel, (N, heads + kv_heads), qkv, cos, sin, write, keys, values, q, T,
        qkv.stride(0), cos.stride(0), keys.stride(0), keys.stride(1), keys.stride(2),
        values.stride(0), values.stride(1), values.stride(2), q.stride(0), q.stride(1),
        H=heads, KVH=kv_heads, HD=head_dim, BLOCK_D=pow2(head_dim), num_warps=1)
    return q


def _block_c(C: int, gp: int, block_d: int) -> int:
    """Columns per program: ~4K products per program, at most ``MAX_SPLITS`` blocks."""
    return max(16, min(64, 4096 // (gp * block_d)), pow2(triton.cdiv(C, MAX_SPLITS)))


def attend_fits(tokens: int, columns: int) -> bool:
    """Whether :func:`attend` suits ``tokens`` new tokens (rows x step width) over ``columns`` columns;
    larger ones (prefill, long caches, big batches) go to SDPA: the partials would grow too large."""
    return tokens <= 64 and columns <= ATTEND_MAX_COLUMNS


def attend(
    q: torch.Tensor,  # [N, h, hd] rotated queries, N = rows * T
    keys: torch.Tensor,  # [rows, kv, C, hd]
    values: torch.Tensor,  # [rows, kv, C, hd]
    mask: torch.Tensor,  # [rows', C] long (rows' >= rows): 1 = the row owns the column
    write: torch.Tensor,  # [T] long: the new tokens' columns
    scale: float,
    *,
    block_c: int | None = None,
    last_combines: bool | None = None,
) -> torch.Tensor:  # [N, h, hd]
    """Attention of each new token over the owned cache columns up to its own (grouped-query).

    Split over column blocks (flash-decoding): one program per (token, kv head, block of columns)
    writes a partial softmax (max, sum, weighted values); the last program of each (token, kv head)
    to finish combines them (an atomic ticket; under Triton's interpreter a second kernel does).
    Blocks past a token's own column read and write no memory and the combine reads only the blocks
    before them, so the cost follows the filled length, not the capacity. ``block_c`` (columns per
    program) and ``last_combines`` are for benchmarks.
    """
    N, h, hd = q.shape
    return _attend(q, q.stride(0), q.stride(1), h, hd, keys, values, mask, write, scale, None, block_c,
                   last_combines)


def rope_attend(
    qkv: torch.Tensor,  # [N, (h + 2 kv) * hd], N = rows * T, rows contiguous
    cos: torch.Tensor,  # [N, hd]
    sin: torch.Tensor,  # [N, hd]
    write: torch.Tensor,  # [T] long: cache columns of the new tokens
    keys: torch.Tensor,  # [rows, kv, C, hd], last dim contiguous
    values: torch.Tensor,  # [rows, kv, C, hd], last dim contiguous
    mask: torch.Tensor,  # [rows', C] long (rows' >= rows): 1 = the row owns the column
    heads: int,
    kv_heads: int,
    head_dim: int,
    scale: float,
    *,
    block_c: int | None = None,
    last_combines: bool | None = None,
) -> torch.Tensor:  # [N, h, hd]
    """:func:`rope_write` then :func:`attend` as one kernel, with the same results and the same cache
    contents after it: the attention programs rotate their own queries and read the step's new keys
    and values from ``qkv``; the program that holds a token's own column writes them into the cache."""
    return _attend(qkv, qkv.stride(0), head_dim, heads, head_dim, keys, values, mask, write, scale,
                   (cos, sin, kv_heads), block_c, last_combines)


def _attend(q, s_qn, s_qh, h, hd, keys, values, mask, write, scale, rope, block_c, last_combines):
    """Launch the split attention kernel (and its reduce kernel where programs do not combine)."""
    N = q.shape[0]
    kvh, C = keys.shape[1], keys.shape[2]
    g = h // kvh
    gp, block_d = max(pow2(g), 2), pow2(hd)
    block_c = block_c or _block_c(C, gp, block_d)
    S = triton.cdiv(C, block_c)  # <= MAX_SPLITS
    sp = pow2(S)
    rb = min(sp, max(2, COMBINE_ELEMENTS // (gp * block_d)))  # partials combined per pass
    if last_combines is None:
        last_combines = q.device.type == "cuda"
    part_m = torch.empty(N, kvh, sp, gp, dtype=torch.float32, device=q.device)
    part_l = torch.empty_like(part_m)
    part_o = torch.empty(N, kvh, sp, gp, block_d, dtype=torch.float32, device=q.device)
    out = torch.empty(N, h, hd, dtype=q.dtype, device=q.device)
    tickets = tickets_for(q.device, N * kvh) if last_combines else part_m
    cos, sin, rope_kv = rope if rope is not None else (q, q, kvh)
    launch(
        _attend_split_kernel, (N, kvh, S), q, keys, values, mask, write, part_m, part_l, part_o, out, tickets,
        cos, sin, write.shape[0], S, scale, s_qn, s_qh, cos.stride(0),
        keys.stride(0), keys.stride(1), keys.stride(2),
        values.stride(0), values.stride(1), values.stride(2), mask.stride(0), out.stride(0), out.stride(1),
        G=g, GP=gp, HD=hd, BLOCK_D=block_d, BLOCK_C=block_c, SP=sp, RB=rb, LAST_COMBINES=last_combines,
        ROPE=rope is not None, H=h, KVH=rope_kv, num_warps=4,
        **pdl_meta(q.device, None if rope is not None else False))
    if not last_combines:
        launch(_attend_reduce_kernel, (N, kvh), part_m, part_l, part_o, out, write, write.shape[0], S,
               out.stride(0), out.stride(1), G=g, GP=gp, HD=hd, BLOCK_D=block_d, BLOCK_C=block_c, SP=sp, RB=rb,
               num_warps=4)
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up [N, 2 * ff]`` (gate first): ``[N, ff]``."""
    N, two_ff = gate_up.shape
    ff = two_ff // 2
    out = torch.empty(N, ff, dtype=gate_up.dtype, device=gate_up.device)
    block = min(pow2(ff), 2048)
    launch(_silu_mul_kernel, (N, triton.cdiv(ff, block)), gate_up, out, ff, gate_up.stride(0), out.stride(0),
           BLOCK=block, num_warps=4)
    return out
