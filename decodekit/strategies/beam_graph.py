"""Beam search's whole step with nothing read on the host: a :class:`~decodekit.fast.step_graph.Plan`.

The ordinary beam step (:class:`~decodekit.strategies.beam.Beam`, :mod:`~decodekit.strategies.beam_core`)
reads the host several times a step: whether the loop stopped a beam, whether any candidate
finishes, whether any row moves, and whether a unit closed. On a GPU each read stalls the host
until the step's kernels have run, so a beam step cost several times a greedy one. This plan runs
the same step with every decision on the device, so the loop replays it from CUDA graphs
(:mod:`decodekit.fast.step_graph`):

* candidates are always offered to the finished hypotheses (none eligible: nothing changes);
* :func:`~.beam_core.assign_rows` places the new beams on the device (the first beam extending a
  row stays in it; the others take the unit's rows no beam extends), as the ordinary step does;
* the rows that change are copied in place: ``ids``, ``logprobs`` and the KV cache (a Triton kernel
  that copies only moved rows up to the current column where Triton runs,
  :mod:`decodekit.fast.row_copy`); masks, lengths and limits are equal within a unit and stay;
* the length normaliser ``(generated length) ** length_penalty`` comes from a step counter on the
  device, with the same float bits as the host number (:func:`~.beam_hyps.divide`);
* closed units mark their rows done through ``DecodeState.mark_done`` (reason ``"beam_done"``).

Tokens, log-probs and scores equal the ordinary step's. It applies where the loop checks stops one
step late (CUDA) and no step needs the host: beam search and beam sampling without repetition
penalty or no-repeat n-grams, without stop strings, stopping criteria or the caller's processors.

Example:
    >>> lm = decodekit.load(device="cuda", dtype="bfloat16")                          # doctest: +SKIP
    >>> decodekit.generate(lm, "Translate: cheese", "beam", num_beams=4, max_new_tokens=32)  # doctest: +SKIP
    >>> lm.fast.graph_steps          # beam steps replayed whole from graphs               # doctest: +SKIP
    31
"""

from __future__ import annotations

import torch

from decodekit.state import FINISH_CODES, DecodeState, StepOutput
from decodekit.strategies import beam_core

__all__ = ["BeamPlan"]

_BEAM_DONE = FINISH_CODES.index("beam_done")


class BeamPlan:
    """Beam search's step from graphs: one new column per row (module docstring).

    Args:
        strategy: the :class:`~decodekit.strategies.beam.Beam` (no penalties).
        state: the decode's state after ``init`` (its beams in ``state.extra["beams"]``).
        stopping: the loop's stopping rules (EOS and length only).
    """

    width = 1

    def __init__(self, strategy, state: DecodeState, stopping):
        self.strategy, self.stopping = strategy, stopping
        self.steps = torch.zeros((), dtype=torch.long, device=state.done.device)  # [] steps taken

    def tracked(self, state: DecodeState) -> list:
        """Objects whose tensors the step replaces (copied back into place after each step)."""
        beams: beam_core.Beams = state.extra["beams"]
        return [beams, beams.hyps]

    def feed(self, state: DecodeState) -> tuple[torch.Tensor, torch.Tensor]:
        self.steps.fill_(state.steps)
        return state.pending[:, None], torch.ones_like(state.pending)[:, None]

    def tail(self, state: DecodeState, logits: torch.Tensor, ids_in: torch.Tensor, write: torch.Tensor,
             mask: torch.Tensor) -> None:
        n = state.rows
        state.next_logits = logits[:, -1]  # [rows, vocab]
        state.pending = None  # fed by the forward just replayed
        out = self.stopping.clip(state, self._commit(state, self.strategy.select(state), write))
        state.append(out)
        self.stopping.update(state)
        self.steps.add_(1)
        ids_in[:n, 0].copy_(state.pending)
        write.add_(1)
        mask.index_fill_(1, write, 1)

    def _commit(self, state: DecodeState, sel: beam_core.Selection, write: torch.Tensor) -> StepOutput:
        """``beam_core.commit`` without host reads (module docstring); ``write [1]``: this step's column."""
        beams: beam_core.Beams = state.extra["beams"]
        closed = beams.closed  # [units] before this step
        # every live row holds `steps` generated tokens: (steps + 1) ** length_penalty, rounded from
        # float64 as the host's Python number is
        length = (self.steps + 1).double() ** beams.settings.length_penalty  # []
        denominator = length.to(beams.hyps.score.dtype)
        beam_core.offer(state, beams, sel, beam_core.eligible(beams, sel, closed), denominator)
        parent, token = beam_core.close(beams, sel, closed, denominator)
        dest, index = beam_core.assign_rows(beams.rows_of, parent)
        _move_rows(state, index, write + 1)
        beams.rows_of = dest
        newly = beams.closed[beams.unit_of_row] & ~state.done  # [rows]
        state.mark_done(newly, torch.full_like(state.n_new, _BEAM_DONE))
        return beam_core.output(state, beams, sel, token)


def _move_rows(state: DecodeState, index: torch.Tensor, end: torch.Tensor) -> None:
    """Row i becomes old row ``index[i]`` in place for what differs between a unit's beams: tokens,
    log-probs, traces and the cache's first ``end[0]`` columns (no row that is copied is overwritten).
    ``next_logits`` stays in the old order: nothing reads it after the step (no monitors here)."""
    for t in (state.ids, state.logprobs, *state.traces.values()):  # [rows, ...]
        t.copy_(t.index_select(0, index))
    state.cache.permute_rows(index, end)
