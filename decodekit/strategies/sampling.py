"""Ancestral sampling with temperature, top-k, top-p (nucleus), min-p and typical filtering.

The processors equal transformers' warpers (same order, same results); the draw uses the
exponential-race trick (``argmax(p / E)``, ``E ~ Exp(1)``), which needs no host sync. The same
``seed`` gives the same output.

Example:
    >>> gen = decodekit.generate(lm, "Once upon a time", "sample", max_new_tokens=32,   # doctest: +SKIP
    ...                          seed=0, temperature=0.7, top_p=0.9)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from decodekit.config import StrategyConfig
from decodekit.fast.step_graph import TokenPlan
from decodekit.processors import apply_processors, build_processors, sample_from_logits
from decodekit.registry import register_strategy
from decodekit.state import DecodeState, StepOutput
from decodekit.strategies.base import Strategy

__all__ = ["Sample", "SampleConfig"]


@dataclass(frozen=True)
class SampleConfig(StrategyConfig):
    strategy_name = "sample"
    temperature: float = field(default=1.0, metadata={"help": "divide logits by this (> 0)"})
    top_k: int = field(default=0, metadata={"help": "keep the k most likely tokens (0 = off)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus: smallest set with this mass, in (0, 1]"})
    min_p: float = field(default=0.0, metadata={"help": "drop tokens below min_p * max prob, in [0, 1]"})
    typical_p: float = field(default=1.0, metadata={"help": "locally typical sampling mass, in (0, 1]"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "penalise tokens already in the text (> 0)"})
    no_repeat_ngram_size: int = field(default=0, metadata={"help": "never repeat an n-gram of this size (0 = off)"})

    def validate(self) -> None:
        build_processors(**self.processor_options())

    def processor_options(self) -> dict:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "min_p": self.min_p, "typical_p": self.typical_p,
                "repetition_penalty": self.repetition_penalty,
                "no_repeat_ngram_size": self.no_repeat_ngram_size}


@register_strategy("sample")
class Sample(Strategy):
    """Multinomial sampling from the processed distribution."""

    Config = SampleConfig
    graph_safe = True
    uses_generator = True
    lagged_stops = True  # no host sync in the step: the loop may check stops one step late
    compactable = True  # rows are independent; their draws do not depend on the others (draw_rows)

    def graph_plan(self, state: DecodeState, stopping, body) -> TokenPlan | None:
        """The whole step from CUDA graphs (:mod:`decodekit.fast.step_graph`), without processors."""
        return None if self.processors else TokenPlan(self, state, stopping, body)

    def __init__(self, config: SampleConfig | None = None, **options):
        super().__init__(config, **options)
        self.processors = build_processors(**self.config.processor_options())

    def step(self, state: DecodeState) -> StepOutput:
        logits = state.advance()  # [rows, vocab]
        scores = apply_processors(self.processors, state.process(logits), state.history())
        return StepOutput.single(sample_from_logits(scores, state.generator, state.draw_rows), logits)
