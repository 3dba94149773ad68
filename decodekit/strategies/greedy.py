"""Greedy decoding: the most likely next token at every step.

Equals ``transformers`` ``generate(do_sample=False)`` token for token (fp32, CPU), including its
``repetition_penalty`` and ``no_repeat_ngram_size`` processors.

Example:
    >>> gen = decodekit.generate(lm, "The capital of France is", "greedy", max_new_tokens=8)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

from decodekit.config import StrategyConfig
from decodekit.fast.pick import greedy_pick, pick_fits
from decodekit.fast.step_graph import TokenPlan
from decodekit.processors import apply_processors, build_processors
from decodekit.registry import register_strategy
from decodekit.state import DecodeState, StepOutput
from decodekit.strategies.base import Strategy

__all__ = ["Greedy", "GreedyConfig"]


@dataclass(frozen=True)
class GreedyConfig(StrategyConfig):
    strategy_name = "greedy"
    repetition_penalty: float = field(default=1.0, metadata={"help": "penalise tokens already in the text (> 0; 1 = off)"})
    no_repeat_ngram_size: int = field(default=0, metadata={"help": "never repeat an n-gram of this size (0 = off)"})

    def validate(self) -> None:
        build_processors(repetition_penalty=self.repetition_penalty,
                         no_repeat_ngram_size=self.no_repeat_ngram_size)


@register_strategy("greedy")
class Greedy(Strategy):
    """Greedy decoding (argmax of the processed logits at every step)."""

    Config = GreedyConfig
    graph_safe = True
    lagged_stops = True  # no host sync in the step: the loop may check stops one step late
    compactable = True  # rows are independent: finished rows may leave the batch

    def graph_plan(self, state: DecodeState, stopping, body) -> TokenPlan | None:
        """The whole step from CUDA graphs (:mod:`decodekit.fast.step_graph`), without processors."""
        return None if self.processors else TokenPlan(self, state, stopping, body)

    def __init__(self, config: GreedyConfig | None = None, **options):
        super().__init__(config, **options)
        c = self.config
        self.processors = build_processors(repetition_penalty=c.repetition_penalty,
                                           no_repeat_ngram_size=c.no_repeat_ngram_size)

    def step(self, state: DecodeState) -> StepOutput:
        logits = state.advance()  # [rows, vocab]
        scores = state.process(logits)
        if self.processors:
            scores = apply_processors(self.processors, scores, state.history())
        elif scores is logits and pick_fits(logits):  # CUDA: argmax and its log-prob in one kernel
            tokens, logprobs = greedy_pick(logits)  # [rows], [rows, 1]
            return StepOutput.single(tokens, logits, logprobs)
        return StepOutput.single(scores.argmax(-1), logits)
