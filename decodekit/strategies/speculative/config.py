"""Frozen configs of the draft-then-verify strategies.

:class:`DraftVerifyConfig` holds what every proposer shares: the draft length and its schedule, the
verification (greedy, or speculative sampling with ``do_sample=True``) and the processors, applied
identically to target and draft distributions. Sampling options without ``do_sample=True`` are an
error, not silently ignored.

Example:
    >>> PromptLookupConfig(draft_tokens=8, max_ngram=2).max_ngram
    2
    >>> DraftVerifyConfig(temperature=0.7)
    Traceback (most recent call last):
    ...
    ValueError: draft_verify: temperature=0.7 only applies when sampling: pass do_sample=True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from decodekit.config import StrategyConfig, check
from decodekit.processors import build_processors

__all__ = ["DraftVerifyConfig", "PromptLookupConfig", "SpeculativeConfig", "SelfSpeculativeConfig"]

_SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}


@dataclass(frozen=True)
class DraftVerifyConfig(StrategyConfig):
    strategy_name = "draft_verify"
    draft_tokens: int = field(default=4, metadata={"help": "draft tokens per verify (the start value when adaptive)"})
    adaptive: bool = field(default=True, metadata={"help": "adapt the draft length (draft_policy); False = always draft_tokens"})
    max_draft_tokens: int = field(default=16, metadata={"help": "upper bound of the adaptive draft length"})
    draft_policy: Literal["schedule", "cost", "auto"] = field(default="schedule", metadata={
        "help": "schedule: grow by 2 when a row accepts all, else shrink by 1; cost: draft max_draft_tokens, "
                "verify the width that maximises expected tokens per verify cost (cheap proposers only); auto: "
                "graph_draft_tokens always where whole steps replay from CUDA graphs, else cost"})
    graph_draft_tokens: int | None = field(default=None, metadata={
        "help": "draft_policy=auto: drafts verified every step where whole steps replay from CUDA graphs "
                "(None: as many as keep the verify forward on the decode step's kernels if 3 or more, "
                "at most 4 -- 3 for a small model at batch 1 -- else 4)"})
    verify_cost: tuple = field(default=(), metadata={
        "help": "(row, overhead, token): verify pass cost in one-token passes (empty = the device's default)"})
    do_sample: bool = field(default=False, metadata={"help": "speculative sampling (lossless); False = greedy verification"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (> 0), on target and draft"})
    top_k: int = field(default=0, metadata={"help": "keep the k most likely tokens (0 = off), on target and draft"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus mass in (0, 1], on target and draft"})
    min_p: float = field(default=0.0, metadata={"help": "drop tokens below min_p * max prob, in [0, 1]"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "penalise tokens already in the text (> 0)"})
    no_repeat_ngram_size: int = field(default=0, metadata={"help": "never repeat an n-gram of this size (0 = off)"})

    def validate(self) -> None:
        name = self.strategy_name
        check(self.draft_tokens >= 1, f"{name}: draft_tokens must be >= 1, got {self.draft_tokens}")
        check(self.graph_draft_tokens is None or self.graph_draft_tokens >= 1,
              f"{name}: graph_draft_tokens must be None or >= 1, got {self.graph_draft_tokens}")
        check(self.draft_policy in ("schedule", "cost", "auto"),
              f"{name}: draft_policy must be 'schedule', 'cost' or 'auto', got {self.draft_policy!r}")
        check(self.max_draft_tokens >= self.draft_tokens,
              f"{name}: max_draft_tokens ({self.max_draft_tokens}) must be >= draft_tokens ({self.draft_tokens})")
        check(len(self.verify_cost) in (0, 3) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                        and v >= 0 for v in self.verify_cost),
              f"{name}: verify_cost must be () or three numbers >= 0 (row, overhead, token), got {self.verify_cost!r}")
        if not self.do_sample:
            for key, default in _SAMPLING_DEFAULTS.items():
                value = getattr(self, key)
                check(value == default, f"{name}: {key}={value} only applies when sampling: pass do_sample=True")
        try:
            build_processors(**self.processor_options())
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None

    def processor_options(self) -> dict:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "min_p": self.min_p, "repetition_penalty": self.repetition_penalty,
                "no_repeat_ngram_size": self.no_repeat_ngram_size}


@dataclass(frozen=True)
class PromptLookupConfig(DraftVerifyConfig):
    strategy_name = "prompt_lookup"
    draft_tokens: int = field(default=8, metadata={"help": "tokens copied after an n-gram match (start value when adaptive)"})
    max_draft_tokens: int = field(default=16, metadata={"help": "upper bound of the adaptive draft length"})
    draft_policy: Literal["schedule", "cost", "auto"] = field(default="auto", metadata={
        "help": "auto (default): graph_draft_tokens every step where whole steps replay from CUDA graphs "
                "(greedy verification on a GPU), else cost; cost: verify the width that maximises expected "
                "tokens per verify cost; schedule: grow by 2 when a row accepts all, else shrink by 1 "
                "(adaptive=False: always draft_tokens, whatever the policy)"})
    max_ngram: int = field(default=3, metadata={"help": "longest n-gram matched against the text (tried first)"})
    min_ngram: int = field(default=1, metadata={"help": "shortest n-gram matched"})
    num_candidates: int = field(default=1, metadata={
        "help": "continuations from different matches verified at once as a token tree (1 = a chain)"})

    def validate(self) -> None:
        super().validate()
        check(self.min_ngram >= 1, f"prompt_lookup: min_ngram must be >= 1, got {self.min_ngram}")
        check(1 <= self.num_candidates <= 16,
              f"prompt_lookup: num_candidates must be in 1..16, got {self.num_candidates}")
        check(self.max_ngram >= self.min_ngram,
              f"prompt_lookup: max_ngram ({self.max_ngram}) must be >= min_ngram ({self.min_ngram})")


@dataclass(frozen=True)
class SpeculativeConfig(DraftVerifyConfig):
    strategy_name = "speculative"
    draft: Any = field(default=None, metadata={"help": "draft model with the target's tokenizer: an LM, or a local model path"})

    def validate(self) -> None:
        super().validate()
        check(self.draft is not None,
              "speculative: pass draft=<LM or local model path> (same tokenizer as the target); "
              "for a draft-free variant use strategy='prompt_lookup' or 'self_speculative'")
        from decodekit.lm import LM  # local: decodekit.lm imports model code

        check(isinstance(self.draft, (LM, str)) or hasattr(self.draft, "__fspath__"),
              f"speculative: draft must be an LM (decodekit.load) or a local model path, got {type(self.draft).__name__}")


@dataclass(frozen=True)
class SelfSpeculativeConfig(DraftVerifyConfig):
    strategy_name = "self_speculative"
    draft_layers: int = field(default=0, metadata={"help": "target layers the draft runs before the head (0 = a quarter)"})

    def validate(self) -> None:
        super().validate()
        check(self.draft_layers >= 0, f"self_speculative: draft_layers must be >= 0, got {self.draft_layers}")
