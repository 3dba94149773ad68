"""Finished hypotheses of beam search: a fixed number of slots per search unit, best kept.

A *search unit* is one prompt (beam search) or one group of one prompt (diverse beam search). Each
unit keeps at most ``cap`` finished hypotheses (``cap`` = its number of beams), scored by
``sum of log-probs / length ** length_penalty`` where ``length`` counts the generated tokens,
EOS included, as transformers does. Everything is a tensor over units, so a step never loops over
prompts in Python.

Two flavours reproduce two transformers implementations exactly:

* ``"v5"``: transformers 5.x ``_beam_search`` (vectorised): scores in float32; the early-stopping
  bound is computed from the best *running* beam after the step.
* ``"v4"``: transformers <= 4.56 ``BeamSearchScorer`` / ``BeamHypotheses`` (used by its group
  beam search): scores in float64 (Python floats there); the bound is computed from the best
  *candidate* of the step, whether it ended or not.

Example:
    >>> import torch
    >>> h = Hypotheses.empty(units=1, cap=2, max_new=3, flavour="v5", device=torch.device("cpu"))
    >>> ids = torch.tensor([[[5, 2, 0], [6, 7, 2]]])          # [units, k, max_new]
    >>> h.add(ids, torch.zeros(1, 2, 3), torch.tensor([[2, 3]]), torch.tensor([[-1.0, -1.2]]),
    ...       torch.tensor([[True, True]]), torch.tensor([[1, 1]]), denominator=1.0)
    >>> h.score.tolist(), h.finished.tolist()
    ([[-1.0, -1.2000000476837158]], [[True, True]])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Hypotheses", "REASONS", "reason_code", "divide"]

# finish reasons of hypotheses; index = code stored in ``Hypotheses.reason``
REASONS = ("length", "eos", "stop_string", "criteria", "monitor", "step_limit")
_NOT_FINISHED = -1.0e9  # transformers' score of an empty slot and its penalty for a non-candidate


def divide(x: torch.Tensor, d: float | torch.Tensor) -> torch.Tensor:
    """``x / d`` for a Python number ``d``; for ``d`` a 0-d tensor of ``x``'s dtype on its device that
    holds such a number (the step replayed from a graph, :mod:`~decodekit.strategies.beam_graph`,
    cannot read a length on the host), the same bits. On CUDA, dividing by a Python number multiplies
    by its reciprocal in ``x``'s precision (as in transformers' beam search); elsewhere it divides.
    Any other tensor ``d`` divides."""
    if isinstance(d, torch.Tensor) and d.dim() == 0 and x.is_cuda:
        return x * torch.reciprocal(d)
    return x / d


def reason_code(finish: str) -> int:
    """Code of a row's finish reason (unknown reasons count as "criteria")."""
    return REASONS.index(finish) if finish in REASONS else REASONS.index("criteria")


@dataclass
class Hypotheses:
    """Up to ``cap`` finished hypotheses per unit, plus whether each unit can still improve."""

    ids: torch.Tensor  # [units, cap, max_new] long: generated tokens (valid up to length)
    logprobs: torch.Tensor  # [units, cap, max_new] float32: model log-prob of each token
    length: torch.Tensor  # [units, cap] long: generated tokens, EOS included
    score: torch.Tensor  # [units, cap] float32 (v5) / float64 (v4): length-normalised score
    finished: torch.Tensor  # [units, cap] bool: the slot holds a hypothesis
    reason: torch.Tensor  # [units, cap] long: index into REASONS
    open: torch.Tensor  # [units] bool: a running beam may still beat the worst kept hypothesis
    flavour: str = "v5"

    @staticmethod
    def empty(units: int, cap: int, max_new: int, flavour: str, device: torch.device) -> "Hypotheses":
        dtype = torch.float64 if flavour == "v4" else torch.float32
        return Hypotheses(
            ids=torch.zeros(units, cap, max_new, dtype=torch.long, device=device),
            logprobs=torch.zeros(units, cap, max_new, device=device),
            length=torch.zeros(units, cap, dtype=torch.long, device=device),
            score=torch.full((units, cap), _NOT_FINISHED, dtype=dtype, device=device),
            finished=torch.zeros(units, cap, dtype=torch.bool, device=device),
            reason=torch.zeros(units, cap, dtype=torch.long, device=device),
            open=torch.ones(units, dtype=torch.bool, device=device),
            flavour=flavour,
        )

    @property
    def cap(self) -> int:
        return self.score.shape[1]

    @property
    def full(self) -> torch.Tensor:  # [units] bool: every slot holds a hypothesis
        return self.finished.all(1)

    def add(
        self,
        ids: torch.Tensor,  # [units, k, max_new] long
        logprobs: torch.Tensor,  # [units, k, max_new] float32
        length: torch.Tensor,  # [units, k] long
        raw: torch.Tensor,  # [units, k] float32: sum of (processed) log-probs
        eligible: torch.Tensor,  # [units, k] bool: candidates that may enter
        reason: torch.Tensor,  # [units, k] long
        denominator: float | torch.Tensor,  # generated length ** length_penalty (see divide)
    ) -> None:
        """Offer ``k`` candidates per unit; keep the ``cap`` best of old and new (ties: old first)."""
        score = divide(raw.to(self.score.dtype), denominator)  # [units, k]
        score = torch.where(eligible, score, score + _NOT_FINISHED)  # [units, k]
        merged = torch.cat([self.score, score], 1)  # [units, cap + k]
        top = torch.topk(merged, self.cap, dim=1).indices  # [units, cap]
        take = top[..., None].expand(-1, -1, self.ids.shape[2])  # [units, cap, max_new]
        self.ids = torch.cat([self.ids, ids], 1).gather(1, take)
        self.logprobs = torch.cat([self.logprobs, logprobs], 1).gather(1, take)
        self.length = torch.cat([self.length, length], 1).gather(1, top)
        self.score = merged.gather(1, top)
        self.finished = torch.cat([self.finished, eligible], 1).gather(1, top)
        self.reason = torch.cat([self.reason, reason], 1).gather(1, top)

    def update_open(self, best: torch.Tensor, denominator: float | torch.Tensor) -> None:
        """Close units whose best possible score cannot beat their worst kept hypothesis
        (transformers' early-stopping heuristic). ``best [units]`` float32; ``denominator`` a python
        float, a 0-d tensor standing for one (:func:`divide`) or a ``[units]`` tensor of the scores' dtype."""
        if self.flavour == "v4":  # BeamHypotheses.is_done: worst >= best / denominator, in float64
            highest = divide(best.double(), denominator)  # [units]
            done = self.full & (self.score.min(1).values >= highest)  # [units]
            self.open = self.open & ~done
            return
        bound = divide(best, denominator)  # [units] float32
        worst = torch.where(self.finished, self.score.min(1, keepdim=True).values, _NOT_FINISHED)
        better = (bound[:, None] > worst).any(1)  # [units]: [units, cap] compared
        self.open = self.open & better
