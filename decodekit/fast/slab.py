"""A slab: the preallocated KV cache of one batch-size bucket, its static inputs, and its graphs.

A slab holds ``rows`` rows (a bucket: 1, 2, 4, 8, ...) and ``capacity`` cache columns for every
layer, one tensor per layer for keys and one for values (separate storages: ``torch.compile`` treats
views of one storage that a step mutates as aliased inputs and copies them). Every
forward over it runs on all ``rows`` rows (unused rows are dummies that attend to everything and
are never read), so the eager and the captured forward launch the very same kernels: their results
are bitwise equal.

Forwards of ``T <= max_graph_tokens`` new tokens (decode: 1, verify: k + 1) use static input
buffers; on CUDA the first such forward for a ``(T, last_only)`` captures a CUDA graph (into the
memory pool shared by all graphs of the model) and later ones replay it. Longer forwards (prefill)
and forwards that want hidden states run eagerly over the same buffers. Reordering the slab's rows
in place (beam search) replays a captured gather too.
"""

from __future__ import annotations

import gc
import time
import weakref
from dataclasses import dataclass

import torch

from decodekit.fast.attention import SlabView
from decodekit.fast.precompile import precompile
from decodekit.fast.row_copy import copy_moved_rows, pointer_table

__all__ = ["Slab", "bucket"]


def bucket(rows: int) -> int:
    """The batch-size bucket for ``rows`` rows: the next power of two."""
    return 1 << max(rows - 1, 0).bit_length()


@dataclass
class _Inputs:
    """Static inputs of a forward of T new tokens."""

    ids: torch.Tensor  # [rows, T] long
    write: torch.Tensor  # [T] long: cache columns of the new tokens
    view: SlabView  # the transformers Cache writing at ``write``


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    logits: torch.Tensor  # [rows, T or 1, vocab] float32, overwritten by every replay


