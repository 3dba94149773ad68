"""One strategy run over a prompt set, in batches: the results that compare's columns read.

Besides the strategy, each batch decodes with the monitors compare was given (``--monitor``), a
token counter that tells how many tokens those monitors watched (every decoded row, beams
included) when there are any, and the entropy recorder when band metrics or plots need traces
(see :mod:`decodekit.cli.entropy`). None of these acts unless the user's monitors do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import decodekit
from decodekit.cli.entropy import DEFAULT_WIDTH, BandZone, best_traces, recorder
from decodekit.cli.specs import Spec
from decodekit.state import Candidate, Flag, Generation
from decodekit.strategies.base import Strategy

__all__ = ["StrategyRun", "TokenCount", "run_strategy", "batches"]


@dataclass
class StrategyRun:
    """A strategy's generations over the prompt set: one :class:`Generation` per batch, in order."""

    spec: Spec
    strategy: Strategy
    seed: int | None = None
    generations: list[Generation] = field(default_factory=list)
    monitors: tuple[Any, ...] = ()  # the user's monitors, given to every batch
    record: bool = False  # also trace the model's entropy (band metrics, plots)
    zone: BandZone | None = None  # the entropy band zone the band columns measure against
    monitored_tokens: int = 0  # tokens the monitors watched (all rows, all batches)

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

    @property
    def returns_several(self) -> bool:
        """Whether some prompt got more than one sequence back."""
        return any(len(cands) > 1 for cands in self.candidates)

    @property
    def candidate_ids(self) -> list[list[list[int]]]:
        """``[prompt][rank]`` token ids of every returned sequence."""
        return [[c.token_ids for c in cands] for cands in self.candidates]

    def prompt_flags(self) -> list[list[Flag]]:
        """``[prompt]`` the flags the monitors raised on each prompt (``flag.prompt`` is per batch)."""
        out: list[list[Flag]] = []
        for gen in self.generations:
            start = len(out)
            out.extend([] for _ in gen.candidates)
            for f in gen.flags:
                out[start + f.prompt].append(f)
        return out

    def monitor_names(self) -> list[str]:
        """The names the user's monitors raise flags under, in order, each once."""
        return list(dict.fromkeys(str(getattr(m, "name", type(m).__name__)) for m in self.monitors))

    def flags_per_100(self, name: str) -> float | None:
        """Flags raised by monitor ``name`` per 100 watched tokens (None without monitors)."""
        if not self.monitors or self.monitored_tokens == 0:
            return None
        count = sum(f.monitor == name for gen in self.generations for f in gen.flags)
        return 100.0 * count / self.monitored_tokens

    def entropy_traces(self) -> list[list[float]] | None:
        """``[prompt][position]`` smoothed entropy of each best sequence (None: not recorded)."""
        if not self.record:
            return None
        return best_traces(self.generations, self.zone.width if self.zone else DEFAULT_WIDTH)

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
        counter = TokenCount() if run.monitors else None
        watch = [*run.monitors, *([counter] if counter else []), *([recorder()] if run.record else [])]
        gen = decodekit.generate(lm, [prompts[i] for i in idx], run.strategy, monitors=watch,
                                 max_new_tokens=max_new_tokens, seed=seed, chat=chat)
        run.generations.append(gen)
        if counter is not None:
            run.monitored_tokens += counter.value
        if on_batch is not None:
            on_batch(b)
    return run


class TokenCount:
    """A monitor that never acts: counts the tokens every row gains, i.e. the tokens the other
    monitors watch (the count stays on the device until read).

    >>> counter = TokenCount()        # decodekit.generate(..., monitors=[..., counter])
    >>> counter.value
    0
    """

    name = "token_count"

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None  # 0-d long

    def observe(self, state, out) -> None:
        step = out.count.sum()  # 0-d long
        self.total = step if self.total is None else self.total + step

    @property
    def value(self) -> int:
        return 0 if self.total is None else int(self.total)
