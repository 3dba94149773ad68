"""Shared fixtures: a tiny random model for fast tests, the embedded default model for parity tests.

The default model is loaded once per session (parsing and dequantising the GGUF file: ~7 s). Set
DECODEKIT_TEST_MODEL to a local folder holding the same weights to load it faster while developing.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # decodekit's Triton kernels run under Triton's CPU interpreter in tests
    os.environ.setdefault("TRITON_INTERPRET", "1")  # (read when the kernels are defined, at import)

import decodekit  # noqa: E402
from tests.toy import tiny_lm as _tiny_lm


@pytest.fixture(scope="session")
def tiny_lm() -> decodekit.LM:
    return _tiny_lm()


@pytest.fixture(scope="session")
def default_lm() -> decodekit.LM:
    try:
        return decodekit.load(os.environ.get("DECODEKIT_TEST_MODEL") or None)
    except decodekit.ModelNotFoundError as exc:  # pragma: no cover - CI installs it
        pytest.fail(f"the default model is required for this test: {exc}")
