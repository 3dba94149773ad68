"""One Triton kernel for a prompt-lookup step after its verify forward: accept, clip, append, look up.

Prompt lookup's whole step replays from a CUDA graph (:mod:`decodekit.strategies.speculative.graph_plan`),
but written with PyTorch operations its tail -- greedy verification, the stop rules, appending the
tokens, the cache columns it keeps, the counters, the n-gram lookup of the next drafts and the next
forward's inputs -- is ~210 small kernels: on an H200 ~0.36 ms per step, half a decode step of the
default model. :func:`lookup_step` does all of it in one kernel, one program per row, given the
target's argmax ``target [rows, T]`` and the log-probs of those tokens ``lp [rows, T]`` at the step's
``T = k + 1`` positions (pending token, drafts ``d_1..d_k``). Rules, per row (the PyTorch tail's,
tested equal in tests/fast/test_lookup_step.py):

* ``a`` = the drafts accepted: the longest prefix of valid drafts (``j < count``) equal to the
  target's argmax (0 for a finished row); the row emits ``target[0..a]``;
* the stop rules (:meth:`~decodekit.stopping.Stopping.clip`): none for a finished row, at most the
  room left under its limit, up to and including its first EOS id;
* the emitted tokens and their log-probs go after the row's generated ones; the last becomes
  pending; the row is done at an EOS or its limit (finish code EOS or LENGTH);
* of the step's cache columns a running row keeps the pending token's and the accepted drafts' (as
  far as the stop rules kept them); the next step's columns are marked for rows still running;
* the next drafts: the ``k`` tokens after the most recent earlier occurrence of the row's last
  ``n`` tokens, longest ``n`` first (:func:`~decodekit.strategies.speculative.prompt_lookup.lookup`),
  none for a finished row; they and the pending token are the next forward's inputs;
* the counters (accepted, proposed, verifies, row steps, row forwards) add up in ``stats``.

Only for stopping by EOS and length (no stop strings or criteria).

Example:
    >>> lookup_step(state, target, lp, drafts, count, eos, ids_in, write, mask, stats, accepted, 3, 1)  # doctest: +SKIP
"""

from __future__ import annotations

import torch

from decodekit.fast.launch import launch, triton
from decodekit.state import FINISH_CODES, DecodeState

if triton is not None:
    import triton.language as tl

__all__ = ["lookup_step"]

_EOS, _LENGTH = FINISH_CODES.index("eos"), FINISH_CODES.index("length")
_BLOCK_W = 256  # window starts a lookup pass compares at once


if triton is not None:

    # ints not specialised: one compile serves every batch size, prompt width and stride
    @triton.jit(do_not_specialize=["R", "N_EOS", "PW", "W", "s_tg", "s_lp", "s_ids", "s_lps", "s_mask", "s_in"])
    def _lookup_step_kernel(target, lp, drafts, count, done, n_new, limit, ids, logprobs, pending, codes, start,
                            eos, mask, write, ids_in, stats, accepted, R, N_EOS, PW, W, s_tg, s_lp, s_ids, s_lps,
                            s_mask, s_in, K: tl.constexpr, T: tl.constexpr, BT: tl.constexpr, BE: tl.constexpr,
                            MAXN: tl.constexpr, MINN: tl.constexpr, BW: tl.constexpr, NB: tl.constexpr,
                            EOS_CODE: tl.constexpr, LENGTH_CODE: tl.constexpr):
        r = tl.program_id(0)
        j = tl.arange(0, BT)  # [BT] the step's positions: pending, d_1..d_K
        jt = j < T
        was = tl.load(done + r) != 0
        active = ~was
        c = tl.load(count + r)
        made = tl.load(n_new + r)
        lim = tl.load(limit + r)
        tok = tl.load(target + r * s_tg + j, mask=jt, other=0)  # [BT] the target's argmax at each position
        lps = tl.load(lp + r * s_lp + j, mask=jt, other=0.0)  # [BT]
        d = tl.load(drafts + r * K + j, mask=j < K, other=-1)  # [BT] this step's drafts
        w = tl.load(write + j, mask=jt, other=0)  # [BT] this step's cache columns
        # greedy verification: the leading drafts equal to the target's argmax
        match = (d == tok) & (j < c) & (j < K)
        a = tl.where(was, 0, tl.min(tl.where(match, BT, j), 0)).to(tl.int64)
        # the stop rules: the room under the limit, the first EOS
        cnt = tl.minimum(tl.where(was, 0, a + 1), tl.maximum(lim - made, 0))
        e = tl.arange(0, BE)
        eos_ids = tl.load(eos + e, mask=e < N_EOS, other=-1)  # [BE]
        is_eos = tl.sum(((tok[:, None] == eos_ids[None, :]) & (e[None, :] < N_EOS)).to(tl.int32), 1) > 0
        is_eos = is_eos & (j < cnt)
        first = tl.min(tl.where(is_eos, j, BT), 0)
        hit = first < BT
        cnt = tl.minimum(cnt, first + 1)
        # append, mark done
        keep = j < cnt
        tl.store(ids + r * s_ids + PW + made + j, tok, mask=keep)
        tl.store(logprobs + r * s_lps + made + j, lps, mask=keep)
        last = tl.sum(tl.where(j == cnt - 1, tok, 0), 0)
        pend = tl.where(cnt > 0, last, tl.load(pending + r))
        tl.store(pending + r, pend)
        made = made + cnt
        tl.store(n_new + r, made)
        newly = active & (hit | (made >= lim))
        old = tl.load(codes + r)
        tl.store(codes + r, tl.where(newly, tl.where(hit, EOS_CODE, LENGTH_CODE).to(old.dtype), old))
        fin = was | newly
        tl.store(done + r, fin.to(tl.int1))
        # this step's columns: the pending token's and the accepted drafts' the stop rules kept
        drop = tl.maximum(a - tl.maximum(cnt - 1, 0), 0)
        kept = active & (j <= a - drop)
        tl.store(mask + r * s_mask + w, kept.to(tl.int64), mask=jt)
        has = active & (c > 0)
        tl.atomic_add(stats + 0, a)
        tl.atomic_add(stats + 1, tl.where(has, c, 0))
        tl.atomic_add(stats + 2, has.to(tl.int64))
        tl.atomic_add(stats + 3, active.to(tl.int64))
        if r == 0:
            tl.atomic_add(stats + 4, (r * 0 + R).to(tl.int64))
        tl.store(accepted + r, a)
        tl.debug_barrier()  # the appended tokens are visible to the whole program before the lookup
        # the next drafts: the most recent earlier match of the row's last n tokens, longest n first
        end = PW + made
        st = tl.load(start + r)
        cont = end * 0 - 1
        for n in tl.static_range(MAXN, MINN - 1, -1):  # the n-gram length of this pass
            latest = end * 0 - 1
            for b in tl.static_range(NB):
                p = b * BW + tl.arange(0, BW)  # [BW] window starts
                ok = (p >= st) & (p + n < end) & (end - st >= n) & (W >= n + 1)
                for i in tl.static_range(n):
                    s_i = tl.load(ids + r * s_ids + tl.minimum(tl.maximum(end - n + i, 0), W - 1))
                    v = tl.load(ids + r * s_ids + p + i, mask=ok, other=-1)
                    ok = ok & (v == s_i)
                latest = tl.maximum(latest, tl.max(tl.where(ok, p, -1), 0))
            cont = tl.where((cont < 0) & (latest >= 0), latest + n, cont)
        n_d = tl.where(cont >= 0, tl.minimum(end - cont, K), 0)
        n_d = tl.where(fin, 0, n_d)
        dj = j < K
        nxt = tl.load(ids + r * s_ids + tl.minimum(tl.maximum(cont, 0) + j, W - 1), mask=dj, other=0)  # [BT]
        tl.store(drafts + r * K + j, nxt, mask=dj)
        tl.store(count + r, n_d)
        # the next forward's inputs: the pending token, the drafts; its columns for running rows
        tl.store(ids_in + r * s_in, pend)
        tl.store(ids_in + r * s_in + 1 + j, nxt, mask=dj)
        tl.store(mask + r * s_mask + w + T, (j * 0 + (~fin).to(tl.int64)), mask=jt)


