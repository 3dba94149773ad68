"""copy_moved_rows (decodekit.fast.row_copy): beam search's row moves in every cache tensor at once,
against plain indexing. Compiled on CUDA, under Triton's interpreter elsewhere (tests/conftest.py
turns it on). Random values, so a wrong row, column or tensor shows; moved rows whose sources are
unmoved rows and rows past ``n``; ``end`` inside a column block, on a block edge, 0 and past ``C``;
``C`` and the head sizes not multiples of the blocks; several tensors; bf16, fp16 and fp32. The
comparisons are bit for bit (``torch.equal``): the kernel only moves bits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decodekit.fast import launch as L
from decodekit.fast import row_copy as R
from decodekit.fast.row_copy import copy_moved_rows, pointer_table

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_reason = L.kernel_reason(DEVICE, interpret=True)
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"decodekit's Triton kernels: {_reason}")


def _tensors(k: int, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    return [torch.randn(*shape, generator=g, device=DEVICE).to(dtype) for _ in range(k)]  # [rows, heads, C, hd]


def _want(tensors: list[torch.Tensor], index: list[int], end: int) -> list[torch.Tensor]:
    out = [t.clone() for t in tensors]
    for t, o in zip(tensors, out):
        for r, src in enumerate(index):
            if src != r:
                o[r, :, :end] = t[src, :, :end]
    return out


def _run(tensors, index, end, **blocks) -> None:
    table = pointer_table(tensors)  # [k]
    copy_moved_rows(table, tensors[0], torch.tensor(index, device=DEVICE), torch.tensor([end], device=DEVICE),
                    **blocks)


# rows 1, 3 and 4 move: from unmoved rows 0 and 2 and from row 6, past n (5 of 7 rows)
INDEX = [0, 0, 2, 6, 2]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("heads,C,hd,end,blocks", [
    (2, 37, 8, 21, {}),  # the default blocks: one block of 64 columns past C
    (2, 37, 8, 21, dict(block_c=8, splits=2)),  # end inside block 2; split 0 copies blocks 0 and 2
    (3, 37, 12, 16, dict(block_c=8, splits=3)),  # end on a block edge; heads and head_dim not powers of 2
    (3, 37, 12, 37, dict(block_c=8, splits=2)),  # every column; the last block partly past C
    (2, 20, 8, 100, dict(block_c=8, splits=1)),  # end past C: C columns, nothing beyond
    (2, 20, 8, 0, {}),  # nothing
])
def test_copy_moved_rows_equals_indexing(dtype, heads, C, hd, end, blocks):
    tensors = _tensors(5, (7, heads, C, hd), dtype, seed=heads * 100 + C + end)
    want = _want(tensors, INDEX, end)
    _run(tensors, INDEX, end, **blocks)
    for i, (got, w) in enumerate(zip(tensors, want)):
        assert torch.equal(got, w), f"tensor {i}"


def test_unmoved_rows_columns_past_end_and_rows_past_n_keep_their_bits():
    """The parts the copy must leave alone, checked one by one on a case where every moved row
    differs from its source everywhere (so any stray write shows)."""
    tensors = _tensors(5, (7, 2, 37, 8), torch.bfloat16, seed=3)
    before = [t.clone() for t in tensors]
    _run(tensors, INDEX, 21, block_c=8, splits=2)
    for t, b in zip(tensors, before):
        assert torch.equal(t[[0, 2]], b[[0, 2]])  # unmoved rows
        assert torch.equal(t[5:], b[5:])  # rows past n
        assert torch.equal(t[[1, 3, 4], :, 21:], b[[1, 3, 4], :, 21:])  # moved rows past end
        assert torch.equal(t[[1, 3, 4], :, :21], b[[0, 6, 2], :, :21])  # moved rows before end
        assert not torch.equal(t[[1, 3, 4], :, 20:21], b[[1, 3, 4], :, 20:21])  # the last column is copied


def _addresses(t: torch.Tensor, rows: list[int], end: int) -> set[int]:
    """The byte addresses of ``t[rows, :, :end]``'s elements."""
    at = t.data_ptr() + t.element_size() * torch.arange(t.numel(), dtype=torch.int64).view(t.shape)
    return set(at[rows, :, :end].flatten().tolist())


