"""Greedy's choice and its log-probability in one Triton kernel, split over the vocabulary.

A greedy step needs ``argmax(logits)`` and ``log_softmax(logits)[argmax]``. PyTorch runs each as a
reduction with one thread block per row: for one row of a 128K vocabulary (Llama 3) each takes
~28 us on an H200 -- together more than a tenth of a millisecond a step, for a model whose whole
step is ~4.7 ms. :func:`greedy_pick` splits each row over ``V / block`` programs: each reduces its
block to (max, first index of the max, sum of ``exp(x - max)``); the last program of the row to
finish (an atomic ticket; under Triton's interpreter a second kernel) combines them. The token is
``torch.argmax``'s exactly (the first index of the largest value); the log-probability is
``max - logsumexp``, equal to ``log_softmax``'s to fp32 rounding.

Example:
    >>> tokens, logprobs = greedy_pick(logits)    # logits [rows, vocab] float32   # doctest: +SKIP
    >>> tokens.shape, logprobs.shape                                                # doctest: +SKIP
    (torch.Size([2]), torch.Size([2, 1]))
"""

from __future__ import annotations

import torch

from decodekit.fast import launch as L

if L.triton is not None:
    import triton.language as tl

__all__ = ["greedy_pick", "pick_fits"]

GREEDY_PICK = True  # greedy steps on CUDA use greedy_pick (False: torch's argmax and log_softmax)
BLOCK = 4096  # vocabulary entries a program


if L.triton is not None:

    @L.triton.jit
    def _pick_combine(part_m, part_i, part_s, tokens, logprobs, r, P, BP: tl.constexpr):
        """Combine row ``r``'s ``P`` block partials: the first index of the largest value, max - lse."""
        p = tl.arange(0, BP)
        on = p < P
        # .cg: read from L2, not a stale L1 line (other programs wrote the partials)
        m = tl.load(part_m + r * BP + p, mask=on, other=float("-inf"), cache_modifier=".cg")  # [BP]
        i = tl.load(part_i + r * BP + p, mask=on, other=0, cache_modifier=".cg")
        s = tl.load(part_s + r * BP + p, mask=on, other=0.0, cache_modifier=".cg")
        top = tl.max(m, 0)
        first = tl.min(tl.where(on & (m == top), i, 2147483647), 0)  # blocks in order: the first index
        first = tl.where(first == 2147483647, 0, first)  # NaN logits: still a valid token
        total = tl.sum(tl.where(on, s * tl.exp(m - top), 0.0), 0)
        tl.store(tokens + r, first.to(tl.int64))
        tl.store(logprobs + r, -tl.log(total))  # x[token] - (top + log(total)), x[token] == top

    @L.triton.jit(do_not_specialize=["V", "P", "s_row"])
    def _pick_kernel(logits, part_m, part_i, part_s, tokens, logprobs, tickets, V, P, s_row,
                     BLOCK: tl.constexpr, BP: tl.constexpr, LAST_COMBINES: tl.constexpr):
        r = tl.program_id(0)
        b = tl.program_id(1)
        v = b * BLOCK + tl.arange(0, BLOCK)
        inside = v < V
        x = tl.load(logits + r * s_row + v, mask=inside, other=float("-inf")).to(tl.float32)  # [BLOCK]
        m = tl.max(x, 0)
        i = tl.min(tl.where(inside & (x == m), v, 2147483647), 0)  # the first index of the max (none: NaN)
        tl.store(part_m + r * BP + b, m)
        tl.store(part_i + r * BP + b, i)
        tl.store(part_s + r * BP + b, tl.where(m == float("-inf"), 0.0, tl.sum(tl.exp(x - m), 0)))  # 0: all -inf
        if LAST_COMBINES:
            tl.debug_barrier()  # every thread's partial stores are issued before the ticket
            ticket = tl.atomic_add(tickets + r, 1, sem="acq_rel", scope="gpu")
            if ticket == P - 1:
                _pick_combine(part_m, part_i, part_s, tokens, logprobs, r, P, BP)
                tl.atomic_xchg(tickets + r, 0, sem="relaxed", scope="gpu")  # reset for the next launch

    @L.triton.jit(do_not_specialize=["P"])
    def _pick_reduce_kernel(part_m, part_i, part_s, tokens, logprobs, P, BP: tl.constexpr):
        _pick_combine(part_m, part_i, part_s, tokens, logprobs, tl.program_id(0), P, BP)


def pick_fits(logits: torch.Tensor) -> bool:
    """Whether greedy steps over ``logits [rows, vocab]`` use :func:`greedy_pick`: on CUDA with
    Triton, float32, contiguous rows, where :data:`GREEDY_PICK` is on."""
    return (GREEDY_PICK and L.kernel_reason(logits.device) is None and logits.dim() == 2
            and logits.dtype == torch.float32 and logits.stride(-1) == 1)


def greedy_pick(logits: torch.Tensor, *, last_combines: bool | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:  # tokens [rows] long, logprobs [rows, 1] float32
    """``logits.argmax(-1)`` and ``log_softmax(logits, -1).gather(-1, argmax[:, None])`` for ``logits
    [rows, vocab]`` (last dim contiguous), in one kernel (module docstring). For finite or ``-inf``
    values (a row of only ``-inf``: token 0, log-prob NaN, as torch); a row with NaN gets a valid
    token id (torch's argmax: the NaN's index) and a NaN log-prob. ``last_combines`` is for tests
    (default: on CUDA)."""
    if logits.dim() != 2 or logits.stride(-1) != 1:
        raise ValueError(f"decodekit.fast: greedy_pick takes [rows, vocab] logits with a contiguous last dim, "
                         f"got {tuple(logits.shape)} strides {logits.stride()}")
    rows, V = logits.shape
    P = L.triton.cdiv(V, BLOCK)
    bp = L.pow2(P)
    if last_combines is None:
        last_combines = logits.device.type == "cuda"
    dev = logits.device
    part_m = torch.empty(rows, bp, dtype=torch.float32, device=dev)
    part_s = torch.empty(rows, bp, dtype=torch.float32, device=dev)
    part_i = torch.empty(rows, bp, dtype=torch.int32, device=dev)
    tokens = torch.empty(rows, dtype=torch.long, device=dev)
    logprobs = torch.empty(rows, 1, dtype=torch.float32, device=dev)
    tickets = L.tickets_for(dev, rows) if last_combines else part_i
    L.launch(_pick_kernel, (rows, P), logits, part_m, part_i, part_s, tokens, logprobs, tickets, V, P,
             logits.stride(0), BLOCK=BLOCK, BP=bp, LAST_COMBINES=last_combines, num_warps=8)
    if not last_combines:
        L.launch(_pick_reduce_kernel, (rows,), part_m, part_i, part_s, tokens, logprobs, P, BP=bp, num_warps=1)
    return tokens, logprobs