class Slab:
    """Preallocated K/V (per layer ``[rows, kv_heads, capacity, head_dim]``) plus static buffers.

    Args:
        path: the owning :class:`~decodekit.fast.path.FastPath` (model, options, memory pool).
        rows: the bucket size.
        capacity: cache columns.
    """

    def __init__(self, path, rows: int, capacity: int):
        # a weak reference: no Slab <-> FastPath cycle, so slabs and their graphs are freed as soon
        # as they are dropped, never by the cyclic GC in the middle of another capture
        self.path = weakref.proxy(path)
        self.rows, self.capacity = rows, capacity
        dev, dtype = path.device, path.dtype
        shape = (rows, path.kv_heads, capacity, path.head_dim)
        # 2 * layers tensors [rows, kv_heads, C, head_dim]: keys of layer i at 2i, values at 2i + 1
        self.kv = [torch.zeros(shape, dtype=dtype, device=dev) for _ in range(2 * path.layers)]
        self.device = dev
        self.mask = torch.ones(rows, capacity, dtype=torch.long, device=dev)  # [rows, C]
        self.cols = torch.arange(capacity, device=dev)  # [C]
        self.inputs: dict[int, _Inputs] = {}
        self.graphs: dict[tuple[int, bool], _Graph] = {}
        self.order = torch.zeros(rows, dtype=torch.long, device=dev)  # [rows] static row-gather index
        self.reorders: dict[int, torch.cuda.CUDAGraph] = {}  # n -> captured in-place gather
        self.kv_table: torch.Tensor | None = None  # [2 * layers] long: addresses of self.kv (permute)
        self.leased = False
        self.precompiled = False  # its Triton kernels compiled ahead (decodekit.fast.precompile)

    @torch.inference_mode()
    def take_rows(self, src: "Slab", index: torch.Tensor, cols: int) -> None:
        """Row i of this slab becomes row ``index[i]`` of ``src`` ([n] long), first ``cols`` columns.

        Reordering a slab in place (a beam step) replays a captured gather over all columns: one
        launch instead of two per layer tensor.
        """
        if src is self and self.path.capture:
            return self._reorder(index)
        n = index.shape[0]
        for mine, theirs in zip(self.kv, src.kv):  # gather first: src may be self
            mine[:n, :, :cols].copy_(theirs[:, :, :cols].index_select(0, index))

    def _reorder(self, index: torch.Tensor) -> None:  # index [n] long
        n = index.shape[0]
        graph = self.reorders.get(n)
        if graph is None:
            self.order[:n].copy_(torch.arange(n, device=self.device))  # the warm-up gather is a no-op
            graph = self.reorders[n] = self._capture(self._gather_fn(n), self.path.warmup)[0]
        self.order[:n].copy_(index)
        graph.replay()

    def permute(self, index: torch.Tensor, end: torch.Tensor) -> None:
        """Row i becomes row ``index[i]`` in place (``index [n]`` long), nothing read on the host: with
        decodekit's kernels only the rows that move, columns ``[0, end[0])`` (``end [1]`` long), in one
        launch (:mod:`decodekit.fast.row_copy`); otherwise a gather of every column. No row that a
        moved row copies may itself move."""
        if self.path.kernels:
            if self.kv_table is None:
                self.kv_table = pointer_table(self.kv)  # [2 * layers] the tensors' addresses
            copy_moved_rows(self.kv_table, self.kv[0], index, end)
        else:
            self.order[:index.shape[0]].copy_(index)
            self._gather_fn(index.shape[0])()

    def _gather_fn(self, n: int):
        def gather() -> None:
            idx = self.order[:n]  # [n] long
            for t in self.kv:  # [rows, kv_heads, C, head_dim]
                t[:n].copy_(t.index_select(0, idx))
        return gather

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.kv)

    def _static(self, T: int) -> _Inputs:
        inp = self.inputs.get(T)
        if inp is None:
            ids = torch.full((self.rows, T), self.path.pad_id, dtype=torch.long, device=self.device)
            write = torch.arange(T, device=self.device)  # [T]
            inp = self.inputs[T] = _Inputs(ids, write, SlabView(self.kv, write))
        return inp

    def run(
        self,
        ids: torch.Tensor,  # [n, T] long, n <= rows
        start: int,  # first cache column of the new tokens
        last_only: bool,
        hidden: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # [n, T or 1, vocab] float32, [n, T, hidden] | None
        """One forward of ``T`` new tokens at columns ``start .. start + T - 1`` (the mask is loaded)."""
        n, T = ids.shape
        last_only = last_only and T > 1
        if not self.precompiled:  # the first forward and the decode step's kernels, compiled at once
            self.precompiled = True
            self.path.precompile_s += precompile(self.path, self, [T, 1])
        if hidden or T > self.path.max_graph_tokens:
            full = torch.full((self.rows, T), self.path.pad_id, dtype=torch.long, device=ids.device)
            full[:n] = ids
            write = self.cols[start:start + T]  # [T]
            logits, hid = self.path.eager_fn(self.mask, self.cols, full, write, SlabView(self.kv, write),
                                             last_only, hidden)
            return logits[:n], (hid[:n] if hid is not None else None)
        inp = self._static(T)
        inp.ids[:n].copy_(ids)
        inp.write.copy_(self.cols[start:start + T])
        if not self.path.capture:
            return self._forward(inp.ids, inp.write, inp.view, last_only, False)[0][:n], None
        g = self.graph(T, last_only)
        g.graph.replay()
        return g.logits[:n].clone(), None  # the next replay overwrites g.logits

    def graph(self, T: int, last_only: bool = False) -> _Graph:
        """The captured forward of ``T`` new tokens over the static inputs, captured on first use
        (its warm-up runs the forward on the inputs as they are: load them first)."""
        g = self.graphs.get((T, last_only))
        if g is None:
            inp = self._static(T)
            warmup = self.path.warmup if self.path.captures == 0 else 1
            graph, logits = self._capture(lambda: self._forward(inp.ids, inp.write, inp.view, last_only, False)[0],
                                          warmup)
            g = self.graphs[(T, last_only)] = _Graph(graph, logits)
        return g

    def _forward(self, ids, write, view, last_only: bool, hidden: bool):
        # ids [rows, T] long; write [T] long. The step function (eager or torch.compile'd) of the path.
        return self.path.step_fn(self.mask, self.cols, ids, write, view, last_only, hidden)

    def _capture(self, body, warmup: int):
        """Run ``body`` ``warmup`` times on a side stream, then capture it into the shared pool.

        ``body`` must be idempotent on the current buffers (the warm-up really runs). Returns the
        graph and what the captured ``body`` returned (static outputs, rewritten by each replay).
        """
        t0 = time.perf_counter()
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                body()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        collecting = gc.isenabled()
        gc.disable()  # freeing another graph or pool while capturing is not allowed
        try:
            with torch.cuda.graph(graph, pool=self.path.pool):
                out = body()
        finally:
            if collecting:
                gc.enable()
        torch.cuda.synchronize(self.device)  # once per capture, never inside a step
        self.path.note_capture(time.perf_counter() - t0)
        return graph, out
