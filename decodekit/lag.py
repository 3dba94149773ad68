"""The loop's "is every row done?", read on the host one step late where that is allowed.

On CUDA, ``while not state.done.all()`` makes the CPU wait for each step before it prepares the
next one, and the GPU then idles while the CPU does: a token costs GPU time + host time. Here
:meth:`StopCheck.queued` starts a non-blocking copy of ``done.all()`` into pinned host memory after
each step and records an event; :meth:`StopCheck.all_done`, at the top of the next iteration,
reads the flag of the step *before* the one just queued (waiting only for that one), so the CPU
prepares step t + 1 while the GPU runs step t and a token costs about max(GPU, host).

The price is one *idle* step after the last row is done. It changes no output: finished rows gain
no tokens (``Stopping.clip``), and the loop counts it neither in ``steps`` nor in
``forward_passes`` (its time is in ``wall_time_s``). Once ``steps >= max_new_tokens`` the rows
should all be done (a running row gains a token per step), so the latest step is checked at once
instead: decodes that end by length have no idle step.

Where (:func:`lag_allowed`): the state is on CUDA and the strategy declares ``lagged_stops`` (its
step needs no host sync, and a step over finished rows changes nothing); no monitors, stream
callback, stop strings or stopping criteria (they need host values every step, and would see the
idle step); and no row may reach the model's context (the idle step feeds one position more).
``LAG`` forces it on (also on the CPU, for any strategy: the tests prove lagged == unlagged) or off.

Example:
    >>> import decodekit.lag
    >>> decodekit.lag.LAG = True    # check stops one step late wherever it is safe (tests)  # doctest: +SKIP
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from decodekit.state import DecodeState

__all__ = ["LAG", "StopCheck", "lag_allowed"]

LAG: bool | None = None  # None: automatic (see the module docstring); True / False: force on / off


def lag_allowed(state: DecodeState, strategy, stopping, monitors: Sequence, stream) -> bool:
    """Whether the loop may read ``done`` one step late for this decode (module docstring)."""
    if LAG is False or monitors or stream is not None or stopping.stop_strings or stopping.criteria:
        return False
    if not (LAG or (state.done.is_cuda and getattr(strategy, "lagged_stops", False))):
        return False
    context = state.lm.max_length
    if context is None:
        return True
    longest = state.prompt_width - state.start + state.limit  # [rows] prompt + most new tokens
    return int(longest.max()) < context  # one host sync per decode


@dataclass
class _Flag:
    """``done.all()`` after one step, on its way to the host."""

    value: torch.Tensor  # [] bool: a pinned host buffer on CUDA
    event: torch.cuda.Event | None  # recorded after the copy (CUDA)
    passes: int  # lm.forward_passes once the step was queued

    def read(self) -> bool:
        if self.event is not None:
            self.event.synchronize()  # waits for that step only
        return bool(self.value)


class StopCheck:
    """Answers ``all_done`` at once, or one step late when ``lagged`` (module docstring)."""

    def __init__(self, state: DecodeState, lagged: bool):
        self.lagged = lagged
        self.max_new_tokens = state.logprobs.shape[1]
        self.device = state.done.device
        self.flags: deque[_Flag] = deque()  # the last steps' flags, oldest first (at most 2)
        self.idle_steps = 0  # 1 once the last step turned out to be idle
        self.idle_passes = 0  # forward passes of that idle step
        self.finished: int | None = None  # rows done at the last unlagged check (None: none yet)
        cuda = lagged and self.device.type == "cuda"
        # two pinned buffers, alternated: one is read while the next step's copy goes to the other
        self._buffers = [torch.empty((), dtype=torch.bool, pin_memory=True) for _ in range(2)] if cuda else []
        self._events = [torch.cuda.Event() for _ in range(2)] if cuda else []
        self._turn = 0

    def all_done(self, state: DecodeState) -> bool:
        """Whether the loop stops now: every row was done before the step just queued."""
        if not self.lagged or not self.flags:
            self.finished = int(state.done.sum())  # the one host read; also for decodekit.compaction
            return self.finished == state.rows
        if len(self.flags) == 2:  # else the step before the queued one is the start, checked at once
            older = self.flags.popleft()
            if older.read():  # the step queued since was idle
                self.idle_steps, self.idle_passes = 1, state.lm.forward_passes - older.passes
                return True
        if state.steps >= self.max_new_tokens:  # the rows should all be done: check the latest step
            return self.flags.pop().read()
        return False

    def queued(self, state: DecodeState) -> None:
        """After a step: send ``done.all()`` towards the host without waiting for it."""
        if not self.lagged:
            return
        done = state.done.all()  # [] bool on the device
        if not self._buffers:  # CPU (forced): the value is already there
            self.flags.append(_Flag(done, None, state.lm.forward_passes))
            return
        value, event = self._buffers[self._turn], self._events[self._turn]  # free: see all_done
        value.copy_(done, non_blocking=True)
        event.record(torch.cuda.current_stream(self.device))
        self.flags.append(_Flag(value, event, state.lm.forward_passes))
        self._turn ^= 1
