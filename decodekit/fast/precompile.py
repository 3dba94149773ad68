"""Compile a slab's Triton kernels concurrently, before its first forward launches them one by one.

Triton compiles a kernel on its first launch with a new specialisation, one compile after the
other: on a machine whose Triton cache (``~/.triton/cache`` or ``TRITON_CACHE_DIR``) is empty, the
first decode of a small model waits for about a dozen of them (the prefill's RMSNorm, rotary and
attention kernels, then the decode step's GEMV kernels), a few tenths of a second each, and each
kernel's first launch then builds its C launcher (a C compiler run) and loads its binary. On a new
slab (:class:`~decodekit.fast.slab.Slab`) :func:`precompile` runs the fused forward once per
width with every Triton launch replaced by its compile only
(:data:`decodekit.fast.launch.COMPILE_ONLY`) inside ``triton.AsyncCompileMode``, which sends the
compiles to forked children (:mod:`decodekit.fast.forked_compiles`: a thread pool barely overlaps
them) and collects them on a thread pool, then builds the launchers and loads the binaries on the
same pool; the forwards that follow find the kernels ready. The dry forwards leave the slab as it
was: with the kernels on, every write into the cache is a Triton kernel's, and none runs. They walk
the first layer only (the fused step's layers launch the same kernels), so the children fork right
after its launches; on an H200 that left the first call within its noise (the children's compiles
are the critical path), but a dry forward of a large model no longer runs every layer's GEMMs.

Widths: the slab's first forward (usually the prefill) and a one-token decode step, with greedy's
choice (:mod:`decodekit.fast.pick`) and a single-token step's bookkeeping
(:mod:`decodekit.fast.token_step`, for the model's own EOS ids) after it. Others (verify widths,
more rows) compile on first use as before. Where the kernels are already in Triton's cache a
precompile costs the two dry forwards' host time (a few ms for the default model).

Example:
    >>> lm = decodekit.load(device="cuda", dtype="bfloat16")                # doctest: +SKIP
    >>> decodekit.generate(lm, "Hi", max_new_tokens=8)                       # doctest: +SKIP
    >>> lm.fast.precompile_s         # seconds spent compiling ahead of the forwards  # doctest: +SKIP
    0.61
"""

from __future__ import annotations

import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch

from decodekit.fast import launch as L
from decodekit.fast import token_step as TS
from decodekit.fast.attention import SlabView
from decodekit.fast.forked_compiles import ForkedCompiles, fork_allowed
from decodekit.fast.pick import greedy_pick, pick_fits

__all__ = ["precompile", "PRECOMPILE"]

PRECOMPILE = True  # False: kernels compile on their first launch, one at a time
WORKERS = 16  # compile threads at most (and at most the machine's cores)


@torch.no_grad()
def precompile(path, slab, widths: list[int]) -> float:
    """Compile the Triton kernels that forwards of each of ``widths`` new tokens over ``slab`` will
    launch, concurrently; returns the seconds it took. Does nothing (0.0) unless the path's fused
    forward uses Triton kernels on CUDA and :data:`PRECOMPILE` is on. A failed compile is reported
    as a warning: the forward then compiles (and reports) it again on its own launch."""
    if not (PRECOMPILE and path.kernels and path.fused and path.device.type == "cuda"):
        return 0.0
    t0 = time.perf_counter()
    workers = max(1, min(WORKERS, os.cpu_count() or 1))
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="decodekit-compile") as pool:
            compiling = ForkedCompiles(pool) if fork_allowed() else L.triton.AsyncCompileMode(pool)
            with compiling:  # on leaving, every compile has finished
                dry = L.COMPILE_ONLY.set(True)
                try:
                    for T in dict.fromkeys(widths):  # in order, once each
                        T = min(T, slab.capacity)
                        ids = torch.full((slab.rows, T), path.pad_id, dtype=torch.long, device=path.device)
                        write = slab.cols[:T]  # [T]
                        logits, _ = path.eager_fn(slab.mask, slab.cols, ids, write, SlabView(slab.kv, write),
                                                  T > 1, False)  # [rows, T or 1, vocab]
                        if T == 1 and pick_fits(logits[:, -1]):
                            greedy_pick(logits[:, -1])  # a greedy step's choice after it
                        if T == 1 and path.step_graphs:  # ... and its bookkeeping (EOS: the model's own)
                            TS.compile_finish_step(slab.rows, slab.rows, path.eos_count, path.device)
                finally:
                    L.COMPILE_ONLY.reset(dry)
            # a compiled kernel's first launch still builds its C launcher (a compiler run) and loads
            # its binary: as long as the compiles together, so these run on the pool too
            done = [f.kernel for f in compiling.future_kernels.values() if f.kernel is not None]
            list(pool.map(lambda kernel: _load(kernel, path.device), done))
    except Exception as e:  # noqa: BLE001 - never fatal here: the real launch compiles again
        warnings.warn(f"decodekit.fast: compiling the Triton kernels ahead failed ({e!r}); "
                      "they compile on first launch", RuntimeWarning, stacklevel=2)
    return time.perf_counter() - t0


def _load(kernel, device: torch.device) -> None:
    """Build a compiled kernel's launcher and load its binary (on a pool thread: the device first)."""
    torch.cuda.set_device(device)
    init = getattr(kernel, "_init_handles", None)  # what Triton's first launch of the kernel calls
    if init is not None:
        init()
