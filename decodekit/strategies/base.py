"""The Strategy protocol: token selection and whatever extra forward passes a decoder needs.

A strategy is constructed from its frozen ``Config`` and is then stateless across calls: all
per-decode data lives in the :class:`~decodekit.state.DecodeState`.

* ``init(state) -> state``: after prefill (e.g. expand rows into beams);
* ``step(state) -> StepOutput``: advance the cache with the pending tokens and choose the next ones
  (each row may gain 0..n tokens);
* ``finalize(state) -> [prompt][rank] Candidate``: assemble the returned sequences.

Capability flags are class attributes: ``graph_safe`` (the step can run inside a captured CUDA
graph), ``uses_generator`` (draws random numbers; seeded through ``state.generator``),
``lagged_stops`` (the step needs no host sync and a step over finished rows changes nothing: on
CUDA the loop then checks stops one step late, :mod:`decodekit.lag`), ``compactable`` (rows are
independent: the loop may drop finished rows from the batch, :mod:`decodekit.compaction`; a strategy
with per-row data of its own in ``state.extra`` then selects it in ``keep_rows``). A strategy whose whole step can replay from
CUDA graphs on the fast path returns a plan from ``graph_plan`` (:mod:`decodekit.fast.step_graph`).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from decodekit.config import StrategyConfig
from decodekit.state import Candidate, DecodeState, StepOutput

__all__ = ["Strategy"]


class Strategy:
    name: ClassVar[str] = "strategy"
    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    graph_safe: ClassVar[bool] = False
    uses_generator: ClassVar[bool] = False
    lagged_stops: ClassVar[bool] = False
    compactable: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig | None = None, **options):
        if config is not None and options:
            raise ValueError("pass either a config object or options, not both")
        if config is None:
            config = self.Config.from_kwargs(self.name, options)
        elif not isinstance(config, self.Config):
            raise TypeError(f"{self.name} expects a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    def init(self, state: DecodeState) -> DecodeState:
        return state

    def step(self, state: DecodeState) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def graph_plan(self, state: DecodeState, stopping, body):
        """A :class:`~decodekit.fast.step_graph.Plan` to replay this decode's steps from CUDA graphs
        (``body`` runs the loop's ordinary step function), or None (the default: not capturable)."""
        return None

    def keep_rows(self, state: DecodeState, index: torch.Tensor) -> None:
        """Finished rows leave the batch: keep rows ``index [rows']`` of the strategy's own per-row
        data in ``state.extra`` (the loop then selects the state's rows). Only for ``compactable``."""

    def finalize(self, state: DecodeState) -> list[list[Candidate]]:
        """One candidate per row; rows map one-to-one to prompts (override for beams)."""
        out: list[list[Candidate]] = [[] for _ in range(int(state.prompt_of_row.max()) + 1)]
        for r in range(state.rows):
            ids, lps = state.tokens_of(r), state.logprobs_of(r)
            out[int(state.prompt_of_row[r])].append(
                Candidate(state.lm.decode(ids), ids, lps, float(sum(lps)), state.finish[r] or "length")
            )
        return out
