"""Logits processors: temperature, top-k, top-p, min-p, typical, repetition penalty, no-repeat-ngram.

Each processor is a small frozen dataclass, validated at construction, mapping processed logits
``[rows, V] -> [rows, V]``; filtered tokens get ``-inf``. Values equal transformers'
``generation.logits_process`` counterparts (same ops, computed in the logits' dtype), but the
history processors read a :class:`History` (per-row ``start``/``end`` over a padded id tensor)
instead of raw ``input_ids``, so padding never leaks into penalties or n-grams. No processor syncs
with the host (no ``.item()``, ``.tolist()`` or branching on tensor values).

>>> import torch
>>> procs = build_processors(temperature=0.7, top_k=2)
>>> [type(p).__name__ for p in procs]
['Temperature', 'TopK']
>>> out = apply_processors(procs, torch.tensor([[1.4, 0.0, 0.7]]), None)
>>> out
tensor([[2., -inf, 1.]])
>>> sample_from_logits(out, torch.Generator().manual_seed(0)).shape
torch.Size([1])
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Protocol

import torch

_NEG_INF = -float("inf")


@dataclass(frozen=True, eq=False)
class History:
    """Token history of each row: row r's tokens are ids[r, start[r]:end[r]] (contiguous; prompt + generated).

    >>> h = History(torch.tensor([[0, 5, 6], [7, 8, 0]]), torch.tensor([1, 0]), torch.tensor([3, 2]))
    >>> h.mask
    tensor([[False,  True,  True],
            [ True,  True, False]])
    """

    ids: torch.Tensor  # [rows, L] long
    start: torch.Tensor  # [rows] long
    end: torch.Tensor  # [rows] long

    @property
    def mask(self) -> torch.Tensor:
        """[rows, L] bool, True where a token is valid."""
        pos = torch.arange(self.ids.shape[1], device=self.ids.device)  # [L]
        return (pos >= self.start[:, None]) & (pos < self.end[:, None])  # [rows, L]


class Processor(Protocol):
    """Maps logits [rows, V] -> [rows, V]; reads `history` only when `needs_history` is True."""

    needs_history: ClassVar[bool]

    def __call__(self, logits: torch.Tensor, history: History | None) -> torch.Tensor: ...


# ---------------------------------------------------------------- validation


def _real(name: str, value: object, lo: float, hi: float, lo_open: bool, hi_open: bool) -> float:
    """`value` as a float in the interval (lo|[lo, hi]|hi), else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a real number, got {value!r} ({type(value).__name__})")
    v = float(value)
    above = v > lo if lo_open else v >= lo
    below = v < hi if hi_open else v <= hi
    if not (above and below):  # also catches NaN
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"`{name}` must lie in {interval}, got {value!r}")
    return v