def lookup_step(
    state: DecodeState,
    target: torch.Tensor,  # [rows, T] long: the target's argmax at the step's positions
    lp: torch.Tensor,  # [rows, T] float32: the log-probs of those tokens
    drafts: torch.Tensor,  # [rows, k] long, contiguous: this step's drafts; the next step's on return
    count: torch.Tensor,  # [rows] long: valid drafts in it; the next step's on return
    eos_ids: torch.Tensor,  # [n_eos] long (may be empty)
    ids_in: torch.Tensor,  # [B, T] long: the next forward's input ids (B >= rows)
    write: torch.Tensor,  # [T] long: this step's cache columns (the caller advances them by T)
    mask: torch.Tensor,  # [B, C] long: the slab's column mask
    stats: torch.Tensor,  # [5] long: accepted, proposed, verifies, row steps, row forwards
    accepted: torch.Tensor,  # [rows] long: out: the drafts each row accepted
    max_ngram: int,
    min_ngram: int,
) -> None:
    """Verify, clip, append, mark done, keep columns, count, look up the next drafts and write the
    next inputs (module docstring), in one kernel, in place on the state's own tensors."""
    rows, T = target.shape
    k = drafts.shape[1]
    if T != k + 1 or lp.shape != target.shape or not drafts.is_contiguous():
        raise ValueError(f"lookup_step: target {tuple(target.shape)}, lp {tuple(lp.shape)} and contiguous "
                         f"drafts [rows, T - 1] expected, got drafts {tuple(drafts.shape)}")
    for name in ("done", "n_new", "limit", "pending", "finish_codes", "start"):
        if not getattr(state, name).is_contiguous():
            raise ValueError(f"state.{name} must be contiguous")
    W = state.ids.shape[1]
    bw = min(_BLOCK_W, triton.next_power_of_2(W))
    n_eos = eos_ids.numel()
    launch(
        _lookup_step_kernel, (rows,), target, lp, drafts, count, state.done, state.n_new, state.limit, state.ids,
        state.logprobs, state.pending, state.finish_codes, state.start, eos_ids if n_eos else state.limit, mask,
        write, ids_in, stats, accepted, rows, n_eos, state.prompt_width, W, target.stride(0), lp.stride(0),
        state.ids.stride(0), state.logprobs.stride(0), mask.stride(0), ids_in.stride(0),
        K=k, T=T, BT=triton.next_power_of_2(T), BE=triton.next_power_of_2(max(n_eos, 1)), MAXN=max_ngram,
        MINN=min_ngram, BW=bw, NB=triton.next_power_of_2(triton.cdiv(W, bw)), EOS_CODE=_EOS, LENGTH_CODE=_LENGTH,
        num_warps=2)
