"""Triton GEMV kernels for decode steps, with what surrounds the projection inside.

A decode step of a small model is launch-bound (:mod:`decodekit.fast.kernels`): a cuBLAS GEMV of
SmolLM2's sizes takes ~3.5-7 us on an H200 for well under a microsecond of memory traffic, and the
RMSNorm before it or the SiLU-and-mul before the down projection is one more ~2 us kernel. A large
model's step is bandwidth-bound, yet those small kernels and cuBLAS's split-K reductions between
its GEMVs still cost ~20 us a layer of an 8B model. Here:

* ``norm_linear``: RMSNorm and the following projection in one kernel (q/k/v, gate/up);
* ``act_linear_add_``: SiLU-and-mul, the down projection and the residual addition in one;
* ``linear_add_``: the projection and the residual addition (the output projection, where
  :data:`GEMV_O_PROJ` says so).

With ``rope_attend`` a decode step is 5 kernels per layer, not 8, each GEMV faster than cuBLAS's
at one row (:data:`GEMV`; :func:`gemv_fits` says where: a few rows of a small weight, one row of a
large one; wider steps keep cuBLAS). No ``tl.dot``: each program owns a few output features, loads
each weight tile once (contiguous along ``in``) and reduces it against every row in fp32 -- tile by
tile, or for large weights element-wise over the whole reduction and summed once at the end; a
long reduction may be split over programs, the last of which sums the partials in a fixed order
(bitwise reproducible). Rounding as the kernels they replace: the activation rounded once to the
weights' dtype, fp32 accumulation, one rounding of the output.

Example:
    >>> from decodekit.fast import gemv
    >>> gemv.gemv_fits(1, 960, 576), gemv.gemv_fits(12, 960, 576)
    (True, False)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

import torch

from decodekit.fast.launch import gdc_launch_dependents, gdc_wait, launch, pdl_meta, pow2, tickets_for, triton

if triton is not None:
    import triton.language as tl
if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["GemvLaunch", "act_linear_add_", "gemv_fits", "head_fits", "linear_add_", "norm_linear"]

# the GEMV kernels (norm_linear, act_linear_add_, linear_add_; benchmarks/bench_gemv.py). Per call on
# an H200 (bf16, cold L2, 4 outputs a program), against RMSNorm / SiLU-and-mul + cuBLAS: at 1 row 0.5-0.75x
# for SmolLM2's shapes (q/k/v 2.6 vs 4.9 us, down 3.4 vs 6.9 us, o 2.7 vs 3.7 us) and 0.8-1.15x for
# Llama-3.2-1B's; at 4 rows 0.7-1.05x for SmolLM2's; at 16 rows 1.5-20x slower (each program's work
# grows with the rows): so they take decode steps of up to GEMV_FIT_ROWS tokens, verify steps keep cuBLAS
GEMV = True
GEMV_FIT_ROWS = 4  # tokens per call (rows x step width) up to which gemv_fits chooses them
GEMV_MAX_ROWS = 16  # the most tokens per call the kernels take: each program keeps [rows, block_o] sums
GEMV_BLOCK_K = 2048  # the default reduction block's largest size (a whole reduction up to it)
GEMV_BLOCK_O = 8  # the default output features a program (small weights; was 4: _gemv_launch)
GEMV_MAX_ELEMENTS = 8 * 2**20  # out x in of the largest "small" weight: up to GEMV_FIT_ROWS rows, small blocks
# larger weights (Llama-3.1-8B's, and Llama-3.2-1B's gate/up and down) at one row: the large-weight
# launch (LARGE_BLOCKS). Chained over an 8B layer's projections on an H200 (bench_chain.py) with
# programmatic dependent launch: 118.2 us a layer against cuBLAS's 123.5 (RMSNorm / SiLU kernels
# included); at 4 rows such weights keep cuBLAS (the kernels were 1.7-2.4x slower there)
GEMV_LARGE = True
LARGE_BLOCKS: GemvLaunch = dict(block_o=8, block_k=1024, late=True)  # the large-weight launch (bench_gemv.py --sweep)
GEMV_O_PROJ = True  # the output projection as linear_add_ instead of cuBLAS addmm_ (no kernel saved; faster)
GEMV_HEAD = False  # the final norm and the output head as one norm_linear (slower than cuBLAS at one row)
GEMV_HEAD_MAX_ELEMENTS = 64 * 2**20  # vocab x hidden of the largest output head it takes


if triton is not None:

    @triton.jit
    def _gemv_rows(a, g, w, n, nm, k, km, r, s_a, K: tl.constexpr, NORM: tl.constexpr, ACT: tl.constexpr,
                   L2: tl.constexpr = False):
        """The activation ``[BN, BK]`` of rows ``n`` at columns ``k``, rounded to w's dtype as the kernels
        the GEMV kernels replace round it (rms_norm, silu_mul), then in fp32 (``L2``: loaded from L2,
        not L1, where other programs of the same launch wrote ``a``)."""
        m = nm[:, None] & km[None, :]
        src = a + n[:, None] * s_a + k[None, :]
        v = tl.load(src, mask=m, other=0.0, cache_modifier=".cg" if L2 else "").to(tl.float32)
        if NORM:  # a = x: the normalised rows times the norm weight (r: each row's 1 / rms)
            gk = tl.load(g + k, mask=km, other=0.0).to(tl.float32)
            v = (v * r[:, None] * gk[None, :]).to(w.dtype.element_ty)
        elif ACT:  # a = [gate | up], K = ff
            up = tl.load(src + K, mask=m, other=0.0, cache_modifier=".cg" if L2 else "").to(tl.float32)
            v = (v / (1.0 + tl.exp(-v)) * up).to(w.dtype.element_ty)
        return v.to(tl.float32)

    @triton.jit
    def _gemv_inv_rms(a, n, nm, eps, s_a, K: tl.constexpr, BK: tl.constexpr, L2: tl.constexpr = False):
        """``[BN]`` each row ``n``'s ``1 / sqrt(mean(a**2) + eps)`` over its ``K`` columns, in tiles of
        ``BK`` (``L2``: as :func:`_gemv_rows`)."""
        ss = tl.zeros(n.shape, tl.float32)
        for k0 in range(0, K, BK):
            kk = k0 + tl.arange(0, BK)
            v = tl.load(a + n[:, None] * s_a + kk[None, :], mask=nm[:, None] & (kk < K)[None, :], other=0.0,
                        cache_modifier=".cg" if L2 else "")
            v = v.to(tl.float32)
            ss += tl.sum(v * v, 1)
        return tl.rsqrt(ss / K + eps)

    @triton.jit
    def _gemv_store(acc, bias, out, n, nm, o, om, s_out, ADD: tl.constexpr, HAS_BIAS: tl.constexpr):
        """``out[n, o] (+)= acc [BN, BO] (+ bias[o])``: added in fp32, rounded once."""
        if HAS_BIAS:
            acc += tl.load(bias + o, mask=om, other=0.0).to(tl.float32)[None, :]
        m = nm[:, None] & om[None, :]
        dst = out + n[:, None] * s_out + o[None, :]  # each program owns its columns of out: no race
        if ADD:
            acc += tl.load(dst, mask=m, other=0.0).to(tl.float32)
        tl.store(dst, acc.to(out.dtype.element_ty), mask=m)

    # N: one compile per power of two of the rows; the reduction length is a constexpr (the
    # interpreter cannot loop to a runtime bound; one compile per weight width anyway)
    @triton.jit(do_not_specialize=["N"])
    def _gemv_kernel(a, g, w, bias, out, part, tickets, N, OUT, eps, s_a, s_w, s_out,
                     K: tl.constexpr, KS: tl.constexpr, SPLIT: tl.constexpr, NORM: tl.constexpr,
                     ACT: tl.constexpr, ADD: tl.constexpr, HAS_BIAS: tl.constexpr, BN: tl.constexpr,
                     BO: tl.constexpr, BK: tl.constexpr, LATE: tl.constexpr, PDL: tl.constexpr):
        """``out (+)= act(a) @ w.T (+ bias)`` for the rows of ``a``: no ``tl.dot``. Program (i, s) owns
        output features ``i * BO ..`` and reduction columns ``s * KS .. s * KS + KS - 1``; each weight
        tile ``[BO, BK]`` is loaded once (contiguous along ``in``) and used for all ``BN`` rows. With
        ``PDL`` (programmatic dependent launch) the first tile -- weights, which no kernel writes -- is
        loaded before the program waits for the kernel before it to finish; its results are read
        only after. The loop over the later tiles holds nothing but loads and products, so Triton
        can pipeline it (``num_stages``). ``LATE``: the products accumulate element-wise in
        ``[BN, BO, BK]`` and are summed over ``BK`` once at the end (large weights: no cross-thread
        reduction per tile); otherwise each tile is summed as it comes (small weights, one tile)."""
        po = tl.program_id(0)
        ks = tl.program_id(1)
        o = po * BO + tl.arange(0, BO)  # [BO]: this program's output features
        om = o < OUT
        n = tl.arange(0, BN)  # [BN]: rows, the first N real
        nm = n < N
        k = ks * KS + tl.arange(0, BK)  # [BK]: the first tile's columns
        wt = tl.load(w + o[:, None] * s_w + k[None, :], mask=om[:, None] & (k < K)[None, :], other=0.0)  # [BO, BK]
        if PDL:  # the previous kernel's outputs (a, out, the tickets) are complete past this point
            gdc_wait()
            gdc_launch_dependents()  # after the wait: a dependent's early part overlaps this kernel only
        r = tl.zeros([BN], tl.float32)
        if NORM:  # each row's 1 / rms over all of d (x is a few rows, L2-resident)
            r = _gemv_inv_rms(a, n, nm, eps, s_a, K, BK)
        km = k < K
        v = _gemv_rows(a, g, w, n, nm, k, km, r, s_a, K, NORM, ACT)  # [BN, BK], once per program
        prod = v[:, None, :] * wt.to(tl.float32)[None, :, :]  # [BN, BO, BK]; exact bf16 products
        if LATE:
            acc3 = prod
        else:
            acc = tl.sum(prod, 2)  # [BN, BO]
        for k0 in range(BK, KS, BK):  # the first tile is done above
            k = ks * KS + k0 + tl.arange(0, BK)  # [BK]
            km = k < K
            wt = tl.load(w + o[:, None] * s_w + k[None, :], mask=om[:, None] & km[None, :], other=0.0)
            v = _gemv_rows(a, g, w, n, nm, k, km, r, s_a, K, NORM, ACT)
            prod = v[:, None, :] * wt.to(tl.float32)[None, :, :]
            if LATE:
                acc3 += prod
            else:
                acc += tl.sum(prod, 2)
        if LATE:
            acc = tl.sum(acc3, 2)  # [BN, BO]
        if SPLIT > 1:  # split-K: partials [SPLIT, BN, OUT]; the last program of output block po sums them
            pm = nm[:, None] & om[None, :]
            tl.store(part + (ks * BN + n[:, None]) * OUT + o[None, :], acc, mask=pm)
            tl.debug_barrier()  # every thread's partial stores are issued before the ticket
            ticket = tl.atomic_add(tickets + po, 1, sem="acq_rel", scope="gpu")
            if ticket == SPLIT - 1:
                tot = tl.zeros([BN, BO], tl.float32)
                for j in range(SPLIT):  # in split order, whoever finishes last: bitwise reproducible
                    # .cg: read from L2, not a stale L1 line (other programs wrote the partials)
                    tot += tl.load(part + (j * BN + n[:, None]) * OUT + o[None, :], mask=pm, other=0.0,
                                   cache_modifier=".cg")
                _gemv_store(tot, bias, out, n, nm, o, om, s_out, ADD, HAS_BIAS)
                tl.atomic_xchg(tickets + po, 0, sem="relaxed", scope="gpu")  # reset for the next launch
        else:
            _gemv_store(acc, bias, out, n, nm, o, om, s_out, ADD, HAS_BIAS)


class GemvLaunch(TypedDict, total=False):
    """How a GEMV kernel is launched, for benchmarks and tests (each left out: :func:`_gemv_launch`'s
    default rule)."""

    block_o: int  # output features a program
    block_k: int  # reduction columns a weight tile
    num_warps: int
    split_k: int  # programs along the reduction (the last sums their partials)
    late: bool  # sum the products once after the last tile (large weights) rather than tile by tile
    num_stages: int  # the tile loop's software-pipeline depth
    pdl: bool  # programmatic dependent launch (default: where the GPU supports it)


def gemv_fits(tokens: int, out_features: int, in_features: int) -> bool:
    """Whether the GEMV kernels (:func:`norm_linear`, :func:`act_linear_add_`, :func:`linear_add_`)
    suit ``tokens`` rows times a weight ``[out_features, in_features]``, where :data:`GEMV` is on: a
    few rows (decode steps, :data:`GEMV_FIT_ROWS`) of a small weight (:data:`GEMV_MAX_ELEMENTS`), or
    one row of a larger weight (:data:`GEMV_LARGE`: greedy and sampling decode steps of 1B-8B
    models). Prefill, verify steps and several rows of large weights keep cuBLAS.

    Example:
        >>> gemv_fits(1, 960, 576), gemv_fits(12, 960, 576), gemv_fits(1, 28672, 4096), gemv_fits(4, 28672, 4096)
        (True, False, True, False)
    """
    if not GEMV:
        return False
    if out_features * in_features <= GEMV_MAX_ELEMENTS:
        return tokens <= GEMV_FIT_ROWS
    return GEMV_LARGE and tokens == 1


def head_fits(tokens: int, vocab: int, hidden: int) -> bool:
    """Whether the final RMSNorm and the output head ``[vocab, hidden]`` run as one :func:`norm_linear`
    for ``tokens`` rows: as :func:`gemv_fits`, up to :data:`GEMV_HEAD_MAX_ELEMENTS` (the default
    model's 49152 x 576 head, not Llama-3's 128256-token ones), where :data:`GEMV_HEAD` is on (off by
    default: on an H200 the kernel takes 27 us for the default model's head at one row, cuBLAS 18 us).

    Example:
        >>> head_fits(1, 49152, 576)   # GEMV_HEAD is off by default
        False
    """
    return GEMV and GEMV_HEAD and tokens <= GEMV_FIT_ROWS and vocab * hidden <= GEMV_HEAD_MAX_ELEMENTS


def _gemv_launch(x: torch.Tensor, weight: torch.Tensor, a: torch.Tensor, block_o: int | None = None,
                 block_k: int | None = None, num_warps: int | None = None, split_k: int | None = None,
                 late: bool | None = None, num_stages: int | None = None,
                 pdl: bool | None = None) -> tuple[tuple[int, int], dict]:
    """Checks, grid and launch parameters shared by the GEMV kernels (``a``: the rows they reduce over).

    Default rule, from H200 sweeps (bf16, cold L2; ``benchmarks/bench_gemv.py --sweep``). Small
    weights (SmolLM2-135M's and Llama-3.2-1B's shapes at 1, 4 and 16 rows): :data:`GEMV_BLOCK_O`
    (8) output features a program, however many programs that makes; the whole reduction in one
    block up to 2048 columns (blocks of 2048 past that); split-K only where the output blocks are
    fewer than 128 and the reduction takes several blocks; 4 warps. Smaller reduction blocks and
    split-K were slower or within a few percent. 8 outputs a program rather than 4: SmolLM2's
    layer chain with programmatic dependent launch (``bench_chain.py``) took 9.00 / 15.73 us a layer
    at 1 / 4 rows against 9.23 / 16.85, the 1B shape's 43.42 against 44.35 at one row (at 8 rows,
    where verify steps keep cuBLAS, 27.13 against 24.12). Weights past :data:`GEMV_MAX_ELEMENTS`
    (Llama-3.1-8B's at one row): :data:`LARGE_BLOCKS`, 8 output features a program and blocks of
    1024 columns summed late (0.78-1.01x cuBLAS's time per projection, where the small rule took
    0.93-1.20x).
    """
    N = x.shape[0]
    out_features, in_features = weight.shape
    if out_features * in_features > GEMV_MAX_ELEMENTS:  # LARGE_BLOCKS fills in what the call leaves out
        block_o, block_k = block_o or LARGE_BLOCKS.get("block_o"), block_k or LARGE_BLOCKS.get("block_k")
        split_k = LARGE_BLOCKS.get("split_k") if split_k is None else split_k
        late = LARGE_BLOCKS.get("late") if late is None else late
    if N > GEMV_MAX_ROWS:
        raise ValueError(f"decodekit.fast: {N} rows for a GEMV kernel (at most {GEMV_MAX_ROWS})")
    if not x.dtype == a.dtype == weight.dtype or x.stride(-1) != 1 or a.stride(-1) != 1 or weight.stride(-1) != 1:
        raise ValueError("decodekit.fast: GEMV kernels need one dtype and contiguous last dims")
    block_o = block_o or GEMV_BLOCK_O
    block_k = block_k or min(pow2(in_features), GEMV_BLOCK_K)
    blocks_o, blocks_k = triton.cdiv(out_features, block_o), triton.cdiv(in_features, block_k)
    if split_k is None:
        split_k = max(1, min(blocks_k, 128 // blocks_o))
    ks = triton.cdiv(blocks_k, min(split_k, blocks_k)) * block_k  # reduction columns a program, whole blocks
    split_k = triton.cdiv(in_features, ks)
    num_warps = num_warps or 4
    late = False if late is None else late
    stages = {} if num_stages is None else dict(num_stages=num_stages)
    return (blocks_o, split_k), dict(K=in_features, KS=ks, SPLIT=split_k, BN=pow2(N), BO=block_o, BK=block_k,
                                     LATE=bool(late), num_warps=num_warps, **stages, **pdl_meta(x.device, pdl))


def _gemv(a: torch.Tensor, g: torch.Tensor | None, eps: float, weight: torch.Tensor, bias: torch.Tensor | None,
          out: torch.Tensor, norm: bool, act: bool, add: bool, launch_kw: GemvLaunch) -> torch.Tensor:
    """Launch :func:`_gemv_kernel`: ``out [N, out_features] (+)= act(a) @ weight.T (+ bias)``."""
    grid, meta = _gemv_launch(out, weight, a, **launch_kw)
    part = tickets = weight  # unused without split-K
    if meta["SPLIT"] > 1:
        part = torch.empty(meta["SPLIT"], meta["BN"], out.shape[1], dtype=torch.float32, device=out.device)
        tickets = tickets_for(out.device, grid[0])
    launch(_gemv_kernel, grid, a, weight if g is None else g, weight, weight if bias is None else bias, out, part,
           tickets, out.shape[0], weight.shape[0], eps, a.stride(0), weight.stride(0), out.stride(0),
           NORM=norm, ACT=act, ADD=add, HAS_BIAS=bias is not None, **meta)
    return out


def norm_linear(
    x: torch.Tensor,  # [N, d], N <= GEMV_MAX_ROWS
    norm_weight: torch.Tensor,  # [d]
    eps: float,
    weight: torch.Tensor,  # [out, d], x's dtype
    bias: torch.Tensor | None = None,  # [out]
    **launch_kw: Unpack[GemvLaunch],
) -> torch.Tensor:  # [N, out]
    """``F.linear(rms_norm(x, norm_weight, eps), weight, bias)`` in one kernel.

    Rounds as :func:`rms_norm` then ``F.linear`` do: the normalised rows in fp32 times
    ``norm_weight``, once to x's dtype; the products accumulate in fp32 and round once. One program
    per ``block_o`` output features (and per ``split_k`` part of ``d``) takes every row: it first
    sums each row's squares over all of ``d``, then walks ``d`` in blocks of ``block_k`` (one block
    when ``d`` fits), loading each weight tile once for all rows (no ``tl.dot``). Where
    :func:`gemv_fits` says so; ``launch_kw`` (:class:`GemvLaunch`) is for benchmarks and tests
    (defaults: :func:`_gemv_launch`).

    Example:
        >>> x = torch.randn(3, 576, device="cuda", dtype=torch.bfloat16)           # doctest: +SKIP
        >>> w = torch.randn(960, 576, device="cuda", dtype=torch.bfloat16)         # doctest: +SKIP
        >>> norm_linear(x, torch.ones(576, device="cuda"), 1e-5, w).shape          # doctest: +SKIP
        torch.Size([3, 960])
    """
    out = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype, device=x.device)
    return _gemv(x, norm_weight, eps, weight, bias, out, True, False, False, launch_kw)


def act_linear_add_(
    x: torch.Tensor,  # [N, d], updated in place; N <= GEMV_MAX_ROWS
    gate_up: torch.Tensor,  # [N, 2 * ff]: gate, then up
    weight: torch.Tensor,  # [d, ff]
    **launch_kw: Unpack[GemvLaunch],
) -> torch.Tensor:  # x
    """``x += (silu(gate) * up) @ weight.T`` in place, in one kernel: the MLP's end and its residual.

    The activation rounds to x's dtype as :func:`silu_mul` does (each program activates only its
    own ``[N, block_k]`` chunks, once); the products accumulate in fp32, are added to x in fp32 and
    round once (as ``x.addmm_``). With ``split_k`` > 1 the last program of each output block sums
    the fp32 partials in a fixed order (an atomic ticket): reproducible bit for bit. Blocks as
    :func:`norm_linear`.

    Example:
        >>> x = torch.randn(1, 576, device="cuda", dtype=torch.bfloat16)            # doctest: +SKIP
        >>> gate_up = torch.randn(1, 3072, device="cuda", dtype=torch.bfloat16)     # doctest: +SKIP
        >>> down = torch.randn(576, 1536, device="cuda", dtype=torch.bfloat16)      # doctest: +SKIP
        >>> act_linear_add_(x, gate_up, down) is x                                  # doctest: +SKIP
        True
    """
    if gate_up.shape[1] != 2 * weight.shape[1]:
        raise ValueError(f"decodekit.fast: gate_up {tuple(gate_up.shape)} for a weight {tuple(weight.shape)}")
    return _gemv(gate_up, None, 0.0, weight, None, x, False, True, True, launch_kw)


def linear_add_(
    x: torch.Tensor,  # [N, d], updated in place; N <= GEMV_MAX_ROWS
    a: torch.Tensor,  # [N, k]
    weight: torch.Tensor,  # [d, k]
    bias: torch.Tensor | None = None,  # [d]
    **launch_kw: Unpack[GemvLaunch],
) -> torch.Tensor:  # x
    """``x += a @ weight.T (+ bias)`` in place, in one kernel (the output projection and its residual;
    the fused step uses it when :data:`GEMV_O_PROJ`). Rounds once, as ``x.addmm_``; blocks as
    :func:`act_linear_add_`."""
    return _gemv(a, None, 0.0, weight, bias, x, False, False, True, launch_kw)
