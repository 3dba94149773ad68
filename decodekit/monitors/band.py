"""The stable entropy band: per-position mean and std of the smoothed entropy of human text.

Arora et al. 2023, "The Stable Entropy Hypothesis and Entropy-Aware Decoding" (arXiv:2302.06784):
teacher-force human continuations through the model, take the entropy of each next-token
distribution, smooth it with a trailing mean over U = 5 tokens, and average per position across
texts. The *stable entropy zone* is ``mean(t) +- a * std(t)``; it is nearly flat, so EAS summarises it
with two constants (SEM = mean of the per-position means, SEV = mean of the stds) and EAD fits
degree-2 polynomials of the position (as the official code, ``np.polyfit``).

A band is stored as JSON (``decodekit calibrate-entropy`` writes one) and belongs to one model: it is
checked against the model's architecture and vocabulary before use.

Example:
    >>> band = Band.load(default_band_path())                                      # doctest: +SKIP
    >>> band.bounds(torch.tensor([0, 50]), a=0.5, zone="flat")   # (lower [2], upper [2])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["Band", "BAND_FORMAT", "default_band_path", "model_signature", "compute_band", "violation_rates"]

BAND_FORMAT = "decodekit-entropy-band/1"
_DEFAULT = "entropy_band_smollm2-135m-instruct.json"


def default_band_path() -> Path:
    """The band shipped for the default model (SmolLM2-135M-Instruct), from pydoc_data prose."""
    return Path(__file__).resolve().parent.parent / "data" / _DEFAULT


def model_signature(lm) -> str:
    """What a band must match: architecture, depth, width and vocabulary, e.g. ``llama/30x576/v49152``."""
    c = lm.config
    layers = getattr(c, "num_hidden_layers", getattr(c, "n_layer", "?"))
    hidden = getattr(c, "hidden_size", getattr(c, "n_embd", "?"))
    return f"{getattr(c, 'model_type', type(lm.model).__name__)}/{layers}x{hidden}/v{lm.vocab_size}"


@dataclass(frozen=True)
class Band:
    model: str  # display name of the model it was calibrated on
    model_signature: str  # see model_signature()
    vocab_size: int
    width: int  # smoothing width U
    mean: tuple[float, ...]  # [positions] mean smoothed entropy (nats) at each generated position
    std: tuple[float, ...]  # [positions]
    count: tuple[int, ...]  # [positions] texts that reach each position
    mean_coeffs: tuple[float, ...]  # np.poly1d order (highest degree first)
    std_coeffs: tuple[float, ...]
    sem: float  # SEM: mean over positions of ``mean``
    sev: float  # SEV: mean over positions of ``std``
    source: str = ""
    command: str = ""
    format: str = BAND_FORMAT

    # ---------------------------------------------------------------- use
    def check(self, lm, path: str | os.PathLike | None = None) -> "Band":
        """Raise a ValueError unless the band was calibrated for ``lm`` (same signature and vocab)."""
        where = f"entropy band {str(path)!r}" if path else "entropy band"
        sig = model_signature(lm)
        if self.vocab_size != lm.vocab_size or self.model_signature != sig:
            raise ValueError(
                f"{where} was calibrated for {self.model!r} ({self.model_signature}, vocabulary "
                f"{self.vocab_size}), but this model is {lm.name!r} ({sig}, vocabulary {lm.vocab_size}); "
                "make one with `decodekit calibrate-entropy --model ... --output band.json`, or give "
                "explicit bounds (lower=..., upper=...)"
            )
        return self

    def bounds(self, t: torch.Tensor, a: float, zone: str = "flat") -> tuple[torch.Tensor, torch.Tensor]:
        """``(lower, upper)``, each shaped like ``t`` (generated positions, long).

        ``zone="flat"``: SEM -+ a * SEV (EAS, Algorithm 1). ``zone="position"``: the degree-2 fits
        mean(t) -+ a * std(t) (EAD), evaluated at ``t`` clamped to the calibrated positions.
        """
        if zone == "flat":
            mid = torch.full(t.shape, self.sem, dtype=torch.float32, device=t.device)
            half = torch.full(t.shape, abs(a) * self.sev, dtype=torch.float32, device=t.device)
        elif zone == "position":
            x = t.clamp(0, len(self.mean) - 1).float()
            mid, half = _poly(self.mean_coeffs, x), abs(a) * _poly(self.std_coeffs, x).clamp_min(0)
        else:
            raise ValueError(f"zone must be 'flat' or 'position', got {zone!r}")
        return (mid - half, mid + half) if a >= 0 else (mid + half, mid - half)

    # ---------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Band":
        """Read and validate a band file (clear FileNotFoundError / ValueError naming the problem)."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"entropy band file {str(path)!r} does not exist")
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"entropy band file {str(path)!r} is not valid JSON: {exc}") from None
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"entropy band file {str(path)!r} is malformed: {exc}") from None

    @classmethod
    def from_dict(cls, data) -> "Band":
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        if data.get("format") != BAND_FORMAT:
            raise ValueError(f"'format' must be {BAND_FORMAT!r}, got {data.get('format')!r}")
        missing = [f for f in cls.__dataclass_fields__ if f not in data and f not in ("source", "command")]
        if missing:
            raise ValueError(f"missing field(s): {', '.join(missing)}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(unknown)}")
        for key in ("model", "model_signature", "source", "command"):
            if key in data and not isinstance(data[key], str):
                raise ValueError(f"'{key}' must be a string")
        fields = {k: data[k] for k in data}
        fields["vocab_size"] = _int(data, "vocab_size", 1)
        fields["width"] = _int(data, "width", 1)
        for key in ("mean", "std", "mean_coeffs", "std_coeffs"):
            fields[key] = _floats(data, key)
        fields["count"] = tuple(int(c) for c in _floats(data, "count"))
        n = len(fields["mean"])
        if n == 0 or len(fields["std"]) != n or len(fields["count"]) != n:
            raise ValueError(f"'mean', 'std' and 'count' must be non-empty and of one length, got "
                             f"{n}, {len(fields['std'])}, {len(fields['count'])}")
        if min(fields["std"]) < 0 or min(fields["mean"]) < 0:
            raise ValueError("entropies and their stds cannot be negative")
        for key in ("sem", "sev"):
            fields[key] = _floats({key: [data[key]]}, key)[0]
        return cls(**fields)


