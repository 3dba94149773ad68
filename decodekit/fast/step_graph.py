"""StepGraph: whole loop steps -- forward, token choice, bookkeeping -- replayed from CUDA graphs.

On the fast path the model's forward is one captured graph, but the rest of a loop step (the
strategy's token choice, ``Stopping.clip``, ``DecodeState.append``, ``Stopping.update``) is tens of
small PyTorch calls, each costing host time: for a small model on a fast GPU as much as the forward
itself, and several times more for a draft-then-verify step. Where the loop checks stops one step
late (:mod:`decodekit.lag`) and the strategy's step needs no host value, the whole step can be
captured. A strategy offers that through a *plan* (:class:`Plan`): how many new cache columns a step
feeds (``width``), the first step's inputs (``feed``), and the step after the forward (``tail``),
which ends by writing the next forward's inputs on the device. Each step then replays

1. the slab's captured forward of ``width`` tokens per row, then
2. the tail, captured once per decode (run eagerly once first, as the warm-up),

two graph launches on the host. Plans: :class:`TokenPlan` (greedy and sampling without processors:
the strategy's own ``step``, then clip / append / update as one kernel,
:mod:`decodekit.fast.token_step`, or the loop's own functions without Triton), prompt lookup with
greedy verification at a fixed width (:mod:`decodekit.strategies.speculative.graph_plan`) and beam
search (:mod:`decodekit.strategies.beam_graph`).

How the tail stays valid across replays: state fields the step *reassigns* (``n_new``, ``done``,
``pending``, ``finish_codes``, ...; also in ``state.extra`` and in objects the plan names, e.g. the
beams' scores) get fresh tensors during capture; the tail copies each back
into the tensor the field held before the step and restores the field, so every replay reads and
writes the same memory. The cache's column mask is the slab's own (``state.attention_mask`` is a
view of it after each step). If the step changes a field's shape or dtype, the decode goes on with
the ordinary loop step; if something outside replaces a field between steps, the inputs are loaded
again and the tail captured anew.

Where: a strategy whose ``graph_plan`` gives a plan, over a :class:`~decodekit.fast.cache.FastCache`
with graphs, with the lagged stop check on, once a token is pending. When the slab runs out of
columns (``width`` per step) the cache moves to one twice as large, as an ordinary forward would;
the inputs are loaded there and the tail captured again. ``FastPath(lm, step_graphs=False)`` turns it off; ``FastPath(lm, capture=False,
step_graphs=True)`` runs the same steps eagerly (tests on the CPU).

Example:
    >>> lm = decodekit.load(device="cuda", dtype="bfloat16")                     # doctest: +SKIP
    >>> decodekit.generate(lm, "Hi", max_new_tokens=64)    # steps from graphs      # doctest: +SKIP
    >>> lm.fast.graph_steps                                                       # doctest: +SKIP
    63
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Protocol

import torch

from decodekit.fast.cache import FastCache
from decodekit.fast.launch import kernel_reason
from decodekit.fast.token_step import finish_step
from decodekit.state import DecodeState
from decodekit.transfer import to_device

__all__ = ["StepGraph", "Plan", "TokenPlan", "TOKEN_STEP"]

TOKEN_STEP = True  # False: the token plan's tail runs the loop's own functions (~30 more small kernels)


class Plan(Protocol):
    """A strategy's whole step as a forward of ``width`` tokens per row plus a device-only tail."""

    width: int  # new tokens (cache columns) per row and step

    def feed(self, state: DecodeState) -> tuple[torch.Tensor, torch.Tensor]:
        """The first step's inputs: ids ``[rows, width]`` and the new columns' mask bits ``[rows,
        width]`` long (host values allowed: runs once, eagerly)."""

    def tail(self, state: DecodeState, logits: torch.Tensor, ids_in: torch.Tensor, write: torch.Tensor,
             mask: torch.Tensor) -> None:
        """The step after the forward (``logits [rows, width, vocab]``), then the next forward's
        inputs: ``ids_in [B, width]``, ``write [width]`` (advance by ``width``), the slab's ``mask
        [B, C]`` bits of the new columns. Device work only: it is captured."""

    # optional: ``tracked(state) -> list[object]``: objects besides the state and ``state.extra``
    # whose tensor attributes the tail replaces (copied back into place like the state's fields)


