"""Compile the fast path's Triton kernels from a model's config while its weights are still loading.

A first call on a machine whose Triton cache is empty waits for decodekit's kernels to compile
(:mod:`decodekit.fast.precompile`: about a second for the default model on an H200 host, most of it
the forked children's compiles). Which kernels a forward launches, and their specialisations, follow
from the model's shapes and dtype alone, so :func:`decodekit.load` reads a model file's config
first and hands it to :func:`compile_ahead`, which compiles them on a background thread while the
tokenizer loads and the weights are read (a GGUF file's are dequantised: seconds).

The thread builds a stand-in of the model -- the same config with one decoder layer (every layer
launches the same kernels), its weights allocated on the device but never initialised or read --
and runs :func:`~decodekit.fast.precompile.precompile` on a one-row slab of its fast path for a
short prefill (:data:`WIDTHS`) and the decode step. The kernels land in Triton's in-memory and
on-disk caches, where the real model's first forwards find them. Its Triton launches wait for
nothing but Triton's set-up (:func:`decodekit.fast.launch.warm_up`); every other launch in the
process waits for the thread (:func:`~decodekit.fast.launch.wait_for_warm_up`), so no compile is
ever raced. Kernels it did not foresee (other batch sizes, caches past ~1000 columns, the verify
widths) compile on first use as before; should anything fail, the first call compiles as it would
have anyway. ``DECODEKIT_COMPILE_AHEAD=0`` (or :data:`AHEAD` = False) turns it off.

Example:
    >>> lm = decodekit.load(device="cuda", dtype="bfloat16")   # compiles while the GGUF loads  # doctest: +SKIP
    >>> decodekit.generate(lm, "Hi", max_new_tokens=8)          # finds the kernels ready      # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
import threading
import time

import torch

from decodekit.fast import launch as L
from decodekit.fast import precompile as P

__all__ = ["AHEAD", "CAPACITY", "WIDTHS", "compile_ahead", "last_error", "last_run", "stand_in"]

AHEAD = os.environ.get("DECODEKIT_COMPILE_AHEAD", "1") != "0"
WIDTHS = (16, 1)  # a short prompt's prefill (Triton's attention; longer prompts take SDPA), the decode step
CAPACITY = 512  # the stand-in slab's columns: attention's blocks are the same for any cache up to 1024

last_error: BaseException | None = None  # why the last compile ahead stopped early, if it did (for debugging)
last_run: dict[str, float] = {}  # the last compile ahead's seconds: stand_in_s, precompile_s, total_s


def compile_ahead(config, dtype: torch.dtype, device: torch.device | str) -> threading.Thread | None:
    """Start compiling, on a background thread, the Triton kernels that a model of ``config`` in
    ``dtype`` on ``device`` will launch in a batch-1 prefill and decode (module docstring). Returns the
    thread, or None where there is nothing to compile ahead (not CUDA, no Triton, turned off).

    The stand-in's modules are built here, on the meta device: the imports of the model's code
    happen on the calling thread, which needs them for the real model next, so two threads never
    import the same modules at once."""
    global last_error
    device = torch.device(device)
    if not (AHEAD and P.PRECOMPILE and L.triton is not None and device.type == "cuda"):
        return None
    last_error = None  # this run's, not an earlier one's
    try:
        skeleton = _skeleton(config)
    except Exception as e:  # noqa: BLE001 - only a head start (an architecture transformers cannot build)
        last_error = e
        return None
    thread = threading.Thread(target=_run, args=(skeleton, dtype, device), name="decodekit-compile-ahead",
                              daemon=True)
    L.launches_wait_for(thread)
    thread.start()
    return thread


def stand_in(config, dtype: torch.dtype, device: torch.device):
    """An :class:`~decodekit.lm.LM` of ``config``'s architecture with one decoder layer, its weights
    allocated on ``device`` in ``dtype`` and left uninitialised (only their shapes, dtypes and layout
    matter to a compile); ``config`` itself is not changed."""
    return _on_device(_skeleton(config), dtype, device)


def _skeleton(config):
    """``config``'s model with one decoder layer, on the meta device (no memory, no initialisation)."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = 1
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types[:1])
    with torch.device("meta"):  # thread-local: other threads' tensors stay where they are
        return AutoModelForCausalLM.from_config(cfg)  # no dtype here: that would set torch's global default


def _on_device(skeleton, dtype: torch.dtype, device: torch.device):
    from decodekit.lm import LM

    return LM(skeleton.to(dtype).to_empty(device=device), _NoTokenizer(), cuda_graphs=True)


class _NoTokenizer:
    """What :class:`~decodekit.lm.LM` asks of a tokenizer (the config names the EOS ids)."""

    eos_token_id = pad_token_id = None

    def decode(self, ids, **kw) -> str:  # pragma: no cover - a stand-in never decodes
        return ""


def _run(skeleton, dtype: torch.dtype, device: torch.device) -> None:
    global last_error
    t0 = time.perf_counter()
    last_run.clear()
    last_error = None
    try:
        from decodekit.fast.path import FastPath, unsupported_reason
        from decodekit.fast.slab import Slab

        lm = _on_device(skeleton, dtype, device)
        last_run["stand_in_s"] = time.perf_counter() - t0
        if unsupported_reason(lm) is not None:
            return
        path = FastPath(lm)
        if path.kernels and path.fused:
            last_run["precompile_s"] = P.precompile(path, Slab(path, 1, CAPACITY), list(WIDTHS))
    except Exception as e:  # noqa: BLE001 - only a head start: the first call compiles what is missing
        last_error = e
    finally:
        last_run["total_s"] = time.perf_counter() - t0
