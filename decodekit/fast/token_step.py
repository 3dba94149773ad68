"""One Triton kernel for the bookkeeping of a single-token step: clip, append, mark done, next inputs.

After a greedy or sampling step chose one token per row, the loop cuts it at EOS and the length
limit (:meth:`~decodekit.stopping.Stopping.clip`), appends it (:meth:`~decodekit.state.DecodeState.append`)
and marks finished rows (:meth:`~decodekit.stopping.Stopping.update`): ~30 tiny element-wise
PyTorch kernels over ``[rows]`` tensors. Inside a replayed step graph
(:mod:`decodekit.fast.step_graph`) each still costs ~2 us of GPU time on an H200, about a tenth of a
small model's step. :func:`finish_step` does all of it in one kernel, in place on the state's own
tensors, and also writes the next forward's inputs (the new pending tokens, the next cache column
and its mask bit). Rules, for each row ``r`` (the torch path's, tested equal in
tests/fast/test_token_step.py):

* ``keep = count > 0 and not done and n_new < limit``; a kept token goes to ``ids[r, prompt_width +
  n_new]`` and its log-prob to ``logprobs[r, n_new]``, becomes pending, and ``n_new`` grows by one;
* ``eos = keep and token in eos_ids``; ``newly = not done and (eos or n_new >= limit)``: such rows
  are done, with finish code EOS or LENGTH (``FINISH_CODES``).

Only for stopping by EOS and length (no stop strings or criteria: those read text on the host).

Example:
    >>> finish_step(state, out, eos_ids, slab.inputs[1].ids, slab.inputs[1].write, slab.mask)  # doctest: +SKIP
"""

from __future__ import annotations

import torch

from decodekit.fast.launch import kernel_reason, launch, triton
from decodekit.state import FINISH_CODES, DecodeState, StepOutput

if triton is not None:
    import triton.language as tl

__all__ = ["finish_step", "finish_step_reason", "compile_finish_step"]

_EOS, _LENGTH = FINISH_CODES.index("eos"), FINISH_CODES.index("length")


def finish_step_reason(state: DecodeState, interpret: bool = False) -> str | None:
    """Why :func:`finish_step` cannot run on this state, or None when it can."""
    reason = kernel_reason(state.done.device, interpret)
    if reason is not None:
        return reason
    if state.finish_codes is None:
        return "state.finish_codes must be a tensor (the kernel updates it in place)"
    if state.pending is None:
        return "no pending tokens yet"
    return None


if triton is not None:

    # ints not specialised: one compile serves every batch size, prompt width and stride
    @triton.jit(do_not_specialize=["R", "B", "N_EOS", "PW", "s_tok", "s_lp", "s_ids", "s_lps", "s_in", "s_mask"])
    def _finish_kernel(tokens, lps, count, done, n_new, limit, ids, logprobs, pending, codes, eos,
                       ids_in, write, mask, R, B, N_EOS, PW, s_tok, s_lp, s_ids, s_lps, s_in, s_mask,
                       EOS_CODE: tl.constexpr, LENGTH_CODE: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_E: tl.constexpr):
        r = tl.arange(0, BLOCK_R)
        on = r < R
        tok = tl.load(tokens + r * s_tok, mask=on, other=0)
        lp = tl.load(lps + r * s_lp, mask=on, other=0.0)
        was = tl.load(done + r, mask=on, other=1) != 0
        made = tl.load(n_new + r, mask=on, other=0)
        lim = tl.load(limit + r, mask=on, other=0)
        keep = (tl.load(count + r, mask=on, other=0) > 0) & (~was) & (made < lim) & on
        e = tl.arange(0, BLOCK_E)
        eos_ids = tl.load(eos + e, mask=e < N_EOS, other=-1)
        hit = tl.sum(((tok[:, None] == eos_ids[None, :]) & (e[None, :] < N_EOS)).to(tl.int32), 1) > 0
        hit = hit & keep
        tl.store(ids + r * s_ids + PW + made, tok, mask=keep)
        tl.store(logprobs + r * s_lps + made, lp, mask=keep)
        last = tl.where(keep, tok, tl.load(pending + r, mask=on, other=0))
        tl.store(pending + r, last, mask=on)
        made = made + keep.to(made.dtype)
        tl.store(n_new + r, made, mask=on)
        newly = (~was) & (hit | (made >= lim)) & on
        code = tl.where(hit, EOS_CODE, LENGTH_CODE).to(tl.int64)
        old = tl.load(codes + r, mask=on, other=0)
        tl.store(codes + r, tl.where(newly, code, old), mask=on)
        tl.store(done + r, (was | newly).to(tl.int1), mask=on)
        tl.store(ids_in + r * s_in, last, mask=on)  # the next forward feeds the pending tokens
        col = tl.load(write) + 1  # the next forward's cache column, and its mask bit on every row
        tl.store(write, col)
        b = tl.arange(0, BLOCK_B)
        tl.store(mask + b * s_mask + col, tl.full([BLOCK_B], 1, tl.int64), mask=b < B)


