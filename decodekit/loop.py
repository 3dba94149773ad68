"""The generation loop: prefill, ``strategy.step`` until every row stops, monitors, streaming, result.

It never looks at which strategy runs: everything decoder-specific happens in ``init``, ``step`` and
``finalize``. At most one host sync per step (``done.all()``), plus whatever stop strings and acting
monitors need; on CUDA, where it is safe, that one reads the step before the one just queued, so
the host prepares a step while the GPU runs the previous one (:mod:`decodekit.lag`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from decodekit.compaction import Compaction
from decodekit.fast.step_graph import StepGraph
from decodekit.lag import StopCheck, lag_allowed
from decodekit.monitors.base import ACTIONS, OK, ROLLBACK, STOP, Monitor, Verdict
from decodekit.monitors.runner import MonitorRunner
from decodekit.state import DecodeState, Flag, Generation, Stats, StepOutput
from decodekit.stopping import Stopping
from decodekit.strategies.base import Strategy
from decodekit.streaming import Stream
from decodekit.transfer import to_device

__all__ = ["run", "prefill"]


def run(
    lm,
    strategy: Strategy,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    stopping: Stopping,
    monitors: Sequence[Monitor] = (),
    stream: Stream | None = None,
    generator: torch.Generator | None = None,
    user_processors: tuple = (),
) -> Generation:
    """Decode ``prompts`` (token id lists) with ``strategy``; see :func:`decodekit.generate`."""
    t0, passes0 = time.perf_counter(), lm.forward_passes
    runner = MonitorRunner(monitors)  # resolves the signals the monitors require, once
    state = prefill(lm, prompts, max_new_tokens, generator, user_processors)
    state.stopping = stopping
    t_prefill = time.perf_counter() - t0
    state = strategy.init(state)
    flags: list[Flag] = []
    max_steps = 8 * max_new_tokens + 64  # guards against monitors that roll back forever
    check = StopCheck(state, lag_allowed(state, strategy, stopping, monitors, stream))
    rows = Compaction(state, strategy, runner, stopping, check.lagged)
    graphs = StepGraph.for_decode(state, strategy, stopping, check.lagged, lambda: _step(state, strategy, stopping))
    while not check.all_done(state):  # on CUDA possibly one step late (decodekit.lag)
        rows.leave(state, check.finished)  # finished rows leave the batch (decodekit.compaction)
        out = None
        if graphs is None or not graphs.step(state):  # the whole step from CUDA graphs, where it can
            out = _step(state, strategy, stopping)
        state.steps += 1
        for monitor, verdict in runner.observe(state, out):  # each required signal computed once
            _act(state, monitor, verdict, flags)
        if stream is not None:
            stream.update(state)
        if state.steps >= max_steps:
            _stop_all(state, "step_limit")
        check.queued(state)
    state.steps -= check.idle_steps  # a lagged check's idle last step (no tokens) is not counted
    rows.restore(state)  # every row back, in the original order
    candidates = strategy.finalize(state)
    if stream is not None:
        stream.close(state, candidates)
    stats = Stats(
        forward_passes=lm.forward_passes - passes0 - check.idle_passes,
        new_tokens=sum(len(c[0].token_ids) for c in candidates),
        steps=state.steps,
        prefill_time_s=t_prefill,
        wall_time_s=time.perf_counter() - t0,
        extra={k: float(v) for k, v in state.extra.items() if k.startswith("stat_")},
    )
    stats.extra = {k[5:]: v for k, v in stats.extra.items()}
    return Generation(strategy.name, candidates, stats, flags, runner.traces(state))


def _step(state: DecodeState, strategy: Strategy, stopping: Stopping) -> StepOutput:
    """One step: the strategy's tokens, cut at EOS / length, appended; rows that finished marked."""
    out = stopping.clip(state, strategy.step(state))
    state.append(out)
    stopping.update(state)
    return out


def prefill(lm, prompts: list[list[int]], max_new_tokens: int, generator, user_processors) -> DecodeState:
    """Run the prompts through the model once and set up the decode state."""
    enc = lm.encode(prompts)
    rows, width = enc.ids.shape
    cache = lm.new_cache()
    out = lm.forward(enc.ids, cache, enc.mask, last_only=True)
    device = enc.ids.device
    ids = torch.full((rows, width + max_new_tokens), lm.pad_token_id, dtype=torch.long, device=device)
    ids[:, :width] = enc.ids
    lengths = to_device(enc.lengths, device)  # [rows]
    room = (lm.max_length - lengths) if lm.max_length else torch.full_like(lengths, max_new_tokens)
    return DecodeState(
        lm=lm,
        cache=cache,
        attention_mask=enc.mask,
        next_logits=out.logits[:, -1],
        ids=ids,
        start=width - lengths,
        prompt_width=width,
        n_new=torch.zeros(rows, dtype=torch.long, device=device),
        limit=room.clamp(max=max_new_tokens),
        logprobs=torch.zeros(rows, max_new_tokens, device=device),
        done=torch.zeros(rows, dtype=torch.bool, device=device),
        finish=[""] * rows,
        prompt_of_row=torch.arange(rows, device=device),
        generator=generator,
        user_processors=tuple(user_processors),
    )


def _act(state: DecodeState, monitor: Monitor, verdict: Verdict | None, flags: list[Flag]) -> None:
    """Apply one monitor's verdict: record flags, stop rows, roll rows back."""
    if verdict is None or not bool((verdict.action != OK).any()):
        return
    name = getattr(monitor, "name", type(monitor).__name__)
    action = verdict.action.tolist()
    for r, a in enumerate(action):
        if a != OK:
            flags.append(Flag(int(state.prompt_of_row[r]), state.steps, name, ACTIONS[a], verdict.detail))
    stop = (verdict.action == STOP) & ~state.done
    for r in torch.nonzero(stop).flatten().tolist():
        state.finish[r] = "monitor"
    state.done = state.done | stop
    if verdict.rollback is not None:
        state.rollback(torch.where(verdict.action == ROLLBACK, verdict.rollback, 0))


def _stop_all(state: DecodeState, reason: str) -> None:
    for r in torch.nonzero(~state.done).flatten().tolist():
        state.finish[r] = reason
    state.done = torch.ones_like(state.done)
