"""Diverse beam search (Vijayakumar et al. 2016, *Diverse Beam Search: Decoding Diverse Solutions
from Neural Sequence Models*, arXiv:1610.02424).

The ``num_beams`` beams of a prompt are split into ``num_beam_groups`` groups of
``B' = num_beams / num_beam_groups``. Every step, the groups choose in turn: group 1 is plain beam
search; group g adds ``-diversity_penalty * penalty`` to its scores, where the penalty measures how
much a continuation resembles what groups 1..g-1 produced at this step (see
:mod:`~decodekit.strategies.diversity`: ``"hamming"`` (default), ``"cumulative"``, ``"ngram"``).
The penalised scores accumulate into the beams' scores and rank the returned sequences, which are
the best ``num_return_sequences`` finished hypotheses over all groups. Each group keeps its own
``B'`` finished hypotheses and stops on its own (``early_stopping``, ``length_penalty`` as in
``"beam"``).

Two modes:

================  ==========================================  =========================================
                  ``mode="paper"`` (default; fairseq)          ``mode="hf"`` (transformers <= 4.56)
================  ==========================================  =========================================
groups            interleaved: group g = beams g, g+G, ...     contiguous blocks of B' beams
what counts       all k = 2*B' candidates each earlier group   the B' beams each earlier group kept
                  scored (also those that ended or were cut)   (a finished group counts B' pad tokens)
penalty applied   after the other processors                   right after log-softmax, before them
bookkeeping       as ``"beam"`` (transformers 5.x)             transformers 4.56 ``BeamSearchScorer``
discount          ``diversity_discount`` d: earlier steps'     none
                  counts carry over with weight d^age
================  ==========================================  =========================================

``mode="hf"`` with ``"hamming"`` reproduces transformers 4.56's group beam search (``num_beam_groups``,
``diversity_penalty``) token for token. ``mode="paper"`` follows fairseq's ``DiverseBeamSearch``
(Hamming over all candidates, interleaved groups); unlike fairseq's sequence generator, groups keep
their own beams when some of their candidates end. The paper's Lua code also starts group g at step g
(staggered); both libraries start all groups at once, and so does decodekit. fairseq has no discount
option; ``diversity_discount`` (default 0 = fairseq exactly) is decodekit's: with d > 0 the Hamming
penalty also counts the tokens earlier groups chose at past steps, weighted ``d ** steps_ago``.

Degenerate settings: one group is ``"beam"``; ``diversity_penalty=0`` is ``num_beam_groups``
independent beam searches of width B'.

Example:
    >>> gen = decodekit.generate(lm, "Describe a sunset.", "diverse_beam", num_beams=4,   # doctest: +SKIP
    ...                          num_beam_groups=4, diversity_penalty=0.5,
    ...                          num_return_sequences=4, max_new_tokens=24)
    >>> [c.text for c in gen.candidates[0]]                                               # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from decodekit.config import StrategyConfig, check
from decodekit.processors import build_processors
from decodekit.registry import register_strategy
from decodekit.state import Candidate, DecodeState, StepOutput
from decodekit.strategies import beam_core, diversity
from decodekit.strategies.base import Strategy
from decodekit.strategies.beam import EarlyStopping, check_beam_options

__all__ = ["DiverseBeam", "DiverseBeamConfig"]


@dataclass(frozen=True)
class DiverseBeamConfig(StrategyConfig):
    strategy_name = "diverse_beam"
    num_beams: int = field(default=4, metadata={"help": "beams per prompt, over all groups"})
    num_beam_groups: int = field(default=4, metadata={"help": "groups (divides num_beams; paper: = num_beams)"})
    diversity_penalty: float = field(default=0.5, metadata={"help": "lambda >= 0 (paper: 0.2 .. 0.8)"})
    diversity: Literal["hamming", "cumulative", "ngram"] = field(
        default="hamming", metadata={"help": "diversity function"})
    mode: Literal["paper", "hf"] = field(
        default="paper", metadata={"help": "'paper' (fairseq) or 'hf' (transformers 4.56)"})
    diversity_discount: float = field(default=0.0, metadata={
        "help": "paper mode, hamming: weight d ** age of past steps' counts, in [0, 1] (0 = off)"})
    diversity_temperature: float = field(default=1.0, metadata={"help": "cumulative: temperature > 0"})
    diversity_ngram: int = field(default=2, metadata={"help": "ngram: n >= 1"})
    length_penalty: float = field(default=1.0, metadata={"help": "score = sum / length ** length_penalty"})
    early_stopping: EarlyStopping = field(default=False, metadata={"help": "True, False or 'never'"})
    num_return_sequences: int = field(default=1, metadata={"help": "sequences returned per prompt"})
    no_repeat_ngram_size: int = field(default=0, metadata={"help": "never repeat an n-gram of this size"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "penalise tokens already in the text"})

    def validate(self) -> None:
        name = "diverse_beam"
        check_beam_options(name, self.num_beams, self.num_return_sequences, self.length_penalty,
                           self.early_stopping)
        g, b = self.num_beam_groups, self.num_beams
        check(1 <= g <= b and b % g == 0,
              f"{name}: num_beam_groups must divide num_beams={b} (1 <= groups <= beams), got {g}")
        check(0.0 <= self.diversity_penalty < float("inf"),
              f"{name}: diversity_penalty must be finite and >= 0, got {self.diversity_penalty}")
        check(0.0 <= self.diversity_discount <= 1.0,
              f"{name}: diversity_discount must be in [0, 1], got {self.diversity_discount}")
        check(self.diversity_discount == 0.0 or (self.mode == "paper" and self.diversity == "hamming"),
              f"{name}: diversity_discount applies to mode='paper' with diversity='hamming' only")
        check(self.diversity_temperature > 0.0,
              f"{name}: diversity_temperature must be > 0, got {self.diversity_temperature}")
        check(self.diversity_temperature == 1.0 or self.diversity == "cumulative",
              f"{name}: diversity_temperature applies to diversity='cumulative' only")
        check(self.diversity_ngram >= 1, f"{name}: diversity_ngram must be >= 1, got {self.diversity_ngram}")
        check(self.diversity_ngram == 2 or self.diversity == "ngram",
              f"{name}: diversity_ngram applies to diversity='ngram' only")
        build_processors(repetition_penalty=self.repetition_penalty,
                         no_repeat_ngram_size=self.no_repeat_ngram_size)


@register_strategy("diverse_beam")
class DiverseBeam(Strategy):
    """Diverse (group) beam search; see the module docstring for the modes and their differences."""

    Config = DiverseBeamConfig

    def __init__(self, config: DiverseBeamConfig | None = None, **options):
        super().__init__(config, **options)
        c = self.config
        self.penalties = build_processors(repetition_penalty=c.repetition_penalty,
                                          no_repeat_ngram_size=c.no_repeat_ngram_size)
        self.hf = c.mode == "hf"
        self.settings = beam_core.BeamSettings(
            num_beams=c.num_beams, groups=c.num_beam_groups, length_penalty=c.length_penalty,
            early_stopping=c.early_stopping, num_return_sequences=c.num_return_sequences,
            flavour="v4" if self.hf else "v5", interleaved=not self.hf)

    def init(self, state: DecodeState) -> DecodeState:
        state.extra["beams"] = beam_core.start(state, self.settings)
        return state

    def step(self, state: DecodeState) -> StepOutput:
        beams: beam_core.Beams = state.extra["beams"]
        beam_core.retire(state, beams)
        logits = state.advance()  # [rows, V]
        logp = torch.log_softmax(logits, -1)  # [rows, V]
        groups = self.settings.groups
        prompts = beams.units // groups
        closed = beams.closed.view(prompts, groups)  # [prompts, G] before this step
        refs: list[diversity.Refs] = []
        selections = []
        for g in range(groups):
            units = torch.arange(prompts, device=logp.device) * groups + g  # [prompts]
            rows = beams.rows_of[units]  # [prompts, width]
            scores = self._group_scores(state, rows, logp, refs)  # [prompts, width, V]
            sel = beam_core.select(state, beams, units, scores, logp)
            selections.append(sel)
            refs.append(self._refs(sel, rows, closed[:, g], beams.pad))
        if self.config.diversity_discount > 0.0:
            self._discount(state, refs, logp.shape[-1])
        return beam_core.commit(state, beams, beam_core.Selection.interleave(selections))

    def _group_scores(self, state: DecodeState, rows: torch.Tensor, logp: torch.Tensor,
                      refs: list[diversity.Refs]) -> torch.Tensor:
        """Processed, diversity-penalised log-probs [prompts, width, V] of one group's beams."""
        prompts, width = rows.shape
        flat = rows.flatten()  # [prompts * width]
        scores = logp[flat]  # [prompts * width, V]
        lam = self.config.diversity_penalty
        penalty = self._penalty(state, refs, rows, logp.shape[-1]) if refs and lam else None
        if self.hf and penalty is not None:  # transformers: right after log-softmax
            scores = (scores.view(prompts, width, -1) - lam * penalty).view(prompts * width, -1)
        scores = beam_core.process(state, flat, scores, self.penalties).view(prompts, width, -1)
        if not self.hf and penalty is not None:  # fairseq: on the final log-probs
            scores = scores - lam * penalty
        return scores

    def _penalty(self, state: DecodeState, refs: list[diversity.Refs], rows: torch.Tensor,
                 vocab: int) -> torch.Tensor:
        """[prompts, 1 or width, V] similarity to the earlier groups' sequences."""
        c = self.config
        if c.diversity == "cumulative":
            return diversity.cumulative(state, refs, rows, vocab, c.diversity_temperature)
        if c.diversity == "ngram":
            return diversity.ngram(state, refs, rows, vocab, c.diversity_ngram)
        counts = diversity.hamming(refs, vocab)  # [prompts, 1, V]
        past = state.extra.get("diversity_past")  # [prompts, G, V] discounted counts of past steps
        if past is not None:
            counts = counts + past[:, : len(refs)].sum(1, keepdim=True)
        return counts

    def _refs(self, sel: beam_core.Selection, rows: torch.Tensor, closed: torch.Tensor,
              pad: int) -> diversity.Refs:
        """What this group contributes to the later groups' penalty (``closed [prompts]``)."""
        if self.hf:  # the kept beams; a finished group keeps emitting pad tokens, as transformers
            token = torch.where(closed[:, None], pad, sel.kept("token"))  # [prompts, width]
            return diversity.Refs(torch.where(closed[:, None], rows, sel.kept("parent")), token,
                                  torch.ones_like(token, dtype=torch.bool))
        valid = ~closed[:, None].expand_as(sel.token)  # [prompts, k]: every candidate it scored
        return diversity.Refs(sel.parent, sel.token, valid)

    def _discount(self, state: DecodeState, refs: list[diversity.Refs], vocab: int) -> None:
        """past[:, g] = d * (past[:, g] + this step's counts of group g)."""
        d = self.config.diversity_discount
        now = torch.cat([diversity.hamming([r], vocab) for r in refs], 1)  # [prompts, G, V]
        past = state.extra.get("diversity_past")
        state.extra["diversity_past"] = d * (now if past is None else past + now)

    def finalize(self, state: DecodeState) -> list[list[Candidate]]:
        return beam_core.finalize(state, state.extra["beams"])
