"""Non-termination guard: a long row with no EOS whose EOS probability keeps falling.

Fires once a row has ``>= min_tokens`` new tokens and the least-squares slope of its log EOS
probability over the last 16 tokens (signal ``eos_trend``) is ``<= max_slope`` nats per token: the
model is moving away from ever ending (a fallback behaviour of Ivgi et al. 2024, arXiv:2407.06071).

Example:
    >>> guard = NonTermination(min_tokens=64, max_slope=-0.02, action="stop")
"""

from __future__ import annotations

from dataclasses import dataclass

from decodekit.config import StrategyConfig, check
from decodekit.monitors.base import SignalMonitor, Verdict, action_code
from decodekit.registry import register_monitor

__all__ = ["NonTermination"]


@register_monitor("nontermination")
@dataclass(frozen=True)
class NonTermination(SignalMonitor, StrategyConfig):
    strategy_name = "non-termination guard"
    requires = ("eos_logprob", "eos_trend")
    min_tokens: int = 64
    max_slope: float = -0.02
    action: str = "flag"

    def validate(self) -> None:
        check(self.min_tokens >= 1, f"non-termination guard: min_tokens must be >= 1, got {self.min_tokens}")
        check(self.action in ("flag", "stop", "switch"),
              f"non-termination guard: action must be 'flag', 'stop' or 'switch', got {self.action!r}")

    def check(self, signals) -> Verdict:
        long = signals.state.n_new >= self.min_tokens  # [rows]
        falling = signals.last("eos_trend") <= self.max_slope  # [rows]
        return self.verdict(signals, long & falling, action_code(self.action), 0,
                            f"no EOS after {self.min_tokens} tokens, EOS log-prob slope <= {self.max_slope}")
