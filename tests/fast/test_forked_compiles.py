"""Compiles in forked children (decodekit.fast.forked_compiles), with stand-in compile functions.

A stand-in "compile" writes a file when it runs in a child and, in this process, reports whether
that file is there (a cache hit). Each compile must have run in a child first, its future must
complete after the child, a child that hangs must be killed and its compile run here, and a
failed fork must fall back to compiling here. The real compiles run on a GPU
(tests/fast/test_precompile_gpu.py).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from decodekit.fast import forked_compiles as FC

pytestmark = pytest.mark.skipif(not FC.fork_allowed(), reason="needs os.fork and Triton's AsyncCompileMode")


def _stand_in(folder, name: str, hang: bool = False):
    parent = os.getpid()
    marker = os.path.join(folder, name)

    def compile_fn():
        if os.getpid() != parent:  # in the child: "compile" into the cache
            if hang:
                time.sleep(60)
            with open(marker, "w") as f:
                f.write("compiled")
            return None
        return os.path.exists(marker)  # here: whether the child filled the cache

    return compile_fn


def _run(tmp_path, names, timeout=FC.TIMEOUT_S, hang=()):
    finalized = {}
    with ThreadPoolExecutor(4) as pool:
        mode = FC.ForkedCompiles(pool, timeout=timeout)
        with mode:
            for name in names:
                mode.submit(name, _stand_in(tmp_path, name, hang=name in hang),
                            lambda result, name=name: finalized.__setitem__(name, result))
    return mode, finalized


def test_each_compile_runs_in_a_child_first(tmp_path, monkeypatch):
    monkeypatch.setattr(FC, "_cached", lambda key: False)
    mode, finalized = _run(tmp_path, ["a", "b", "c", "a"])  # "a" twice: one compile
    assert finalized == {"a": True, "b": True, "c": True}  # here, each found its child's work
    assert mode.forker.forked == 3 and mode.forker.killed == 0
    assert {k: f.kernel for k, f in mode.future_kernels.items()} == finalized


def test_a_hanging_child_is_killed_and_the_compile_runs_here(tmp_path, monkeypatch):
    monkeypatch.setattr(FC, "_cached", lambda key: False)
    t0 = time.monotonic()
    mode, finalized = _run(tmp_path, ["slow", "fast"], timeout=0.5, hang=("slow",))
    assert time.monotonic() - t0 < 30
    assert finalized == {"slow": False, "fast": True}  # "slow" compiled here, without its child's work
    assert mode.forker.forked == 2 and mode.forker.killed == 1


def test_no_child_where_fork_fails_or_the_kernel_is_cached(tmp_path, monkeypatch):
    def no_fork():
        raise OSError("no fork here")

    monkeypatch.setattr(FC, "_cached", lambda key: False)
    monkeypatch.setattr(os, "fork", no_fork)
    mode, finalized = _run(tmp_path, ["a", "b"])
    assert finalized == {"a": False, "b": False} and mode.forker.forked == 0
    monkeypatch.undo()
    monkeypatch.setattr(FC, "_cached", lambda key: key == "hit")
    mode, finalized = _run(tmp_path, ["hit", "miss"])
    assert finalized == {"hit": False, "miss": True} and mode.forker.forked == 1


def test_cached_reads_tritons_cache_layout(tmp_path, monkeypatch):
    """A key counts as cached when Triton's cache folder for it holds a kernel's metadata."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    from triton.runtime.cache import get_cache_manager
    import hashlib

    assert not FC._cached("some key")
    manager = get_cache_manager(hashlib.sha256(b"some key").hexdigest())
    manager.put(b"{}", "kernel.json")
    assert FC._cached("some key") and not FC._cached("another key")