@pytest.mark.skipif(DEVICE.type == "cuda", reason="watches the stores of Triton's interpreter")
def test_only_moved_rows_are_read_and_written(monkeypatch):
    """Every element load and store the kernel issues, watched in Triton's interpreter: it writes
    exactly the moved rows' first ``end`` columns and reads exactly their sources' (an unmoved row is
    not even rewritten with its own values), and issues no load or store with every lane masked off
    (column blocks at or past ``end`` do nothing)."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpreterBuilder

    seen = {"load": [], "store": []}
    load, store = InterpreterBuilder.create_masked_load, InterpreterBuilder.create_masked_store

    def watch_load(self, ptrs, mask, *args):  # the cache's elements (fp32), not the index, end or table
        if ptrs.get_element_ty() == tl.float32:
            seen["load"].append(ptrs.data[mask.data])
        return load(self, ptrs, mask, *args)

    def watch_store(self, ptrs, value, mask, *args):
        seen["store"].append(ptrs.data[mask.data])
        return store(self, ptrs, value, mask, *args)

    monkeypatch.setattr(InterpreterBuilder, "create_masked_load", watch_load)
    monkeypatch.setattr(InterpreterBuilder, "create_masked_store", watch_store)
    tensors = _tensors(3, (7, 3, 37, 12), torch.float32, seed=4)
    _run(tensors, INDEX, 21, block_c=8, splits=2)
    for kind, rows in ("store", [1, 3, 4]), ("load", [0, 6, 2]):
        assert all(a.size for a in seen[kind]), f"a {kind} with no lane on"
        got = [int(a) for a in np.concatenate(seen[kind])]
        want = set().union(*(_addresses(t, rows, 21) for t in tensors))
        assert len(got) == len(set(got)) and set(got) == want, kind  # each element once


def test_no_row_moved_changes_nothing():
    tensors = _tensors(2, (4, 2, 16, 8), torch.float32, seed=5)
    before = [t.clone() for t in tensors]
    _run(tensors, [0, 1, 2, 3], 16)
    assert all(torch.equal(t, b) for t, b in zip(tensors, before))


def test_the_blocks():
    """About TILE elements a step, at most MAX_SPLITS splits, never more splits than blocks."""
    assert R._blocks(4096, 8, 128, None, None) == (4, R.MAX_SPLITS)  # Llama 3 8B: 8 kv heads of 128
    assert R._blocks(2048, 3, 64, None, None) == (16, R.MAX_SPLITS)  # SmolLM2-135M: 3 kv heads of 64
    assert R._blocks(37, 2, 8, None, None) == (64, 1)
    assert R._blocks(37, 2, 8, 8, None) == (8, 5)


def test_pointer_table():
    ts = _tensors(3, (2, 1, 4, 8), torch.float32, seed=1)
    table = pointer_table(ts)
    assert table.dtype == torch.int64 and table.device == ts[0].device
    assert table.tolist() == [t.data_ptr() for t in ts]
    bad = {
        "shape": ts[:2] + [torch.zeros(2, 1, 5, 8, device=DEVICE)],
        "dtype": ts[:2] + [torch.zeros(2, 1, 4, 8, device=DEVICE, dtype=torch.bfloat16)],
        "contiguous": ts[:2] + [torch.zeros(2, 1, 8, 4, device=DEVICE).transpose(2, 3)],
        "aligned": ts[:2] + [torch.zeros(2 * 1 * 4 * 8 + 1, device=DEVICE)[1:].view(2, 1, 4, 8)],
        "heads": [torch.zeros(2, 4, 8, device=DEVICE)],
        "bf16": [torch.zeros(2, 1, 4, 8, device=DEVICE, dtype=torch.int32)],
        "at least one": [],
    }
    for match, tensors in bad.items():
        with pytest.raises(ValueError, match=match):
            pointer_table(tensors)
    if DEVICE.type == "cuda":
        with pytest.raises(ValueError, match="device"):
            pointer_table([ts[0], ts[1].cpu()])


def test_copy_moved_rows_checks_its_arguments():
    ts = _tensors(2, (3, 1, 4, 8), torch.float32, seed=2)
    table = pointer_table(ts)
    with pytest.raises(ValueError, match="index"):
        copy_moved_rows(table, ts[0], torch.zeros(4, dtype=torch.long, device=DEVICE),
                        torch.tensor([4], device=DEVICE))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_copy_moved_rows_in_a_cuda_graph():
    """Captured once, replayed with other moves and another end: nothing is read on the host."""
    tensors = _tensors(4, (6, 2, 40, 16), torch.bfloat16, seed=9)
    table = pointer_table(tensors)
    index = torch.arange(5, device=DEVICE)  # [5]
    end = torch.tensor([1], device=DEVICE)
    copy_moved_rows(table, tensors[0], index, end)  # compile before the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        copy_moved_rows(table, tensors[0], index, end)
    for moves, e in ([0, 0, 2, 5, 2], 17), ([1, 1, 2, 2, 4], 40), ([0, 0, 0, 0, 0], 3):
        want = _want(tensors, moves, e)
        index.copy_(torch.tensor(moves))
        end.fill_(e)
        graph.replay()
        torch.cuda.synchronize()
        assert all(torch.equal(t, w) for t, w in zip(tensors, want))
