"""FastCache: the KV-cache handle a DecodeState holds on the fast path.

It follows the same column discipline as the eager ``DynamicCache`` (see :mod:`decodekit.lm`): the
cache has ``length`` columns, every row owns those its attention mask marks, and a forward appends
``T`` columns. Underneath, the columns live in a leased, preallocated :class:`~decodekit.fast.slab.Slab`:

* ``crop`` only lowers ``length`` (the columns beyond are rewritten later and masked until then);
* ``select_rows`` gathers the rows of every layer (moving to another slab when the batch-size
  bucket changes);
* a forward past the slab's capacity moves to a slab twice as large (new graphs are captured).

:class:`~decodekit.lm.LM` dispatches its forward and cache operations here; strategies never see
the difference.
"""

from __future__ import annotations

import torch

from decodekit.fast.slab import Slab, bucket

__all__ = ["FastCache"]


class FastCache:
    """A static KV cache of ``rows`` rows and ``length`` columns (see the module docstring)."""

    def __init__(self, path):
        self.path = path  # decodekit.fast.path.FastPath
        self.rows = 0
        self.length = 0
        self._lease = None  # decodekit.fast.path.Lease, from the first forward on

    def __repr__(self) -> str:
        cap = self.slab.capacity if self._lease else 0
        return f"FastCache(rows={self.rows}, length={self.length}, capacity={cap})"

    @property
    def slab(self) -> Slab:
        return self._lease.slab

    def get_seq_length(self) -> int:
        return self.length

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # [rows, T] long
        attention_mask: torch.Tensor,  # [rows, length + T] long
        *,
        last_only: bool = False,
        hidden: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # [rows, T or 1, vocab] float32, [rows, T, d] | None
        """Append ``T`` columns holding ``input_ids``; logits (and last hidden states on request)."""
        n, T = input_ids.shape
        width = attention_mask.shape[1]
        if width - T != self.length or attention_mask.shape[0] != n:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must be [rows, cache columns "
                             f"({self.length}) + new tokens ({T})] for input_ids {tuple(input_ids.shape)}")
        if self._lease is None:
            self._lease = self.path.lease(n, width + self.path.headroom)
        elif n != self.rows:
            raise ValueError(f"the cache holds {self.rows} rows, got {n}: use LM.select_rows to change rows")
        elif width > self.slab.capacity:
            self._move(n, max(2 * self.slab.capacity, width + self.path.headroom))
        self.rows = n
        slab = self.slab
        slab.mask[:n, :width].copy_(attention_mask)
        logits, hid = slab.run(input_ids, self.length, last_only, hidden)
        self.length = width
        return logits, hid

    def crop(self, length: int) -> None:
        """Keep the first ``length`` columns."""
        self.length = max(0, min(self.length, int(length)))

    @torch.inference_mode()
    def select_rows(self, index: torch.Tensor) -> None:
        """Row i becomes old row ``index[i]`` ([rows'] long); moves slab when the bucket changes."""
        if self._lease is None:
            return
        src = self.slab
        index = index.to(src.device)
        n = index.shape[0]
        if bucket(n) != src.rows:
            self._lease = self.path.lease(n, max(src.capacity, self.length + self.path.headroom))
        else:
            src.mask[n:].fill_(1)  # rows dropped from the bucket become dummies
        self.slab.take_rows(src, index, self.length)
        self.rows = n

    @torch.inference_mode()
    def permute_rows(self, index: torch.Tensor, end: torch.Tensor) -> None:
        """Row i becomes row ``index[i]`` ([rows] long on the slab's device), in place, reading nothing
        on the host (a captured step may do it): the first ``end[0]`` columns (``end [1]`` long on the
        device) at least. No row that a moved row copies may itself move (beam search's assignment,
        :func:`~decodekit.strategies.beam_graph.assign_rows`)."""
        self.slab.permute(index, end)

    @torch.inference_mode()
    def copy(self) -> "FastCache":
        """An independent copy (its own slab)."""
        other = FastCache(self.path)
        other.rows, other.length = self.rows, self.length
        if self._lease is not None:
            other._lease = self.path.lease(self.rows, self.slab.capacity)
            other.slab.take_rows(self.slab, torch.arange(self.rows, device=self.slab.device), self.length)
        return other

    def _move(self, n: int, capacity: int) -> None:
        """Move to a slab of at least ``capacity`` columns (the old one returns to the pool)."""
        old = self.slab
        self._lease = self.path.lease(n, capacity)
        self.slab.take_rows(old, torch.arange(n, device=old.device), self.length)
