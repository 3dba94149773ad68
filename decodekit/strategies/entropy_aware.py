"""Entropy-aware decoding: greedy while the model's entropy stays in the stable entropy zone.

Arora, O'Donnell, Precup, Weston, Cheung 2023, "The Stable Entropy Hypothesis and Entropy-Aware
Decoding" (arXiv:2302.06784). Two published variants:

* ``"eas"`` -- Entropy-Aware Sampling (Algorithm 1 of the revised paper): take the argmax, but at
  positions ``t >= g`` whose entropy exceeds the zone's upper bound, sample with ``sampler``
  (typical, tau = 0.2, or top-k, k = 30). Upper bound = SEM + a * SEV of a calibrated band (``a = 0.5``).
  No lower-bound intervention. Greedy steps take ``argmax`` of the same processed scores the sampler
  sees, so with an infinitely wide band EAS *is* greedy and with every step outside it EAS *is*
  ``"sample"`` with the same sampler and seed (one draw per step either way).
* ``"ead"`` -- Entropy-Aware Decoding with backoff (the arXiv-v1 algorithm, official code): as EAS
  with the position-dependent zone ``mean(t) -+ a * std(t)`` (``a = 1``); in addition, when the
  entropy stays *under* the lower bound for more than ``patience`` consecutive positions, back off:
  roll the row back to the position ``patience + 1`` before (never before ``g``) and take the
  next-ranked token there (rank 2, then 3, ... on repeated backoffs to the same position), at most
  ``max_backoffs`` times per row.

Entropy is that of the model's raw distribution (nats), unsmoothed as in Algorithm 1 and the official
EAD code; ``smoothed=True`` uses the trailing mean over 5 tokens instead. Position ``t`` counts the
row's new tokens from 0; both variants may deviate from greedy from position ``g`` on (the official
EAD code's ``only_greedy_till=5`` is ``g=6`` here). Differences to the official EAD: backoff is per
row (the official code rolls the whole batch back), positions past the calibrated band use its last
position, and the backoff target is computed from the row's own history rather than a saved queue.

The band comes from a JSON file (``decodekit calibrate-entropy``; ``band=None`` uses the one shipped
for the default model) and is checked against the model; ``lower=`` / ``upper=`` override its bounds.

Example:
    >>> gen = decodekit.generate(lm, "The history of Rome", "eas", max_new_tokens=128,   # doctest: +SKIP
    ...                          seed=0, chat=False)
    >>> gen.stats.extra["sampled"]          # tokens sampled (the rest were greedy)         # doctest: +SKIP
    >>> gen = decodekit.generate(lm, "The history of Rome", "ead", max_new_tokens=128,   # doctest: +SKIP
    ...                          seed=0, patience=5, max_backoffs=10)
    >>> gen.stats.extra["backoffs"], gen.traces[0].signals["eas_entropy"][:5]             # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from decodekit.config import StrategyConfig, check
from decodekit.monitors.entropy_band import band_bounds, load_band
from decodekit.monitors.signals import entropy_of, smoothed_entropy
from decodekit.processors import apply_processors, build_processors, sample_from_logits
from decodekit.registry import register_strategy
from decodekit.state import DecodeState, StepOutput
from decodekit.strategies.base import Strategy

__all__ = ["EAS", "EASConfig", "EAD", "EADConfig"]

_ZONE = "flat: SEM -+ a*SEV; position: fitted mean(t) -+ a*std(t)"


@dataclass(frozen=True)
class EASConfig(StrategyConfig):
    strategy_name = "eas"
    band: str | None = field(default=None, metadata={"help": "band JSON file (None: the default model's)"})
    a: float = field(default=0.5, metadata={"help": "zone half-width in stds (inf: never leave the zone)"})
    g: int = field(default=5, metadata={"help": "greedy for the first g tokens"})
    zone: Literal["flat", "position"] = field(default="flat", metadata={"help": _ZONE})
    smoothed: bool = field(default=False, metadata={"help": "use the 5-token trailing mean of the entropy"})
    lower: float | None = field(default=None, metadata={"help": "explicit lower bound (nats), overrides the band"})
    upper: float | None = field(default=None, metadata={"help": "explicit upper bound (nats), overrides the band"})
    sampler: Literal["typical", "top_k"] = field(default="typical", metadata={"help": "sampler above the zone"})
    typical_p: float = field(default=0.2, metadata={"help": "typical sampling mass (sampler=typical)"})
    top_k: int = field(default=30, metadata={"help": "k (sampler=top_k)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (> 0)"})

    def validate(self) -> None:
        name = self.strategy_name
        check(self.a == self.a, f"{name}: a must be a number, got nan")
        check(self.g >= 0, f"{name}: g must be >= 0, got {self.g}")
        if self.lower is not None and self.upper is not None:
            check(self.lower <= self.upper, f"{name}: lower ({self.lower}) must be <= upper ({self.upper})")
        self.sampler_processors()
        load_band(self.band, self.lower, self.upper)  # missing / malformed file: error now

    def sampler_processors(self) -> tuple:
        if self.sampler == "typical":
            return build_processors(temperature=self.temperature, typical_p=self.typical_p)
        return build_processors(temperature=self.temperature, top_k=self.top_k)


@dataclass(frozen=True)
class EADConfig(EASConfig):
    strategy_name = "ead"
    a: float = field(default=1.0, metadata={"help": "zone half-width in stds (official code: 1.0)"})
    zone: Literal["flat", "position"] = field(default="position", metadata={"help": _ZONE})
    patience: int = field(default=5, metadata={"help": "back off after more than this many low-entropy tokens"})
    max_backoffs: int = field(default=10, metadata={"help": "most backoffs per row"})

    def validate(self) -> None:
        super().validate()
        check(self.patience >= 0, f"ead: patience must be >= 0, got {self.patience}")
        check(self.max_backoffs >= 0, f"ead: max_backoffs must be >= 0, got {self.max_backoffs}")


@register_strategy("eas")
class EAS(Strategy):
    """Entropy-Aware Sampling (Arora et al. 2023, Algorithm 1)."""

    Config = EASConfig
    graph_safe = False  # no host sync and in-place buffers, but not yet run inside a CUDA graph
    uses_generator = True
    compactable = True  # rows are independent; per-row data only in state.traces

    def __init__(self, config: EASConfig | None = None, **options):
        super().__init__(config, **options)
        c = self.config
        self.warpers = c.sampler_processors()
        self.band, self.band_path = load_band(c.band, c.lower, c.upper)

    def init(self, state: DecodeState) -> DecodeState:
        if self.band is not None:
            self.band.check(state.lm, self.band_path)
        for key in ("eas_entropy", "eas_sampled"):
            state.traces[key] = torch.full_like(state.logprobs, float("nan"))  # [rows, max_new_tokens]
        state.extra["stat_sampled"] = torch.zeros((), device=state.logprobs.device)
        return state

    # ------------------------------------------------------------------ pieces
    def _entropy(self, state: DecodeState, logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``[rows]`` entropy at positions ``t [rows]`` (traced; smoothed over the trace if asked)."""
        h = entropy_of(logits)  # [rows]
        _write(state, "eas_entropy", t, h)
        if self.config.smoothed:
            h = smoothed_entropy(state.traces["eas_entropy"], _cols(state, t)[:, None])[:, 0]
        return h

    def _bounds(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        return band_bounds(self.band, t, c.a, c.zone, c.lower, c.upper)

    def _choose(self, state: DecodeState, logits: torch.Tensor, t: torch.Tensor, h: torch.Tensor,
                upper: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """``[rows]``: argmax, or a draw from the sampler where ``t >= g`` and ``h > upper`` (rows in
        ``skip [rows]`` choose otherwise: their decision is not recorded)."""
        scores = state.process(logits)  # [rows, V]
        greedy = scores.argmax(-1)
        sampled = sample_from_logits(apply_processors(self.warpers, scores, None), state.generator,
                                     state.draw_rows)
        sample = (t >= self.config.g) & (h > upper)  # [rows]
        if skip is not None:
            sample = sample & ~skip
        _write(state, "eas_sampled", t, sample.float())
        state.extra["stat_sampled"].add_((sample & ~state.done).sum())
        return torch.where(sample, sampled, greedy)

    def step(self, state: DecodeState) -> StepOutput:
        logits = state.advance()  # [rows, V] raw
        t = state.n_new  # [rows] position of the token chosen now
        h = self._entropy(state, logits, t)
        _, upper = self._bounds(t)
        return StepOutput.single(self._choose(state, logits, t, h, upper), logits)


@register_strategy("ead")
class EAD(EAS):
    """Entropy-Aware Decoding with backoff (Arora et al. 2023, arXiv-v1 algorithm)."""

    Config = EADConfig
    graph_safe = False  # a backoff re-runs the forward pass for the rows it rolls back

    def init(self, state: DecodeState) -> DecodeState:
        state = super().init(state)
        state.traces["ead_low_run"] = torch.zeros_like(state.logprobs)  # [rows, max_new_tokens]
        state.extra["ead_rank"] = torch.zeros_like(state.logprobs, dtype=torch.long)  # [rows, max_new]
        state.extra["ead_backoffs"] = torch.zeros_like(state.n_new)  # [rows]
        state.extra["stat_backoffs"] = torch.zeros((), dtype=torch.long, device=state.n_new.device)
        return state

    def keep_rows(self, state: DecodeState, index: torch.Tensor) -> None:
        for key in ("ead_rank", "ead_backoffs"):  # [rows, max_new_tokens], [rows]
            state.extra[key] = state.extra[key].index_select(0, index)

    def step(self, state: DecodeState) -> StepOutput:
        c = self.config
        logits = state.advance()  # [rows, V]
        t = state.n_new.clone()  # [rows]
        h = self._entropy(state, logits, t)
        lower, upper = self._bounds(t)
        low = (t >= c.g) & (h < lower)  # [rows]
        runs = state.traces["ead_low_run"]
        prev = torch.where(t > 0, runs.gather(1, _cols(state, t - 1)[:, None])[:, 0], 0.0)
        run = torch.where(low, prev + 1, 0.0)  # [rows] consecutive low positions ending here
        _write(state, "ead_low_run", t, run)
        backoffs = state.extra["ead_backoffs"]
        back = (run > c.patience) & (backoffs < c.max_backoffs) & ~state.done  # [rows]
        tok = self._choose(state, logits, t, h, upper, skip=back)
        if bool(back.any()):  # host sync only here: EAD is not graph-safe anyway
            target = torch.maximum(t - c.patience - 1, torch.full_like(t, c.g))  # [rows]
            state.rollback(torch.where(back, t - target, 0))
            _write(state, "eas_sampled", target, torch.zeros_like(h), rows=back)
            fresh = state.advance()  # [rows, V]: the rolled-back rows' distribution at the target
            logits = torch.where(back[:, None], fresh, logits)
            tok = torch.where(back, self._alternative(state, fresh, target, back), tok)
            state.extra["ead_backoffs"] = backoffs + back.long()
            state.extra["stat_backoffs"] = state.extra["stat_backoffs"] + back.sum()
        return StepOutput.single(tok, logits)

    def _alternative(self, state: DecodeState, logits: torch.Tensor, target: torch.Tensor,
                     back: torch.Tensor) -> torch.Tensor:
        """``[rows]``: the next-ranked token at ``target`` for the rows in ``back`` (rank bookkeeping:
        rank 2 on the first backoff to a position, 3 on the second, ...; later positions reset)."""
        rank = state.extra["ead_rank"]  # [rows, max_new_tokens] backoffs so far to each position
        pos = _cols(state, target)[:, None]  # [rows, 1]
        new = rank.gather(1, pos) + back.long()[:, None]  # [rows, 1]
        rank.scatter_(1, pos, new)
        later = torch.arange(rank.shape[1], device=rank.device)[None, :] > pos  # [rows, max_new]
        rank.masked_fill_(later & back[:, None], 0)
        k = min(self.config.max_backoffs + 1, logits.shape[-1])
        ranked = state.process(logits).topk(k, dim=-1).indices  # [rows, k]
        return ranked.gather(1, new.clamp(max=k - 1))[:, 0]


def _cols(state: DecodeState, t: torch.Tensor) -> torch.Tensor:
    """Positions ``t [rows]`` clamped into the trace buffers."""
    return t.clamp(0, state.logprobs.shape[1] - 1)


def _write(state: DecodeState, key: str, t: torch.Tensor, value: torch.Tensor,
           rows: torch.Tensor | None = None) -> None:
    """``state.traces[key][r, t[r]] = value[r]`` for rows still decoding (and in ``rows``, if given)."""
    buf = state.traces[key]
    pos = _cols(state, t)[:, None]  # [rows, 1]
    keep = buf.gather(1, pos)[:, 0]
    write = ~state.done if rows is None else rows & ~state.done  # [rows]
    buf.scatter_(1, pos, torch.where(write, value.to(buf.dtype), keep)[:, None])
