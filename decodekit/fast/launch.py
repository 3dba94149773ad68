"""Launching decodekit's Triton kernels: whether they can run, compile-only launches, Triton's
per-process warm-up, programmatic dependent launch, and the ticket counters of last-block combines.

* :func:`kernel_reason`: why the kernels cannot run on a device (no Triton, no CUDA), or None;
* :func:`launch`: every kernel of :mod:`decodekit.fast` goes through it -- it waits for
  :func:`warm_up`'s thread, only compiles while :data:`COMPILE_ONLY` (:mod:`decodekit.fast.precompile`),
  and falls back to plain launches should the first programmatic dependent launch fail;
* :func:`warm_up`: Triton's one-time set-up of the process on a background thread, started by
  :func:`decodekit.load` for a CUDA model; :func:`launches_wait_for`: launches also wait for the
  threads compiling kernels ahead (:mod:`decodekit.fast.ahead`);
* programmatic dependent launch (Hopper and later; ``DECODEKIT_PDL=0`` turns it off):
  :func:`pdl_supported`, :func:`pdl_meta` (the launch keywords of a kernel with a ``PDL``
  constexpr), and Triton's ``gdc_wait`` / ``gdc_launch_dependents`` for the kernels that use it
  (:mod:`decodekit.fast.kernels`' ``rope_attend``, :mod:`decodekit.fast.gemv`). What such a kernel
  loads before ``gdc_wait`` must be what no kernel of the step writes; it signals its dependents
  after the wait, so an early start overlaps one kernel, never two;
* :func:`tickets_for`: the zeroed counters by which the last program of a split reduction knows
  it is last (attention, the GEMV kernels' split-K, greedy's pick).

Example:
    >>> from decodekit.fast import launch
    >>> launch.kernel_reason(torch.device("cpu"))           # doctest: +SKIP
    'Triton kernels need CUDA (or TRITON_INTERPRET=1 and kernels=True)'
    >>> launch.pdl_meta(torch.device("cpu"))
    {'PDL': False}
"""

from __future__ import annotations

import os
import threading
import warnings
from contextvars import ContextVar

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - Triton before 3.3
    gdc_launch_dependents = gdc_wait = None

__all__ = ["kernel_reason", "launch", "COMPILE_ONLY", "warm_up", "wait_for_warm_up", "launches_wait_for", "PDL",
           "pdl_supported", "pdl_meta", "gdc_wait", "gdc_launch_dependents", "tickets_for", "pow2"]

# programmatic dependent launch (Hopper and later): a kernel's programs may start while the kernel
# before it finishes and load what no kernel writes (weights) before they wait for it
PDL = os.environ.get("DECODEKIT_PDL", "1") != "0"


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


# set by decodekit.fast.precompile: launches in this context compile their kernel and run nothing
# (a context variable: other threads' decodes keep launching)
COMPILE_ONLY: ContextVar[bool] = ContextVar("decodekit_compile_only", default=False)


_pdl_launched = False  # a launch with programmatic dependent launch has succeeded in this process


def launch(kernel, grid: tuple[int, ...], *args, **meta) -> None:
    """``kernel[grid](*args, **meta)``; while :data:`COMPILE_ONLY` (:mod:`decodekit.fast.precompile`),
    only the compile of the kernel that this call would launch (Triton's ``warmup``), which an active
    ``triton.AsyncCompileMode`` sends to its thread pool. Waits for :func:`warm_up`'s thread first.

    Should the process's first launch with programmatic dependent launch (``launch_pdl``) fail -- a
    driver or a Triton without it -- :data:`PDL` is turned off with a warning and the kernel is
    launched without it; later failures are raised as they are."""
    global PDL, _pdl_launched
    wait_for_warm_up()
    if COMPILE_ONLY.get():
        kernel.warmup(*args, grid=grid, **meta)
        return
    if not meta.get("launch_pdl") or _pdl_launched:
        kernel[grid](*args, **meta)
        return
    try:
        kernel[grid](*args, **meta)
    except Exception as exc:  # noqa: BLE001 - retried below without PDL; raised again if that fails too
        PDL = False
        warnings.warn(f"decodekit.fast: a launch with programmatic dependent launch failed ({exc}); "
                      "launching without it from now on (DECODEKIT_PDL=0 skips the attempt)", RuntimeWarning,
                      stacklevel=2)
        meta = {k: v for k, v in meta.items() if k != "launch_pdl"}
        kernel[grid](*args, **dict(meta, PDL=False))
    else:
        _pdl_launched = True


