"""Calibrating a stable entropy band: teacher-force reference text through a model.

As Arora et al. 2023 (arXiv:2302.06784, ``compute_human_entropy_coeffs.py`` of the official code):
cut human text into contexts of ``prefix`` tokens followed by ``tokens`` continuation tokens, record
the entropy of the model's distribution at every continuation position, smooth (trailing mean of 5)
and average per position (:func:`decodekit.monitors.band.compute_band`).

The reference text that is always on the machine: the prose paragraphs of Python's own documentation
topics (``pydoc_data.topics``), without grammar rules, code and bullet lists.

Example:
    >>> lm = decodekit.load()                                                       # doctest: +SKIP
    >>> band = calibrate_band(lm, pydoc_prose(), prefix=32, tokens=128, max_texts=200)  # doctest: +SKIP
    >>> band.save("band.json")                                                      # doctest: +SKIP
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable

import numpy as np
import torch

from decodekit.monitors.band import Band, compute_band, model_signature

__all__ = ["pydoc_prose", "chunk_texts", "teacher_forced_entropies", "calibrate_band"]


def pydoc_prose(min_chars: int = 200) -> list[str]:
    """One text per ``pydoc_data.topics`` topic (sorted by name): its plain prose paragraphs, each
    flattened to one line and joined with blank lines. Indented blocks (grammar, code), bullet
    items, headings and short or symbol-heavy paragraphs are left out."""
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics):
        paragraphs = []
        for para in re.split(r"\n\s*\n", topics[name]):
            first = para.lstrip("\n")
            if not first or first[0].isspace() or first.startswith(("*", "-", ">>>", "+", "|", "=")):
                continue
            flat = " ".join(para.split())
            letters = sum(ch.isalpha() or ch.isspace() for ch in flat)
            if len(flat) >= min_chars and letters >= 0.9 * len(flat) and flat[-1] in ".:)":
                paragraphs.append(flat)
        if paragraphs:
            out.append("\n\n".join(paragraphs))
    return out


def chunk_texts(lm, texts: Iterable[str], length: int, max_texts: int) -> list[list[int]]:
    """Non-overlapping windows of exactly ``length`` tokens from each text (never across texts)."""
    chunks: list[list[int]] = []
    for text in texts:
        ids = list(lm.tokenizer(text, add_special_tokens=False).input_ids)
        for i in range(0, len(ids) - length + 1, length):
            chunks.append(ids[i: i + length])
            if len(chunks) >= max_texts:
                return chunks
    return chunks


@torch.inference_mode()
def teacher_forced_entropies(lm, chunks: list[list[int]], prefix: int, batch_size: int = 8) -> np.ndarray:
    """``[len(chunks), L - prefix]`` entropy (nats) of the model's next-token distribution at each
    continuation position, given the true text before it."""
    rows = []
    for i in range(0, len(chunks), batch_size):
        ids = torch.tensor(chunks[i: i + batch_size], device=lm.device)  # [b, L]
        logits = lm.forward(ids, lm.new_cache(), torch.ones_like(ids)).logits  # [b, L, V]
        logp = torch.log_softmax(logits[:, prefix - 1: -1].float(), -1)  # [b, L - prefix, V]
        rows.append((-(logp.exp() * logp).nansum(-1)).cpu().numpy())
    return np.concatenate(rows, 0)


def calibrate_band(lm, texts: Iterable[str], *, prefix: int = 32, tokens: int = 128, max_texts: int = 200,
                   batch_size: int = 8, width: int = 5, degree: int = 2, source: str = "",
                   command: str = "") -> Band:
    """A :class:`~decodekit.monitors.band.Band` for ``lm`` from ``texts`` (see the module docstring)."""
    if prefix < 1 or tokens < degree + 1:
        raise ValueError(f"need prefix >= 1 and tokens >= {degree + 1}, got {prefix} and {tokens}")
    chunks = chunk_texts(lm, texts, prefix + tokens, max_texts)
    if len(chunks) < 2:
        raise ValueError(f"the reference text yields {len(chunks)} passage(s) of {prefix + tokens} tokens; "
                         "give more text (at least 2 passages)")
    entropies = teacher_forced_entropies(lm, chunks, prefix, batch_size)
    return compute_band(list(entropies), width=width, degree=degree, model=lm.name,
                        model_signature=model_signature(lm), vocab_size=lm.vocab_size,
                        source=source or f"{len(chunks)} passages", command=command)


def python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))
