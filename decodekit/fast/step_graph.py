"""StepGraph: a whole single-token decode step -- forward, token choice, bookkeeping -- from CUDA graphs.

On the fast path the model's forward is one captured graph, but the rest of a loop step (the
strategy's token choice, ``Stopping.clip``, ``DecodeState.append``, ``Stopping.update``) is ~40 small
PyTorch calls, each costing host time. For a small model on a fast GPU that host time is as long as
the forward itself. Where the loop checks stops one step late (:mod:`decodekit.lag`), the whole step
runs on the device without a host read, so it can be captured too: this module replays

1. the slab's captured forward of one token per row (the pending tokens), then
2. a *tail* graph, captured once per decode, of the loop's own step function over the
   :class:`~decodekit.state.DecodeState` (the strategy's ``step`` finds the logits already there),
   which ends by writing the next forward's inputs: the new pending tokens, the next cache column
   and its mask bit, all on the device.

A step then costs two graph launches on the host. The tail is the code the loop runs otherwise,
except that with Triton the clip / append / update after the strategy's step is one kernel
(:mod:`decodekit.fast.token_step`, ~30 fewer kernels per step; ``TOKEN_STEP = False`` runs the
loop's own functions); results are bitwise those of the uncaptured loop (the GPU tests compare them).

How the tail stays valid across replays: state fields the step *reassigns* (``n_new``, ``done``,
``pending``, ``finish_codes``, ...) get fresh tensors during capture; the tail copies each back
into the tensor the field held before the step and restores the field, so every replay reads and
writes the same memory. If the step changes a field's shape or dtype, or anything outside replaces
a field between steps (a monitor, a rollback), the decode goes on with the ordinary loop step.

Where: a single-token strategy that says ``step_capturable`` (greedy, sampling without logits
processors), over a :class:`~decodekit.fast.cache.FastCache` with graphs, with the lagged stop
check on, once the slab's one-token forward graph exists and its capacity holds every remaining
step. ``FastPath(lm, step_graphs=False)`` turns it off.

Example:
    >>> lm = decodekit.load(device="cuda", dtype="bfloat16")                     # doctest: +SKIP
    >>> decodekit.generate(lm, "Hi", max_new_tokens=64)    # steps from graphs      # doctest: +SKIP
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch

from decodekit.fast.cache import FastCache
from decodekit.fast.kernels import kernel_reason
from decodekit.fast.token_step import finish_step
from decodekit.state import DecodeState

__all__ = ["StepGraph", "TOKEN_STEP"]

TOKEN_STEP = True  # False: the tail runs the loop's own step function (~30 more small kernels)


class _NotCapturable(Exception):
    """The step changed a field in a way a replay cannot repeat (shape, dtype, a new tensor)."""


class StepGraph:
    """Runs the loop's single-token steps of one decode from CUDA graphs (see the module docstring).

    Args:
        body: the loop's step function over the state (choose, clip, append, update).
        max_new_tokens: the decode's most new tokens per row (bounds the cache columns it needs).
        strategy, stopping: with both, the tail runs the strategy's step and then clip / append /
            update as one kernel (:mod:`decodekit.fast.token_step`) instead of ``body``.
    """

    def __init__(self, body: Callable[[], None], max_new_tokens: int, strategy=None, stopping=None):
        self.body = body
        self.max_new_tokens = max_new_tokens
        self.strategy, self.stopping = strategy, stopping
        self.slab = None  # the slab the inputs were primed on
        self.warm = False  # the tail ran once eagerly on these inputs (capture comes next)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.fields: dict[str, torch.Tensor] = {}  # the state's tensors the tail reads and writes
        self.extra: dict[str, torch.Tensor] = {}  # ... and those in state.extra
        self.off = False  # the step could not be captured: the decode uses the ordinary step

    @staticmethod
    def for_decode(state: DecodeState, strategy, stopping, lagged: bool,
                   body: Callable[[], None]) -> "StepGraph | None":
        """A StepGraph for this decode, or None where it does not apply (module docstring)."""
        cache = state.cache
        if not (lagged and isinstance(cache, FastCache) and cache.path.capture):
            return None
        if not (getattr(cache.path, "step_graphs", False) and getattr(strategy, "step_capturable", False)):
            return None
        generator = state.generator
        if generator is not None and generator.device.type == "cuda" \
                and not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
            return None  # this torch cannot advance a generator from a graph
        if state.user_processors:
            return None
        fused = (TOKEN_STEP and kernel_reason(state.done.device) is None
                 and not (stopping.stop_strings or stopping.criteria))
        return StepGraph(body, state.logprobs.shape[1], *((strategy, stopping) if fused else ()))

    @torch.inference_mode()  # the slab's buffers are inference tensors
    def step(self, state: DecodeState) -> bool:
        """Run one loop step from graphs; False when this step must run the ordinary way."""
        cache = state.cache
        if self.off or state.pending is None or cache._lease is None or cache.rows != state.rows:
            return False
        slab = cache.slab
        forward = slab.graphs.get((1, False))
        need = cache.length + self.max_new_tokens - state.steps + 2  # columns until the idle step
        if forward is None or need > slab.capacity or state.attention_mask.shape[1] != cache.length:
            return False
        if slab is not self.slab or any(getattr(state, k) is not t for k, t in self.fields.items()):
            self._prime(state, slab)  # first step, a new slab, or a field replaced from outside
        forward.graph.replay()  # [rows, 1, vocab] logits of the pending tokens
        if self.graph is not None:
            self.graph.replay()
        elif self.warm:
            self.graph = self._capture(state, forward.logits)
        else:
            self.warm = self._tail(state, forward.logits, strict=False)  # eagerly: the warm-up
            self.off = not self.warm
        n = state.rows
        cache.length += 1
        state.lm.forward_passes += 1
        cache.path.graph_steps += 1
        state.attention_mask = slab.mask[:n, :cache.length]  # [rows, S]: the slab's mask is the truth
        state.next_logits = forward.logits[:n, -1]  # stale once a token is pending, as in the loop
        return True

    def _prime(self, state: DecodeState, slab) -> None:
        """Load the forward's static inputs from the state (host values allowed: once per slab)."""
        n, length = state.rows, state.cache.length
        inputs = slab._static(1)
        slab.mask[:n, :length].copy_(state.attention_mask)
        slab.mask[:, length] = 1  # the pending token's column
        inputs.write.fill_(length)
        inputs.ids[:n, 0].copy_(state.pending)
        if state.finish_codes is None:  # reassigned by every step: must be a tensor from the start
            state.finish_codes = torch.zeros(n, dtype=torch.long, device=state.done.device)
        self.slab, self.warm, self.graph = slab, False, None
        self.fields = {k: v for k, v in vars(state).items()
                       if isinstance(v, torch.Tensor) and k not in ("next_logits", "attention_mask")}
        self.extra = {k: v for k, v in state.extra.items() if isinstance(v, torch.Tensor)}

    def _tail(self, state: DecodeState, logits: torch.Tensor, strict: bool) -> bool:
        """The loop step after the forward, then the next forward's inputs; reassigned fields are
        copied back into their tensors. Returns whether a replay could repeat it; ``strict`` raises
        :class:`_NotCapturable` instead (capture), else the fields keep the step's new tensors."""
        n, inputs = state.rows, self.slab._static(1)
        state.next_logits = logits[:n, -1]  # [rows, vocab]
        pending, state.pending = state.pending, None  # fed by the forward just replayed
        if self.strategy is not None:  # the strategy's step, then the rest in one kernel
            out = self.strategy.step(state)
            state.pending = pending  # finish_step updates it in place
            finish_step(state, out, self._eos(state), inputs.ids, inputs.write, self.slab.mask)
        else:
            self.body()
            inputs.ids[:n, 0].copy_(state.pending)
            inputs.write.add_(1)
            self.slab.mask.index_fill_(1, inputs.write, 1)
        extra = {k: v for k, v in state.extra.items() if isinstance(v, torch.Tensor)}
        moved = [(state, k, old, getattr(state, k)) for k, old in self.fields.items()]
        moved += [(state.extra, k, old, extra.get(k)) for k, old in self.extra.items()]
        bad = extra.keys() != self.extra.keys() or not all(_same(old, new) for _, _, old, new in moved)
        if bad:
            if strict:
                raise _NotCapturable
            return False
        for owner, k, old, new in moved:
            if new is not old:
                old.copy_(new)
                if owner is state:
                    setattr(state, k, old)
                else:
                    owner[k] = old
        return True

    def _eos(self, state: DecodeState) -> torch.Tensor:  # [n_eos] long
        if self.stopping.eos_token_ids:
            return self.stopping._eos_on(state.done.device)
        return torch.zeros(0, dtype=torch.long, device=state.done.device)

    def _capture(self, state: DecodeState, logits: torch.Tensor) -> torch.cuda.CUDAGraph | None:
        """Capture the tail and replay it (this step); None, with the step run eagerly, if it cannot."""
        graph = torch.cuda.CUDAGraph()
        generator = state.generator
        if generator is not None and generator.device.type == "cuda":
            graph.register_generator_state(generator)  # its draws advance with every replay
        collecting = gc.isenabled()
        gc.disable()  # freeing another graph or pool while capturing is not allowed
        try:
            with torch.cuda.graph(graph, pool=self.slab.path.pool):
                self._tail(state, logits, strict=True)
        except _NotCapturable:  # nothing ran: put the fields back and take the step eagerly
            for k, old in self.fields.items():
                setattr(state, k, old)
            state.extra.update(self.extra)
            self.off = True
            self._tail(state, logits, strict=False)
            return None
        finally:
            if collecting:
                gc.enable()
        graph.replay()
        return graph


def _same(old: torch.Tensor, new) -> bool:
    """Whether ``new`` can be copied into ``old`` (same shape, dtype and device)."""
    return isinstance(new, torch.Tensor) and new.shape == old.shape and new.dtype == old.dtype \
        and new.device == old.device