def _poly(coeffs: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x)
    for c in coeffs:  # Horner, np.poly1d order
        out = out * x + c
    return out


def _int(data: dict, key: str, low: int) -> int:
    v = data[key]
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ValueError(f"'{key}' must be an integer >= {low}, got {v!r}")
    return v


def _floats(data: dict, key: str) -> tuple[float, ...]:
    v = data[key]
    if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise ValueError(f"'{key}' must be a list of numbers")
    if not all(math.isfinite(x) for x in v):
        raise ValueError(f"'{key}' holds a non-finite number")
    return tuple(float(x) for x in v)


def compute_band(entropies: list[np.ndarray], *, width: int = 5, degree: int = 2, min_count: int = 2,
                 **meta) -> Band:
    """A band from per-text entropy sequences (``[T_i]`` nats, position 0 = first continuation token).

    Each sequence is smoothed (trailing mean of ``width`` including the current token); positions
    reached by fewer than ``min_count`` texts are dropped from the end.
    """
    if not entropies:
        raise ValueError("no entropy sequences to calibrate from")
    smooth = [np.array([h[max(0, i - width + 1): i + 1].mean() for i in range(len(h))]) for h in entropies]
    length = max(len(s) for s in smooth)
    table = np.full((len(smooth), length), np.nan)
    for i, s in enumerate(smooth):
        table[i, : len(s)] = s
    count = (~np.isnan(table)).sum(0)
    keep = int((count >= min_count).sum())
    if keep < degree + 1:
        raise ValueError(f"too little text: {keep} positions are covered by >= {min_count} texts")
    table, count = table[:, :keep], count[:keep]
    mean, std = np.nanmean(table, 0), np.nanstd(table, 0)
    x = np.arange(keep)
    return Band(
        mean=tuple(map(float, mean)), std=tuple(map(float, std)), count=tuple(map(int, count)),
        mean_coeffs=tuple(map(float, np.polyfit(x, mean, degree))),
        std_coeffs=tuple(map(float, np.polyfit(x, std, degree))),
        sem=float(mean.mean()), sev=float(std.mean()), width=width, **meta,
    )


def violation_rates(values, lower, upper) -> dict[str, float]:
    """ELVR / EUVR / EVR (Arora et al. 2023): the fractions of tokens whose smoothed entropy is below
    the lower bound, above the upper bound, and either. ``values``, ``lower``, ``upper``: equal-length
    sequences (or floats for constant bounds).

    >>> violation_rates([0.1, 1.0, 3.0, 1.2], 0.5, 2.0)
    {'elvr': 0.25, 'euvr': 0.25, 'evr': 0.5}
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"elvr": float("nan"), "euvr": float("nan"), "evr": float("nan")}
    lo, hi = np.broadcast_to(lower, v.shape), np.broadcast_to(upper, v.shape)
    elvr, euvr = float((v < lo).mean()), float((v > hi).mean())
    return {"elvr": elvr, "euvr": euvr, "evr": elvr + euvr}
