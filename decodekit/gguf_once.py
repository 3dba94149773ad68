"""Reading a GGUF file's metadata once per load, not three times.

transformers reads a GGUF file's config, its tokenizer and its weights in three separate passes.
Each pass builds a new ``gguf.GGUFReader``, which parses every metadata field: for SmolLM2-135M
that is its 49152-token vocabulary and its merges, field by field through numpy views. The config
and the tokenizer passes then walk those fields again. The weights pass also rebuilds gguf's
tensor-name map once per module of the model (397 times for SmolLM2). Together this is most of
the default model's load; dequantising the weights is the smaller part.

:func:`parsed_once` keeps, while it is active:

* one reader per file path;
* one result of the metadata pass (``load_gguf_checkpoint(path, return_tensors=False)``) per path,
  handed out as deep copies (callers edit the dicts they get);
* one tensor-name map per ``(architecture, layers)``.

Outside it nothing is patched. Inside, the patches are process-wide: a GGUF load on another thread
shares them, with the same results, and a ``parsed_once`` on another thread waits for this one. The
results are the same objects transformers would build, so the loaded model, config and tokenizer
are identical (tests/test_gguf_once.py checks this against a plain load). If transformers or gguf
lack the functions patched here, the load runs as it would without decodekit.

Example:
    >>> with parsed_once():                                                  # doctest: +SKIP
    ...     config = AutoConfig.from_pretrained(folder, gguf_file=name)
    ...     tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)   # no second parse
"""

from __future__ import annotations

import copy
import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["parsed_once"]

_lock = threading.RLock()  # one patching context at a time: loads on other threads wait for it


@contextmanager
def parsed_once() -> Iterator[None]:
    """Within the ``with`` block, each GGUF file is parsed once (module docstring)."""
    try:
        import gguf
        from transformers import modeling_gguf_pytorch_utils as mg
    except ImportError:  # no GGUF support installed: nothing to share
        yield
        return
    with _lock:  # the originals are read under the lock: another thread's patches are never taken for them
        originals = {(gguf, "GGUFReader"): getattr(gguf, "GGUFReader", None),
                     (gguf, "get_tensor_name_map"): getattr(gguf, "get_tensor_name_map", None),
                     (mg, "load_gguf_checkpoint"): getattr(mg, "load_gguf_checkpoint", None)}
        if any(fn is None for fn in originals.values()):  # another layout of either library: load as is
            yield
            return
        read, name_map, load = originals.values()
        readers: dict[str, object] = {}
        metadata: dict[str, dict] = {}

        def shared_reader(path, *args, **kwargs):
            if args or kwargs:  # a mode other than the default read-only one
                return read(path, *args, **kwargs)
            key = os.fspath(path)
            if key not in readers:
                readers[key] = read(path)
            return readers[key]

        def shared_metadata(path, return_tensors=False, *args, **kwargs):
            if return_tensors or args or kwargs:  # the weights pass: its own (it reuses the reader)
                return load(path, return_tensors, *args, **kwargs)
            key = os.fspath(path)
            if key not in metadata:
                metadata[key] = load(path, False)
            return copy.deepcopy(metadata[key])

        patches = {(gguf, "GGUFReader"): shared_reader,
                   (gguf, "get_tensor_name_map"): functools.lru_cache(maxsize=None)(name_map),
                   (mg, "load_gguf_checkpoint"): shared_metadata}
        for (module, name), fn in patches.items():
            setattr(module, name, fn)
        try:
            yield
        finally:
            for (module, name), fn in originals.items():
                setattr(module, name, fn)