_hopper: dict[int, bool] = {}  # CUDA device index -> compute capability >= 9.0


def pdl_supported(device: torch.device) -> bool:
    """Whether kernels on ``device`` can use programmatic dependent launch: :data:`PDL` on, a CUDA
    device of compute capability 9.0 or later (not Triton's interpreter), a Triton that has it."""
    if not (PDL and gdc_wait is not None and device.type == "cuda" and torch.cuda.is_available()
            and os.environ.get("TRITON_INTERPRET") != "1"):
        return False
    index = torch.cuda.current_device() if device.index is None else device.index
    if index not in _hopper:
        _hopper[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return _hopper[index]


def pdl_meta(device: torch.device, pdl: bool | None = None) -> dict:
    """Launch keywords of a kernel with a ``PDL`` constexpr: on where ``pdl`` (default:
    :func:`pdl_supported`) says so, then with Triton's ``launch_pdl``."""
    on = pdl_supported(device) if pdl is None else bool(pdl)
    return dict(PDL=True, launch_pdl=True) if on else dict(PDL=False)


_warming: threading.Thread | None = None


def warm_up() -> None:
    """Start Triton's one-time set-up of this process on a background thread: its CUDA driver
    utilities (a C module it builds on a machine's first use), the hash of its own sources that
    keys every compile, and one tiny kernel's compile, launcher build and load (the compiler
    chain's first use) -- about a second, otherwise paid by the first call's kernel compiles.
    :func:`decodekit.load` starts it for a CUDA model, so that it overlaps with loading the weights;
    :func:`launch` joins it before decodekit first uses Triton.

    Example:
        >>> from decodekit.fast import launch
        >>> launch.warm_up()              # returns at once; idempotent   # doctest: +SKIP
        >>> launch.wait_for_warm_up()     # every launch does this first  # doctest: +SKIP
    """
    global _warming
    if triton is None or _warming is not None:
        return
    _warming = threading.Thread(target=_warm, name="decodekit-triton-warm-up", daemon=True)
    _warming.start()


def _warm() -> None:
    try:
        from triton.runtime.cache import triton_key

        triton.runtime.driver.active  # noqa: B018 - builds and loads the driver's utilities
        triton_key()
        # one tiny kernel through the whole chain (front end, LLVM, ptxas, the launcher's C
        # compiler run, loading the binary): their first use in a process costs most
        x = torch.empty(16, dtype=torch.float32, device="cuda")
        kernel = _warm_kernel.warmup(x, grid=(1,), BLOCK=16)
        torch.cuda.set_device(x.device)
        kernel._init_handles()
    except Exception:  # noqa: BLE001 - only a head start: the first compile does it again and reports
        pass


def wait_for_warm_up() -> None:
    """Wait for :func:`warm_up`'s thread while it runs (it must not race the first compile), and for
    the threads compiling kernels ahead (:func:`launches_wait_for`); every :func:`launch` calls it. A
    compile-ahead thread's own launches wait for the warm-up only."""
    me = threading.current_thread()
    if _warming is not None and _warming is not me and _warming.is_alive():
        _warming.join()
    if me in _ahead:
        return
    for thread in list(_ahead):
        thread.join()
        if thread in _ahead:
            _ahead.remove(thread)


_ahead: list[threading.Thread] = []  # compiling kernels ahead (decodekit.fast.ahead): launches wait for them


def launches_wait_for(thread: threading.Thread) -> None:
    """Make every :func:`launch` outside ``thread`` wait for it to finish (a thread that compiles
    kernels ahead, :mod:`decodekit.fast.ahead`: a launch must not compile the same kernel beside it)."""
    _ahead.append(thread)


def pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (Triton block sizes)."""
    return triton.next_power_of_2(n)


if triton is not None:

    @triton.jit
    def _warm_kernel(x, BLOCK: tl.constexpr):  # compiled by warm_up only
        tl.store(x + tl.arange(0, BLOCK), tl.zeros([BLOCK], tl.float32))


_tickets: dict[torch.device, torch.Tensor] = {}


def tickets_for(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 counters for the last-block combine; each launch leaves them zero again. Made
    by the eager warm-up that precedes every capture, so a captured graph only reuses them."""
    t = _tickets.get(device)
    if t is None or t.numel() < n:
        t = _tickets[device] = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
    return t