def _int(name: str, value: object, lo: int) -> int:
    """`value` as an int >= lo, else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be an integer, got {value!r} ({type(value).__name__})")
    if value < lo:
        raise ValueError(f"`{name}` must be >= {lo}, got {value!r}")
    return int(value)


def _set(obj: object, name: str, value: object) -> None:  # normalise a frozen dataclass field
    object.__setattr__(obj, name, value)


def _require_history(name: str, history: History | None) -> History:
    if history is None:
        raise ValueError(f"{name} needs a History, got None")
    return history


# ---------------------------------------------------------------- warpers


@dataclass(frozen=True)
class Temperature:
    """Divide logits by `temperature` (> 0). Matches transformers' TemperatureLogitsWarper.

    >>> Temperature(0.5)(torch.tensor([[1.0, -2.0]]), None)
    tensor([[ 2., -4.]])
    """

    temperature: float
    needs_history: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _set(self, "temperature", _real("temperature", self.temperature, 0.0, math.inf, True, True))

    def __call__(self, logits: torch.Tensor, history: History | None) -> torch.Tensor:
        return logits / self.temperature  # [rows, V]


@dataclass(frozen=True)
class TopK:
    """Keep logits >= the k-th largest (ties at the threshold kept). Matches TopKLogitsWarper.

    >>> TopK(2)(torch.tensor([[3.0, 1.0, 3.0, 2.0]]), None)
    tensor([[3., -inf, 3., -inf]])
    """

    top_k: int
    min_tokens_to_keep: int = 1
    needs_history: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _set(self, "top_k", _int("top_k", self.top_k, 1))
        _set(self, "min_tokens_to_keep", _int("min_tokens_to_keep", self.min_tokens_to_keep, 1))

    def __call__(self, logits: torch.Tensor, history: History | None) -> torch.Tensor:
        k = min(max(self.top_k, self.min_tokens_to_keep), logits.shape[-1])  # python ints (shapes)
        threshold = torch.topk(logits, k, dim=-1).values[..., -1:]  # [rows, 1]
        return logits.masked_fill(logits < threshold, _NEG_INF)  # [rows, V]


@dataclass(frozen=True)
class TopP:
    """Nucleus: keep the smallest top set of mass >= `top_p` in (0, 1]. Matches TopPLogitsWarper.

    >>> TopP(0.5)(torch.tensor([[2.0, 1.0, 0.0]]), None)
    tensor([[2., -inf, -inf]])
    """

    top_p: float
    min_tokens_to_keep: int = 1
    needs_history: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _set(self, "top_p", _real("top_p", self.top_p, 0.0, 1.0, True, False))
        _set(self, "min_tokens_to_keep", _int("min_tokens_to_keep", self.min_tokens_to_keep, 1))

    def __call__(self, logits: torch.Tensor, history: History | None) -> torch.Tensor:
        sorted_logits, order = torch.sort(logits, descending=False)  # [rows, V] ascending
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # [rows, V]
        drop_sorted = cum <= (1 - self.top_p)  # [rows, V]
        drop_sorted[..., -self.min_tokens_to_keep :] = False
        drop = drop_sorted.scatter(1, order, drop_sorted)  # [rows, V] original order
        return logits.masked_fill(drop, _NEG_INF)  # [rows, V]


@dataclass(frozen=True)
class MinP:
    """Drop tokens with p < `min_p` * p_max, `min_p` in [0, 1]. Matches MinPLogitsWarper.

    >>> MinP(0.5)(torch.tensor([[0.0, -0.5, -1.0]]), None)
    tensor([[ 0.0000, -0.5000,    -inf]])
    """

    min_p: float
    min_tokens_to_keep: int = 1
    needs_history: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _set(self, "min_p", _real("min_p", self.min_p, 0.0, 1.0, False, False))
        _set(self, "min_tokens_to_keep", _int("min_tokens_to_keep", self.min_tokens_to_keep, 1))

    def __call__(self, logits: torch.Tensor, history: History | None) -> torch.Tensor:
        probs = torch.softmax(logits, dim=-1)  # [rows, V]
        drop = probs < self.min_p * probs.amax(dim=-1, keepdim=True)  # [rows, V]
        k = min(self.min_tokens_to_keep, probs.shape[-1])
        keep = torch.topk(probs, k, dim=-1).indices  # [rows, k]
        drop = drop.scatter(-1, keep, False)  # [rows, V]
        return logits.masked_fill(drop, _NEG_INF)  # [rows, V]


@dataclass(frozen=True)
class TypicalP:
    """Locally typical sampling (Meister et al. 2023, arXiv:2202.00666): keep the tokens whose
    surprisal is closest to the entropy, up to mass `typical_p` in (0, 1]. Matches TypicalLogitsWarper.

    >>> TypicalP(0.5)(torch.tensor([[2.0, 1.0, 1.0, 1.0]]), None)  # the argmax is atypical
    tensor([[-inf, 1., 1., 1.]])
    """

    typical_p: float
    min_tokens_to_keep: int = 1
    needs_history: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _set(self, "typical_p", _real("typical_p", self.typical_p, 0.0, 1.0, True, False))
        _set(self, "min_tokens_to_keep", _int("min_tokens_to_keep", self.min_tokens_to_keep, 1))

    def __call__(self, logits: torch.Tensor, history: History | None) -> torch.Tensor:
        if self.typical_p == 1.0:  # python float: all the mass is kept (rounding must not cut)
            return logits
        logp = torch.log_softmax(logits, dim=-1)  # [rows, V]
        entropy = -(logp * logp.exp()).nansum(-1, keepdim=True)  # [rows, 1]
        shifted = (-logp - entropy).abs()  # [rows, V] |surprisal - entropy|
        sorted_shift, order = torch.sort(shifted, descending=False)  # [rows, V]
        cum = logits.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)  # [rows, V]
        last = (cum < self.typical_p).sum(dim=1).clamp(max=logits.shape[-1] - 1)  # [rows]
        drop_sorted = sorted_shift > sorted_shift.gather(1, last[:, None])  # [rows, V]
        drop_sorted[..., : self.min_tokens_to_keep] = False
        drop = drop_sorted.scatter(1, order, drop_sorted)  # [rows, V]
        return logits.masked_fill(drop, _NEG_INF)  # [rows, V]


# ---------------------------------------------------------------- history processors


@dataclass(frozen=True)
class RepetitionPenalty:
    """CTRL penalty (Keskar et al. 2019, arXiv:1909.05858) on every token in the row's valid history:
    positive logits are divided by `penalty`, negative ones multiplied. Matches
    RepetitionPenaltyLogitsProcessor; pad positions never count.

    >>> h = History(torch.tensor([[1, 0, 2]]), torch.tensor([0]), torch.tensor([1]))
    >>> RepetitionPenalty(2.0)(torch.tensor([[4.0, -4.0, 4.0]]), h)
    tensor([[ 4., -8.,  4.]])
    """

    penalty: float
    needs_history: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _set(self, "penalty", _real("penalty", self.penalty, 0.0, math.inf, True, True))

    def __call__(self, logits: torch.Tensor, history: History | None) -> torch.Tensor:
        h = _require_history("RepetitionPenalty", history)
        vocab = logits.shape[-1]
        idx = torch.where(h.mask, h.ids.clamp(max=vocab), vocab)  # [rows, L]; spare column V
        seen = logits.new_zeros((logits.shape[0], vocab + 1), dtype=torch.bool)  # [rows, V + 1]
        seen = seen.scatter(1, idx, True)[:, :vocab]  # [rows, V]
        penalised = torch.where(logits < 0, logits * self.penalty, logits / self.penalty)  # [rows, V]
        return torch.where(seen, penalised, logits)  # [rows, V]


@dataclass(frozen=True)
class NoRepeatNGram:
    """Ban every token that would complete an n-gram already present in the row's valid history
    (as transformers' NoRepeatNGramLogitsProcessor / fairseq `no_repeat_ngram_size`).

    >>> h = History(torch.tensor([[9, 1, 2, 1]]), torch.tensor([1]), torch.tensor([4]))
    >>> NoRepeatNGram(2)(torch.zeros(1, 4), h)
    tensor([[0., 0., -inf, 0.]])
    """

    ngram_size: int
    needs_history: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _set(self, "ngram_size", _int("ngram_size", self.ngram_size, 1))

    def __call__(self, logits: torch.Tensor, history: History | None) -> torch.Tensor:
        h = _require_history("NoRepeatNGram", history)
        n, (rows, length), vocab = self.ngram_size, h.ids.shape, logits.shape[-1]
        if length < n:  # static shape: no window fits in any row
            return logits
        windows = h.ids.unfold(1, n, 1)  # [rows, W, n], W = L - n + 1
        first = torch.arange(length - n + 1, device=h.ids.device)  # [W] window start positions
        valid = (first >= h.start[:, None]) & (first + n <= h.end[:, None])  # [rows, W]
        pos = (h.end[:, None] - (n - 1) + torch.arange(n - 1, device=h.ids.device)).clamp(0, length - 1)
        prefix = h.ids.gather(1, pos)  # [rows, n - 1]: the last n-1 tokens (garbage if too short)
        match = (windows[..., :-1] == prefix[:, None, :]).all(dim=-1) & valid  # [rows, W]
        banned_ids = torch.where(match, windows[..., -1].clamp(max=vocab), vocab)  # [rows, W]
        banned = logits.new_zeros((rows, vocab + 1), dtype=torch.bool)  # [rows, V + 1]
        banned = banned.scatter(1, banned_ids, True)[:, :vocab]  # [rows, V]
        return logits.masked_fill(banned, _NEG_INF)  # [rows, V]


# ---------------------------------------------------------------- composition and sampling


def build_processors(
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    typical_p: float = 1.0,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    min_tokens_to_keep: int = 1,
) -> tuple[Processor, ...]:
    """The active processors, in transformers' order (GenerationMixin._get_logits_processor):
    repetition penalty, no-repeat-ngram, then temperature, top-k, top-p, min-p, typical.
    Identity settings (temperature 1, top_k 0, top_p 1, min_p 0, typical_p 1, penalty 1, ngram 0)
    are skipped; every value is validated first. `min_tokens_to_keep` (> 1 for beam sampling) goes
    to the truncating warpers, as in transformers.

    >>> build_processors(repetition_penalty=1.2, top_p=0.9)
    (RepetitionPenalty(penalty=1.2), TopP(top_p=0.9, min_tokens_to_keep=1))
    """
    temperature = _real("temperature", temperature, 0.0, math.inf, True, True)
    top_k = _int("top_k", top_k, 0)
    top_p = _real("top_p", top_p, 0.0, 1.0, True, False)
    min_p = _real("min_p", min_p, 0.0, 1.0, False, False)
    typical_p = _real("typical_p", typical_p, 0.0, 1.0, True, False)
    repetition_penalty = _real("repetition_penalty", repetition_penalty, 0.0, math.inf, True, True)
    no_repeat_ngram_size = _int("no_repeat_ngram_size", no_repeat_ngram_size, 0)
    keep = _int("min_tokens_to_keep", min_tokens_to_keep, 1)
    candidates: list[tuple[bool, Callable[[], Processor]]] = [
        (repetition_penalty != 1.0, lambda: RepetitionPenalty(repetition_penalty)),
        (no_repeat_ngram_size > 0, lambda: NoRepeatNGram(no_repeat_ngram_size)),
        (temperature != 1.0, lambda: Temperature(temperature)),
        (top_k > 0, lambda: TopK(top_k, keep)),
        (top_p < 1.0, lambda: TopP(top_p, keep)),
        (min_p > 0.0, lambda: MinP(min_p, keep)),
        (typical_p < 1.0, lambda: TypicalP(typical_p, keep)),
    ]
    return tuple(make() for active, make in candidates if active)


def apply_processors(
    processors: Iterable[Processor], logits: torch.Tensor, history: History | None
) -> torch.Tensor:
    """Apply `processors` in order to logits [rows, V]; returns [rows, V].

    >>> apply_processors((Temperature(2.0), TopK(1)), torch.tensor([[2.0, 4.0]]), None)
    tensor([[-inf, 2.]])
    """
    for processor in processors:
        logits = processor(logits, history)  # [rows, V]
    return logits


def sample_from_logits(logits: torch.Tensor, generator: torch.Generator | None,
                       rows: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
    """[rows, V] processed logits (may contain -inf) -> [rows] long; draws from softmax(logits) with the
    exponential-race trick: argmax(p / E) with E ~ Exp(1) drawn with `generator` (no host sync, no multinomial).

    ``rows = (batch, origin)`` (``DecodeState.draw_rows``): the logits' rows are rows ``origin [rows]``
    of a batch of ``batch`` rows (others finished and left it); E is drawn for the whole batch and
    these rows taken, so each row gets the draws it gets in the full batch.

    Probabilities are computed in float32 (at least), so bf16/fp16 logits sample as finely as fp32.
    Filtered tokens (p = 0) are never drawn: E is clamped away from 0. A row of all -inf has no
    distribution; its result is unspecified.

    >>> g = torch.Generator().manual_seed(0)
    >>> sample_from_logits(torch.tensor([[0.0, -float("inf")], [-float("inf"), 5.0]]), g)
    tensor([0, 1])
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    probs = torch.softmax(logits.to(dtype), dim=-1)  # [rows, V]
    if rows is None:
        race = torch.empty_like(probs).exponential_(1.0, generator=generator)  # [rows, V] E ~ Exp(1)
    else:
        batch, origin = rows
        race = probs.new_empty(batch, probs.shape[-1]).exponential_(1.0, generator=generator)  # [batch, V]
        race = race.index_select(0, origin)  # [rows, V]
    race = race.clamp_min(torch.finfo(dtype).tiny)  # [rows, V]
    return torch.argmax(probs / race, dim=-1)  # [rows] long
