"""Triton compiles in forked processes: a cold first call compiles its kernels side by side.

:mod:`decodekit.fast.precompile` sends a slab's compiles to Triton's ``AsyncCompileMode``. On a
thread pool they barely overlap: most of a compile is Python (Triton's front end) or C++ called
with the GIL held, so a dozen compiles take about as long one after the other as on one thread
(1.3-1.8 s for the default model on an H200 host). Here each compile is first run in a forked child
process, which writes the compiled kernel into Triton's on-disk cache, builds the kernel's C
launcher (a C compiler run, also filed in Triton's cache) and exits; once the children are done,
the same compile runs in this process on a pool thread and finds the cache filled (a file read).
The children start from this process's memory, with Triton already imported and set up, and touch
neither CUDA nor anything but the compile and the cache.

Safety: a child only runs the compile function and leaves with ``os._exit`` (no atexit handlers, no
CUDA teardown). A child that has not finished after ``timeout`` seconds (a lock another thread held
when it forked) is killed and the compile runs here as before; so does a compile whose fork fails.
Kernels already in the cache are not forked for. ``FORK = False`` (or ``DECODEKIT_FORK_COMPILES=0``)
turns it off: compiles then run on the thread pool.

Example:
    >>> from concurrent.futures import ThreadPoolExecutor
    >>> with ThreadPoolExecutor(4) as pool:                                   # doctest: +SKIP
    ...     with ForkedCompiles(pool):       # a triton.AsyncCompileMode: each compile in a child
    ...         kernel.warmup(x, grid=(1,), BLOCK=16)
    ...     # on leaving: the children have finished and the kernels are loaded from the cache
"""

from __future__ import annotations

import hashlib
import os
import select
import signal
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor

__all__ = ["FORK", "ForkedCompiles", "fork_allowed"]

try:
    from triton import AsyncCompileMode
except ImportError:  # pragma: no cover - depends on the install
    AsyncCompileMode = object

FORK = os.environ.get("DECODEKIT_FORK_COMPILES", "1") != "0"
TIMEOUT_S = 30.0  # a child still compiling after this long is killed (the compile then runs here)


def fork_allowed() -> bool:
    """Whether compiles may run in forked children (:data:`FORK`, and ``os.fork`` exists)."""
    return FORK and hasattr(os, "fork") and AsyncCompileMode is not object


class ForkedCompiles(AsyncCompileMode):
    """A ``triton.AsyncCompileMode`` whose compiles run in forked children first (module docstring).

    Used as a context manager like the mode itself: compiles submitted inside fork a child each
    (kernels already in the cache go straight to ``pool``); on leaving, ``pool`` waits for each
    child and runs the compile here, and every compile has finished.

    Args:
        pool: the threads that wait for the children and run the compiles in this process.
        timeout: seconds a child may take before it is killed.
    """

    def __init__(self, pool: ThreadPoolExecutor, timeout: float = TIMEOUT_S):
        super().__init__(pool)
        self.pool = pool
        self.forker = _Forker(pool, timeout, after=_build_launcher)

    def submit(self, key, compile_fn, finalize_fn):
        if key in self.future_kernels or _cached(key):
            return super().submit(key, compile_fn, finalize_fn)  # on the pool
        self.executor = self.forker
        try:
            return super().submit(key, compile_fn, finalize_fn)
        finally:
            self.executor = self.pool

    def __exit__(self, *exc):
        self.forker.start()
        return super().__exit__(*exc)


class _Forker(Executor):
    """``submit`` forks a child that runs the function; :meth:`start` then has the pool wait for
    each child and run the function here, completing its future."""

    def __init__(self, pool: ThreadPoolExecutor, timeout: float, after: Callable | None = None):
        self.pool, self.timeout, self.after = pool, timeout, after
        self.waiting: list[tuple[int | None, Callable, Future]] = []  # (child pid or None, fn, its future)
        self.forked = 0  # children started
        self.killed = 0  # children that ran out of time

    def submit(self, fn: Callable) -> Future:  # AsyncCompileMode passes the compile alone
        future: Future = Future()
        pid = _fork(fn, self.after)
        self.forked += pid is not None
        self.waiting.append((pid, fn, future))
        return future

    def start(self) -> None:
        waiting, self.waiting = self.waiting, []
        for pid, call, future in waiting:
            self.pool.submit(self._finish, pid, call, future)

    def _finish(self, pid: int | None, call: Callable, future: Future) -> None:
        try:
            if pid is not None and not _reap(pid, self.timeout):
                self.killed += 1
        except OSError:  # the child is gone already: the compile below runs either way
            pass
        try:
            future.set_result(call())
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the future
            future.set_exception(e)


def _cached(key: str) -> bool:
    """Whether Triton's file cache holds the kernel of compile key ``key`` (as ``triton.compile``
    files it: a folder named after the key's SHA-256, holding the kernel's ``.json`` metadata).
    False when unsure: the compile is then forked for, which is only slower."""
    try:
        from triton.runtime.cache import get_cache_manager

        folder = getattr(get_cache_manager(hashlib.sha256(key.encode("utf-8")).hexdigest()), "cache_dir", None)
        return bool(folder) and os.path.isdir(folder) and any(n.endswith(".json") for n in os.listdir(folder))
    except Exception:  # noqa: BLE001 - a cache layout this code does not know: fork
        return False


def _build_launcher(kernel) -> None:
    """A compiled kernel's C launcher, as its first launch would build it (no CUDA call): the build
    is filed in Triton's cache, where the kernel's first launch here finds it."""
    from triton.runtime import driver

    driver.active.launcher_cls(kernel.src, kernel.metadata)


def _fork(call: Callable, after: Callable | None = None) -> int | None:
    """Fork a child that runs ``call`` (then ``after`` on its result) and exits; its pid, or None
    where forking failed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded process": see the docstring
            pid = os.fork()
    except OSError:
        return None
    if pid == 0:  # the child: the compile, then out, whatever happens
        code = 1
        try:
            result = call()
            code = 0
            if after is not None:
                after(result)
        finally:
            os._exit(code)
    return pid


def _reap(pid: int, timeout: float) -> bool:
    """Wait for child ``pid``; past ``timeout`` seconds kill it. Whether it finished by itself.

    The wait blocks without holding the GIL (a pidfd, Linux 5.3+): a dozen threads waiting for
    children would otherwise wake every few milliseconds to poll, taking the GIL from the threads
    that work meanwhile (a model's weights loading, :mod:`decodekit.fast.ahead`)."""
    deadline = time.monotonic() + timeout
    fd = _pidfd(pid)
    try:
        while True:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return False
            if fd is None:
                time.sleep(0.002)
            else:
                select.select([fd], [], [], left)  # readable once the child has exited
    finally:
        if fd is not None:
            os.close(fd)


def _pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when child ``pid`` exits, or None where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
