"""Handover: decode with a primary strategy and hand rows to a fallback when a monitor says SWITCH.

This is how a SWITCH verdict is consumed. The monitor runner ORs every SWITCH into
``state.extra["switch"]`` (``[rows]`` bool); at its next step this strategy lets the fallback choose
the tokens of those rows (``sticky=True``: for the rest of the decode; else for one step). Both
strategies must add one token per step to one row per prompt (greedy, sample, eas, ...).

Example (greedy until the loop detector fires, then sampling for that row):
    >>> from decodekit.monitors import LoopDetector
    >>> gen = decodekit.generate(lm, "List colours:", "handover", max_new_tokens=128, seed=0,   # doctest: +SKIP
    ...                          fallback="sample", fallback_options={"top_p": 0.9},
    ...                          monitors=[LoopDetector(action="switch")])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from decodekit.config import StrategyConfig, check
from decodekit.registry import STRATEGIES, register_strategy
from decodekit.state import DecodeState, StepOutput
from decodekit.strategies.base import Strategy

__all__ = ["Handover", "HandoverConfig"]


@dataclass(frozen=True)
class HandoverConfig(StrategyConfig):
    strategy_name = "handover"
    primary: str = field(default="greedy", metadata={"help": "strategy until a row is switched"})
    fallback: str = field(default="sample", metadata={"help": "strategy for switched rows"})
    primary_options: dict = field(default_factory=dict, metadata={"help": "options of the primary"})
    fallback_options: dict = field(default_factory=dict, metadata={"help": "options of the fallback"})
    sticky: bool = field(default=True, metadata={"help": "a switched row stays with the fallback"})

    def validate(self) -> None:
        for role in ("primary", "fallback"):
            check(getattr(self, role) != "handover", f"handover: the {role} cannot be 'handover' itself")
            self.build(role)  # unknown names / options: clear errors now

    def build(self, role: str) -> Strategy:
        return STRATEGIES.get(getattr(self, role))(**getattr(self, f"{role}_options"))


@register_strategy("handover")
class Handover(Strategy):
    """Primary strategy, with rows handed to a fallback on SWITCH verdicts."""

    Config = HandoverConfig
    uses_generator = True

    def __init__(self, config: HandoverConfig | None = None, **options):
        super().__init__(config, **options)
        self.primary, self.fallback = self.config.build("primary"), self.config.build("fallback")

    @property
    def compactable(self) -> bool:  # finished rows may leave where both strategies allow it
        return bool(self.primary.compactable and self.fallback.compactable)

    def keep_rows(self, state: DecodeState, index: torch.Tensor) -> None:
        self.primary.keep_rows(state, index)  # state.extra["switch"] moves with the state's rows
        self.fallback.keep_rows(state, index)

    def init(self, state: DecodeState) -> DecodeState:
        rows = state.rows
        state = self.fallback.init(self.primary.init(state))
        check(state.rows == rows, "handover: primary and fallback must keep one row per prompt")
        state.extra["switch"] = torch.zeros_like(state.done)  # [rows]
        state.extra["stat_handed_over"] = torch.zeros((), dtype=torch.long, device=state.done.device)
        return state

    def step(self, state: DecodeState) -> StepOutput:
        handed = state.extra["switch"] & ~state.done  # [rows]
        if not self.config.sticky:
            state.extra["switch"] = torch.zeros_like(state.done)
        if not bool(handed.any()):
            return self.primary.step(state)
        state.extra["stat_handed_over"] = state.extra["stat_handed_over"] + handed.sum()
        if bool(handed.all()):
            return self.fallback.step(state)
        a, b = self.primary.step(state), self.fallback.step(state)  # the second reuses the advance
        if a.tokens.shape != b.tokens.shape:
            raise ValueError("handover: primary and fallback must add the same number of tokens per step")
        pick = handed[:, None]  # [rows, 1]
        logits = None
        if a.logits is not None and b.logits is not None:
            logits = torch.where(pick[..., None], b.logits, a.logits)  # [rows, n, V]
        return StepOutput(torch.where(pick, b.tokens, a.tokens), torch.where(handed, b.count, a.count),
                          torch.where(pick, b.logprobs, a.logprobs), logits)
