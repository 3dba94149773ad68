"""Beam search, exactly as transformers 5.x runs it, with beam sampling (``do_sample=True``).

Each prompt keeps ``num_beams`` running beams. A step adds every beam's processed log-probs
(``log_softmax`` then repetition penalty, no-repeat-ngram, the caller's processors and, when
sampling, temperature / top-k / top-p) to its running score, takes the best ``2 * num_beams``
continuations (``(1 + n_eos) * num_beams`` with several EOS ids) or samples them without
replacement, and keeps the best ``num_beams`` that do not end. Continuations that end (EOS, a stop
string, the length limit) and rank among the first ``num_beams`` become finished hypotheses, scored
``sum of log-probs / generated_length ** length_penalty`` (EOS counted). ``early_stopping`` has
transformers' meaning: ``True`` stops a prompt once it has ``num_beams`` finished hypotheses;
``False`` also stops when the best running beam, normalised at its current length, cannot beat the
worst of them; ``"never"`` uses the maximum length for that bound when ``length_penalty > 0``.
The returned candidates are the ``num_return_sequences`` best hypotheses, ``score`` = transformers'
``sequences_scores``. ``num_beams=1`` is greedy decoding.

The prompt runs through the model once and is then copied into the beams (transformers runs it once
per beam): the tokens are the same, the scores may differ in the last float32 bits (another matmul
shape). The KV cache is reordered in place, row by row: a beam that continues its own row is not
copied. As in transformers, the penalties act on log-probs (greedy applies them to logits, so
``num_beams=1`` equals greedy without ``repetition_penalty``). Stop strings are checked on the
candidates before they become beams; stopping criteria and monitors that stop a beam turn it into a
finished hypothesis. Monitors that roll rows back are not supported.

Beam search is the standard decoder of sequence models; see e.g. the discussion in Vijayakumar
et al. 2016, *Diverse Beam Search* (arXiv:1610.02424), whose variant is ``"diverse_beam"``.

Example:
    >>> gen = decodekit.generate(lm, "Translate to French: cheese", "beam", num_beams=4,  # doctest: +SKIP
    ...                          num_return_sequences=2, length_penalty=1.0, max_new_tokens=16)
    >>> [(c.text, c.score) for c in gen.candidates[0]]                                   # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Union

import torch

from decodekit.config import StrategyConfig, check
from decodekit.processors import build_processors
from decodekit.registry import register_strategy
from decodekit.state import Candidate, DecodeState, StepOutput
from decodekit.strategies import beam_core
from decodekit.strategies.base import Strategy
from decodekit.strategies.beam_graph import BeamPlan

__all__ = ["Beam", "BeamConfig", "check_beam_options"]

EarlyStopping = Union[bool, Literal["never"]]


def check_beam_options(name: str, num_beams: int, num_return_sequences: int, length_penalty: float,
                       early_stopping: EarlyStopping) -> None:
    """Range checks shared by the beam strategies (ValueError naming the option)."""
    check(num_beams >= 1, f"{name}: num_beams must be >= 1, got {num_beams}")
    check(1 <= num_return_sequences <= num_beams,
          f"{name}: num_return_sequences must be in [1, num_beams={num_beams}], got {num_return_sequences}")
    check(math.isfinite(length_penalty), f"{name}: length_penalty must be finite, got {length_penalty}")
    check(early_stopping in (True, False, "never"),
          f"{name}: early_stopping must be True, False or 'never', got {early_stopping!r}")


@dataclass(frozen=True)
class BeamConfig(StrategyConfig):
    strategy_name = "beam"
    num_beams: int = field(default=4, metadata={"help": "beams kept per prompt (1 = greedy)"})
    length_penalty: float = field(default=1.0, metadata={
        "help": "score = sum log-probs / length ** length_penalty (> 0 favours longer sequences)"})
    early_stopping: EarlyStopping = field(default=False, metadata={
        "help": "True: stop at num_beams finished; False: heuristic; 'never': exact bound"})
    num_return_sequences: int = field(default=1, metadata={"help": "sequences returned per prompt (<= num_beams)"})
    no_repeat_ngram_size: int = field(default=0, metadata={"help": "never repeat an n-gram of this size (0 = off)"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "penalise tokens already in the text (1 = off)"})
    do_sample: bool = field(default=False, metadata={"help": "beam sampling: sample the candidates"})
    temperature: float = field(default=1.0, metadata={"help": "beam sampling: divide log-probs by this"})
    top_k: int = field(default=0, metadata={"help": "beam sampling: keep the k best tokens (0 = off)"})
    top_p: float = field(default=1.0, metadata={"help": "beam sampling: nucleus mass in (0, 1]"})

    def validate(self) -> None:
        check_beam_options("beam", self.num_beams, self.num_return_sequences, self.length_penalty,
                           self.early_stopping)
        build_processors(repetition_penalty=self.repetition_penalty,
                         no_repeat_ngram_size=self.no_repeat_ngram_size,
                         temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        check(self.do_sample or (self.temperature == 1.0 and self.top_k == 0 and self.top_p == 1.0),
              "beam: temperature, top_k and top_p apply to beam sampling only: set do_sample=True")


@register_strategy("beam")
class Beam(Strategy):
    """Beam search (and beam sampling) with transformers 5.x semantics; see the module docstring."""

    Config = BeamConfig
    uses_generator = True  # beam sampling draws from state.generator

    def __init__(self, config: BeamConfig | None = None, **options):
        super().__init__(config, **options)
        c = self.config
        self.penalties = build_processors(repetition_penalty=c.repetition_penalty,
                                          no_repeat_ngram_size=c.no_repeat_ngram_size)
        self.settings = beam_core.BeamSettings(
            num_beams=c.num_beams, length_penalty=c.length_penalty, early_stopping=c.early_stopping,
            num_return_sequences=c.num_return_sequences, do_sample=c.do_sample)

    def init(self, state: DecodeState) -> DecodeState:
        warpers = ()
        if self.config.do_sample:  # transformers keeps 1 + n_eos tokens per beam when it samples
            stopping = state.stopping
            n_eos = len(stopping.eos_token_ids if stopping is not None else state.lm.eos_token_ids)
            c = self.config
            warpers = build_processors(temperature=c.temperature, top_k=c.top_k, top_p=c.top_p,
                                       min_tokens_to_keep=n_eos + 1)
        state.extra["beams"] = beam_core.start(state, self.settings, warpers)
        return state

    @property
    def lagged_stops(self) -> bool:
        """Without penalties (they read the rows' tokens on the host) a step over closed units changes
        nothing and the step can run without host syncs (:mod:`~decodekit.strategies.beam_graph`):
        the loop may check stops one step late (and on the fast path replay whole steps)."""
        return not self.penalties

    def graph_plan(self, state: DecodeState, stopping, body) -> "BeamPlan | None":
        """The whole beam step from CUDA graphs (:mod:`~decodekit.strategies.beam_graph`), where no
        step reads a host value: no penalties, no stop strings or stopping criteria."""
        if not self.lagged_stops or stopping.stop_strings or stopping.criteria:
            return None
        return BeamPlan(self, state, stopping)

    def step(self, state: DecodeState) -> StepOutput:
        beams: beam_core.Beams = state.extra["beams"]
        beam_core.retire(state, beams)
        return beam_core.commit(state, beams, self.select(state))

    def select(self, state: DecodeState) -> beam_core.Selection:
        """Feed the pending tokens; the step's candidates and kept beams of every unit."""
        beams: beam_core.Beams = state.extra["beams"]
        logits = state.advance()  # [rows, V]
        logp = torch.log_softmax(logits, -1)  # [rows, V]
        rows = beams.rows_of.flatten()  # [rows] logical order
        scores = beam_core.process(state, rows, logp[rows], self.penalties, beams.warpers)  # [rows, V]
        units = torch.arange(beams.units, device=rows.device)  # [units]
        return beam_core.select(state, beams, units, scores.view(beams.units, beams.width, -1), logp)

    def finalize(self, state: DecodeState) -> list[list[Candidate]]:
        return beam_core.finalize(state, state.extra["beams"])
