"""One strategy run over a prompt set, in batches: the results that compare's columns read."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import decodekit
from decodekit.cli.specs import Spec
from decodekit.state import Candidate, Generation
from decodekit.strategies.base import Strategy

__all__ = ["StrategyRun", "run_strategy", "batches"]


@dataclass
class StrategyRun:
    """A strategy's generations over the prompt set: one :class:`Generation` per batch, in order."""

    spec: Spec
    strategy: Strategy
    seed: int | None = None
    generations: list[Generation] = field(default_factory=list)

    @property
    def candidates(self) -> list[list[Candidate]]:
        """``[prompt][rank]``: every returned sequence of every prompt, best first."""
        return [cands for gen in self.generations for cands in gen.candidates]

    @property
    def best(self) -> list[Candidate]:
        """The best sequence of each prompt."""
        return [cands[0] for cands in self.candidates]

    @property
    def token_ids(self) -> list[list[int]]:
        return [c.token_ids for c in self.best]

    @property
    def logprobs(self) -> list[list[float]]:
        return [c.logprobs for c in self.best]

    @property
    def new_tokens(self) -> int:
        return sum(len(ids) for ids in self.token_ids)

    @property
    def wall_time_s(self) -> float:
        return sum(gen.stats.wall_time_s for gen in self.generations)

    @property
    def tokens_per_s(self) -> float:
        """All new tokens over all wall time (prefill included), across batches."""
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else math.nan

    def extra_keys(self) -> list[str]:
        """Strategy-specific statistic names (``Generation.stats.extra``) seen in any batch."""
        keys: dict[str, None] = {}
        for gen in self.generations:
            keys.update(dict.fromkeys(gen.stats.extra))
        return list(keys)

    def extra_mean(self, key: str) -> float | None:
        """Mean of ``stats.extra[key]`` over the batches that report it (None if none do)."""
        values = [gen.stats.extra[key] for gen in self.generations if key in gen.stats.extra]
        return sum(values) / len(values) if values else None

    def stats(self) -> dict[str, float]:
        """Totals over the batches."""
        total = lambda name: sum(getattr(gen.stats, name) for gen in self.generations)  # noqa: E731
        return {"batches": len(self.generations), "forward_passes": total("forward_passes"),
                "steps": total("steps"), "new_tokens": self.new_tokens,
                "prefill_time_s": total("prefill_time_s"), "wall_time_s": self.wall_time_s,
                "tokens_per_s": self.tokens_per_s}


def batches(n: int, size: int) -> list[range]:
    """Index ranges of consecutive batches of at most ``size`` over ``n`` items."""
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def run_strategy(
    lm: decodekit.LM,
    run: StrategyRun,
    prompts: list,
    *,
    batch_size: int,
    max_new_tokens: int,
    chat: bool | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> StrategyRun:
    """Generate ``prompts`` in batches into ``run``. Batch ``b`` is seeded with ``run.seed + b``."""
    for b, idx in enumerate(batches(len(prompts), batch_size)):
        seed = None if run.seed is None else run.seed + b
        gen = decodekit.generate(lm, [prompts[i] for i in idx], run.strategy,
                                 max_new_tokens=max_new_tokens, seed=seed, chat=chat)
        run.generations.append(gen)
        if on_batch is not None:
            on_batch(b)
    return run
