"""A feasibility probe: ``bench_chain.py``'s layer chain as ONE persistent Triton kernel.

A decode step of a small model on an H200 is latency-bound: SmolLM2-135M's 1-token forward is 168
kernels in ~0.5 ms, and a verify forward of 4-8 tokens costs 1.8-2.3x that, because each kernel's
programs do more dependent work per token. Prompt lookup's 1.8x goal (issue 5) needs a verify
step within ~1.3x of a decode step. The question this probe answers with numbers: does a
*persistent* forward -- one launch, one program per SM, the phases of each layer separated by
grid-wide barriers -- cost less, and grow less with the tokens, than the chain of GEMV kernels?

The kernel computes what ``bench_chain.chain`` does (attention left out), layer after layer:

1. ``qkv = rms_norm(x, g1) @ Wqkv.T``
2. ``x += qkv[:, :hq] @ Wo.T``
3. ``gu = rms_norm(x, g2) @ Wgu.T``
4. ``x += silu_mul(gu) @ Wdown.T``

each phase spread over the programs by blocks of output features (a grid-stride loop), with a
grid-wide barrier between phases: every program adds 1 to a counter after its stores (release)
and waits for the counter to reach the phase's target (acquire). Before waiting, a program loads
its first weight tile of the coming phase -- weights do not depend on the barrier -- so the wait
hides that load's latency, as programmatic dependent launch does for the kernel chain.

All programs must be resident at once (one per SM, nothing else running): ``programs`` defaults
to the SM count. Not part of decodekit: a measurement for ``bench_chain.py --persistent``.

Measured on an H200 (BENCHMARKS.md, "CUDA-graph fast path"): with whole-row tiles
(``8.8.8.8:1024:4``) it equals the GEMV chain bit for bit and costs 14.20 / 42.27 us a layer at 1 / 8
rows against the chain's 8.92 / 26.89 -- the barriers cost more than kernel boundaries under
programmatic dependent launch, and the growth with the rows stays.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from decodekit.fast.gemv import _gemv_inv_rms, _gemv_rows


@triton.jit
def _arrive(ctr):
    tl.debug_barrier()  # every thread's stores of this phase are issued before the release
    tl.atomic_add(ctr, 1, sem="release", scope="gpu")


@triton.jit
def _wait(ctr, target):
    seen = tl.atomic_add(ctr, 0, sem="acquire", scope="gpu")
    while seen < target:
        seen = tl.atomic_add(ctr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _phase(a, g, w, out, ctr, target, N, eps, s_a, s_out, OUT: tl.constexpr, K: tl.constexpr,
           NORM: tl.constexpr, ACT: tl.constexpr, ADD: tl.constexpr, BN: tl.constexpr, BO: tl.constexpr,
           BK: tl.constexpr, P: tl.constexpr):
    """``out[:, blocks of this program] (+)= act(a) @ w.T``, after waiting for ``ctr >= target``."""
    pid = tl.program_id(0)
    n = tl.arange(0, BN)
    nm = n < N
    o = pid * BO + tl.arange(0, BO)
    om = o < OUT
    k = tl.arange(0, BK)
    km = k < K
    wt0 = tl.load(w + o[:, None] * K + k[None, :], mask=om[:, None] & km[None, :], other=0.0)  # before the wait
    _wait(ctr, target)
    r = tl.zeros([BN], tl.float32)
    if NORM:
        r = _gemv_inv_rms(a, n, nm, eps, s_a, K, BK, True)  # from L2: other programs wrote a
    for i in range(0, tl.cdiv(tl.cdiv(OUT, BO), P)):  # the program's blocks, P apart
        blk = pid + i * P
        o = blk * BO + tl.arange(0, BO)
        om = o < OUT
        acc = tl.zeros([BN, BO], tl.float32)
        for k0 in range(0, K, BK):
            kk = k0 + tl.arange(0, BK)
            kkm = kk < K
            if i == 0 and k0 == 0:
                wt = wt0
            else:
                wt = tl.load(w + o[:, None] * K + kk[None, :], mask=om[:, None] & kkm[None, :], other=0.0)
            v = _gemv_rows(a, g, w, n, nm, kk, kkm, r, s_a, K, NORM, ACT, True)  # [BN, BK]: L2, not a stale L1
            acc += tl.sum(v[:, None, :] * wt.to(tl.float32)[None, :, :], 2)
        m = nm[:, None] & om[None, :]
        dst = out + n[:, None] * s_out + o[None, :]
        if ADD:
            acc += tl.load(dst, mask=m, other=0.0, cache_modifier=".cg").to(tl.float32)
        tl.store(dst, acc.to(out.dtype.element_ty), mask=m)


@triton.jit
def _chain_kernel(x, g1, g2, wqkv, wo, wgu, wdown, qkv, gu, ctr, N, eps, L: tl.constexpr,
                  D: tl.constexpr, HQ: tl.constexpr, QKV: tl.constexpr, FF: tl.constexpr,
                  BN: tl.constexpr, BO_QKV: tl.constexpr, BO_O: tl.constexpr, BO_GU: tl.constexpr,
                  BO_DOWN: tl.constexpr, BK: tl.constexpr, P: tl.constexpr):
    for layer in range(L):
        t = layer * 4 * P  # arrivals before this layer's first phase
        _phase(x, g1 + layer * D, wqkv + layer * QKV * D, qkv, ctr, t, N, eps, D, QKV,
               QKV, D, True, False, False, BN, BO_QKV, BK, P)
        _arrive(ctr)
        _phase(qkv, g1, wo + layer * D * HQ, x, ctr, t + P, N, eps, QKV, D,
               D, HQ, False, False, True, BN, BO_O, BK, P)
        _arrive(ctr)
        _phase(x, g2 + layer * D, wgu + layer * 2 * FF * D, gu, ctr, t + 2 * P, N, eps, D, 2 * FF,
               2 * FF, D, True, False, False, BN, BO_GU, BK, P)
        _arrive(ctr)
        _phase(gu, g1, wdown + layer * D * FF, x, ctr, t + 3 * P, N, eps, 2 * FF, D,
               D, FF, False, True, True, BN, BO_DOWN, BK, P)
        _arrive(ctr)


class PersistentChain:
    """The chain's weights stacked per kind, its scratch, and one launch per pass over the layers.

    Example:
        >>> chain = PersistentChain(layers, eps=1e-5, hq=576)         # doctest: +SKIP
        >>> chain(x)                                                   # x [rows, d] updated in place  # doctest: +SKIP
    """

    def __init__(self, layers: list[dict], eps: float, hq: int, programs: int | None = None,
                 blocks: tuple[int, int, int, int] = (8, 8, 32, 8), block_k: int = 64, num_warps: int = 4):
        self.g1 = torch.stack([w["g1"] for w in layers])  # [L, d]
        self.g2 = torch.stack([w["g2"] for w in layers])  # [L, d]
        self.wqkv = torch.stack([w["qkv"] for w in layers])  # [L, qkv, d]
        self.wo = torch.stack([w["o"] for w in layers])  # [L, d, hq]
        self.wgu = torch.stack([w["gate_up"] for w in layers])  # [L, 2 ff, d]
        self.wdown = torch.stack([w["down"] for w in layers])  # [L, d, ff]
        self.L, self.qkv_out, self.d = self.wqkv.shape
        self.ff = self.wdown.shape[2]
        self.eps, self.hq, self.blocks, self.block_k, self.num_warps = eps, hq, blocks, block_k, num_warps
        dev = self.wqkv.device
        self.programs = programs or torch.cuda.get_device_properties(dev).multi_processor_count
        self.ctr = torch.zeros(1, dtype=torch.int32, device=dev)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # x [N, d], updated in place
        N = x.shape[0]
        qkv = torch.empty(N, self.qkv_out, dtype=x.dtype, device=x.device)  # [N, qkv]
        gu = torch.empty(N, 2 * self.ff, dtype=x.dtype, device=x.device)  # [N, 2 ff]
        args = (x, self.g1, self.g2, self.wqkv, self.wo, self.wgu, self.wdown, qkv, gu, self.ctr, N, self.eps)
        meta = dict(L=self.L, D=self.d, HQ=self.hq, QKV=self.qkv_out, FF=self.ff, BN=triton.next_power_of_2(N),
                    BO_QKV=self.blocks[0], BO_O=self.blocks[1], BO_GU=self.blocks[2], BO_DOWN=self.blocks[3],
                    BK=self.block_k, P=self.programs, num_warps=self.num_warps)
        if x.is_cuda:  # (Triton's interpreter runs the programs one by one: programs=1 there)
            self._check_resident(args, meta)
        self.ctr.zero_()
        _chain_kernel[(self.programs,)](*args, **meta)
        return x

    def _check_resident(self, args: tuple, meta: dict) -> None:
        """Raise rather than hang: one program per SM must fit in an SM's registers and shared memory
        (every program waits for all the others at each barrier)."""
        kernel = _chain_kernel.warmup(*args, grid=(self.programs,), **meta)
        kernel._init_handles()
        props = torch.cuda.get_device_properties(self.ctr.device)
        regs = kernel.n_regs * 32 * self.num_warps
        if regs > props.regs_per_multiprocessor or kernel.metadata.shared > props.shared_memory_per_multiprocessor:
            raise RuntimeError(f"persistent chain {meta}: {kernel.n_regs} registers a thread x {self.num_warps} warps "
                               f"do not fit one program per SM")
        if self.programs > props.multi_processor_count:
            raise RuntimeError(f"{self.programs} programs for {props.multi_processor_count} SMs")