class TokenPlan:
    """Greedy / sampling: one token per row (the strategy's ``step`` finds the logits in place).

    With Triton on the state's device and stopping by EOS / length only, clip / append / update
    and the next inputs are one kernel (:func:`~decodekit.fast.token_step.finish_step`); else the
    loop's own step function ``body`` runs."""

    width = 1

    def __init__(self, strategy, state: DecodeState, stopping, body: Callable[[], None]):
        device = state.done.device
        self.strategy, self.body = strategy, body
        self.fused = (TOKEN_STEP and kernel_reason(device) is None
                      and not (stopping.stop_strings or stopping.criteria))
        self.eos = to_device(list(stopping.eos_token_ids), device, torch.long)  # [n_eos]

    def feed(self, state: DecodeState) -> tuple[torch.Tensor, torch.Tensor]:
        return state.pending[:, None], torch.ones_like(state.pending)[:, None]

    def tail(self, state, logits, ids_in, write, mask) -> None:
        n = state.rows
        state.next_logits = logits[:, -1]  # [rows, vocab]
        pending, state.pending = state.pending, None  # fed by the forward just replayed
        if self.fused:  # the strategy's step, then one kernel
            out = self.strategy.step(state)
            state.pending = pending  # finish_step updates it in place
            finish_step(state, out, self.eos, ids_in, write, mask)
        else:
            self.body()
            ids_in[:n, 0].copy_(state.pending)
            write.add_(1)
            mask.index_fill_(1, write, 1)


class _NotCapturable(Exception):
    """The step changed a field in a way a replay cannot repeat (shape, dtype, a new tensor)."""


class StepGraph:
    """Runs one decode's loop steps from CUDA graphs, following a :class:`Plan` (module docstring).

    Args:
        plan: the strategy's plan.
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        self.slab = None  # the slab the inputs were loaded on
        self.warm = False  # the tail ran once eagerly on these inputs (capture comes next)
        self.graph: torch.cuda.CUDAGraph | None = None
        # the tensors the tail reads and writes: (owner, name, tensor) of the state, state.extra and
        # the plan's tracked objects; and each owner's tensor names (a step must keep them)
        self.fields: list[tuple[object, str, torch.Tensor]] = []
        self.names: list[tuple[object, set[str]]] = []
        self.off = False  # the step cannot be captured: the decode uses the ordinary step

    @staticmethod
    def for_decode(state: DecodeState, strategy, stopping, lagged: bool,
                   body: Callable[[], None]) -> "StepGraph | None":
        """A StepGraph for this decode, or None where it does not apply (module docstring)."""
        cache = state.cache
        if not (lagged and isinstance(cache, FastCache) and getattr(cache.path, "step_graphs", False)):
            return None
        generator = state.generator
        if generator is not None and generator.device.type == "cuda" \
                and not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
            return None  # this torch cannot advance a generator from a graph
        make = getattr(strategy, "graph_plan", None)
        plan = make(state, stopping, body) if make is not None and not state.user_processors else None
        return None if plan is None else StepGraph(plan)

    @torch.inference_mode()  # the slab's buffers are inference tensors
    def step(self, state: DecodeState) -> bool:
        """Run one loop step from graphs; False when this step must run the ordinary way."""
        cache = state.cache
        if self.off or state.pending is None or cache._lease is None or cache.rows != state.rows:
            return False
        T = self.plan.width
        if cache.length + 2 * T > cache.slab.capacity:  # this step's columns and the next one's
            grown = max(2 * cache.slab.capacity, cache.length + 2 * T + cache.path.headroom)
            cache._move(state.rows, grown)  # as an ordinary forward would: the inputs load again
        slab = cache.slab
        if slab is not self.slab or any(_get(o, k) is not t for o, k, t in self.fields):
            self._load(state, slab)  # first step, a new slab, or a field replaced from outside
        inputs = slab._static(T)
        if slab.path.capture:
            forward = slab.graph(T)  # captured on first use, from the inputs just loaded
            forward.graph.replay()
            logits = forward.logits  # [B, T, vocab], rewritten by every replay
        else:  # the same steps, eagerly (tests)
            logits = slab._forward(inputs.ids, inputs.write, inputs.view, False, False)[0]
        n = state.rows
        if self.graph is not None:
            self.graph.replay()
        elif self.warm and slab.path.capture:
            self.graph = self._capture(state, logits[:n], inputs)
        else:
            self.warm = self._tail(state, logits[:n], inputs, strict=False)  # eagerly: the warm-up
            self.off = not self.warm
        cache.length += T
        state.lm.forward_passes += 1
        slab.path.graph_steps += 1
        state.attention_mask = slab.mask[:n, :cache.length]  # [rows, S]: the slab's mask is the truth
        return True

    def _load(self, state: DecodeState, slab) -> None:
        """Load the first forward's inputs from the state (host values allowed: once per slab)."""
        n, length, T = state.rows, state.cache.length, self.plan.width
        ids, new = self.plan.feed(state)  # [rows, T] each
        inputs = slab._static(T)
        slab.mask[:n, :length].copy_(state.attention_mask)
        slab.mask[:n, length:length + T].copy_(new)
        slab.mask[:n, length + T:] = 0  # columns past the step's own are nobody's yet
        inputs.ids[:n].copy_(ids)
        inputs.write.copy_(slab.cols[length:length + T])
        if state.finish_codes is None:  # reassigned by every step: must be a tensor from the start
            state.finish_codes = torch.zeros(n, dtype=torch.long, device=state.done.device)
        self.slab, self.warm, self.graph = slab, False, None
        tracked = getattr(self.plan, "tracked", None)
        owners = [state, state.extra, *(tracked(state) if tracked is not None else ())]
        self.names = [(o, set(_tensors(o))) for o in owners]
        self.fields = [(o, k, t) for o in owners for k, t in _tensors(o).items()]

    def _tail(self, state: DecodeState, logits: torch.Tensor, inputs, strict: bool) -> bool:
        """The plan's tail; reassigned fields are copied back into their tensors. Returns whether a
        replay could repeat it; ``strict`` raises :class:`_NotCapturable` instead (capture), else
        the fields keep the step's new tensors."""
        self.plan.tail(state, logits, inputs.ids, inputs.write, self.slab.mask)
        moved = [(o, k, old, _get(o, k)) for o, k, old in self.fields]
        if any(set(_tensors(o)) != names for o, names in self.names) \
                or not all(_same(old, new) for _, _, old, new in moved):
            if strict:
                raise _NotCapturable
            return False
        for owner, k, old, new in moved:
            if new is not old:
                old.copy_(new)
                _set(owner, k, old)
        return True

    def _capture(self, state: DecodeState, logits: torch.Tensor, inputs) -> torch.cuda.CUDAGraph | None:
        """Capture the tail and replay it (this step); None, with the step run eagerly, if it cannot."""
        graph = torch.cuda.CUDAGraph()
        generator = state.generator
        if generator is not None and generator.device.type == "cuda":
            graph.register_generator_state(generator)  # its draws advance with every replay
        collecting = gc.isenabled()
        gc.disable()  # freeing another graph or pool while capturing is not allowed
        try:
            _capture_queued(graph, self.slab.path.pool, lambda: self._tail(state, logits, inputs, strict=True))
        except _NotCapturable:  # nothing ran: put the fields back and take the step eagerly
            for owner, k, old in self.fields:
                _set(owner, k, old)
            self.off = True
            self._tail(state, logits, inputs, strict=False)
            return None
        finally:
            if collecting:
                gc.enable()
        graph.replay()
        return graph