def finish_step(
    state: DecodeState,
    out: StepOutput,  # one token per row: tokens [rows, 1], count [rows], logprobs [rows, 1]
    eos_ids: torch.Tensor,  # [n_eos] long (may be empty)
    ids_in: torch.Tensor,  # [B, 1] long: the next forward's input ids (B >= rows: the slab's bucket)
    write: torch.Tensor,  # [1] long: the cache column of the last forward; becomes the next one's
    mask: torch.Tensor,  # [B, C] long: the slab's column mask
) -> None:
    """Clip, append and mark done (module docstring) for a single-token step, in one kernel."""
    rows = state.rows
    if out.tokens.shape != (rows, 1) or out.cached is not None:
        raise ValueError(f"finish_step takes one token per row, got tokens {tuple(out.tokens.shape)}")
    for name in ("done", "n_new", "limit", "pending", "finish_codes"):
        if not getattr(state, name).is_contiguous():
            raise ValueError(f"state.{name} must be contiguous")
    _launch(out.tokens, out.logprobs, out.count, state.done, state.n_new, state.limit, state.ids, state.logprobs,
            state.pending, state.finish_codes, eos_ids, ids_in, write, mask, state.prompt_width)


def compile_finish_step(rows: int, buckets: int, n_eos: int, device: torch.device) -> None:
    """Launch :func:`finish_step`'s kernel for ``rows`` rows of a ``buckets``-row slab and ``n_eos``
    EOS ids on dummy tensors of the real dtypes: under :data:`~decodekit.fast.launch.COMPILE_ONLY`
    (:mod:`decodekit.fast.precompile`) that compiles the kernel a greedy or sampling step will run."""
    long = dict(dtype=torch.long, device=device)
    tokens, count = torch.zeros(rows, 1, **long), torch.ones(rows, **long)
    lps = torch.zeros(rows, 1, dtype=torch.float32, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    n_new, limit, pending, codes = (torch.zeros(rows, **long) for _ in range(4))
    ids, logprobs = torch.zeros(rows, 2, **long), torch.zeros(rows, 1, dtype=torch.float32, device=device)
    _launch(tokens, lps, count, done, n_new, limit, ids, logprobs, pending, codes, torch.zeros(n_eos, **long),
            torch.zeros(buckets, 1, **long), torch.zeros(1, **long), torch.zeros(buckets, 2, **long), 1)


def _launch(tokens, lps, count, done, n_new, limit, ids, logprobs, pending, codes, eos_ids, ids_in, write, mask,
            prompt_width: int) -> None:
    rows, B, n_eos = done.shape[0], mask.shape[0], eos_ids.numel()
    launch(
        _finish_kernel, (1,), tokens, lps, count, done, n_new, limit, ids, logprobs, pending, codes,
        eos_ids if n_eos else limit, ids_in, write, mask, rows, B, n_eos, prompt_width, tokens.stride(0),
        lps.stride(0), ids.stride(0), logprobs.stride(0), ids_in.stride(0), mask.stride(0),
        EOS_CODE=_EOS, LENGTH_CODE=_LENGTH, BLOCK_R=triton.next_power_of_2(rows),
        BLOCK_B=triton.next_power_of_2(B), BLOCK_E=triton.next_power_of_2(max(n_eos, 1)))