_side_streams: dict[torch.device, torch.cuda.Stream] = {}


def _capture_queued(graph: torch.cuda.CUDAGraph, pool, body: Callable[[], None]) -> None:
    """Capture ``body`` into ``graph`` (memory from ``pool``) on a side stream, as ``torch.cuda.graph``
    does but without its explicit device synchronisation and without emptying the allocators'
    caches (it frees every cached device block, and in recent torch every pinned host block, before
    each capture -- here once per decode: the next decode's :func:`~decodekit.transfer.to_device`
    would pin memory anew). Replays are ordered on the stream that launches them. (On an H200 with torch
    2.11 the host still waited for the queued work somewhere inside the capture:
    tests/test_transfer.py measures it but does not require it.)"""
    main = torch.cuda.current_stream()
    side = _side_streams.get(main.device)
    if side is None:
        side = _side_streams[main.device] = torch.cuda.Stream(device=main.device)
    side.wait_stream(main)  # the side stream's (eager) work, if any, after what is queued
    with torch.cuda.stream(side):
        graph.capture_begin(pool=pool, capture_error_mode="thread_local")
        try:
            body()
        finally:
            graph.capture_end()
    main.wait_stream(side)


_UNTRACKED = ("next_logits", "attention_mask")  # state fields each step sets anew (not copied back)


def _tensors(owner) -> dict[str, torch.Tensor]:
    """The tensors an owner (the state, a dict, a plan's object) holds, by name."""
    items = owner.items() if isinstance(owner, dict) else vars(owner).items()
    skip = _UNTRACKED if isinstance(owner, DecodeState) else ()
    return {k: v for k, v in items if isinstance(v, torch.Tensor) and k not in skip}


def _get(owner, name: str):
    return owner.get(name) if isinstance(owner, dict) else vars(owner).get(name)


def _set(owner, name: str, value: torch.Tensor) -> None:
    if isinstance(owner, dict):
        owner[name] = value
    else:
        setattr(owner, name, value)


def _same(old: torch.Tensor, new) -> bool:
    """Whether ``new`` can be copied into ``old`` (same shape, dtype and device)."""
    return isinstance(new, torch.Tensor) and new.shape == old.shape and new.dtype == old.dtype \
        and new.device == old.device
