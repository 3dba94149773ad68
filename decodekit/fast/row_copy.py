"""Beam search's row moves in a slab's KV cache, in one Triton kernel for every layer's keys and values.

When beam search reorders its rows, row ``r`` of every cache tensor becomes old row ``index[r]``.
Done with PyTorch it is one ``index_select`` / ``index_copy_`` pair per tensor -- 2 x layers x 2
kernels a step, each copying every row and every column, the unmoved rows and the columns not
written yet included. :func:`copy_moved_rows` does it in one launch: the tensors' addresses come
from a table (:func:`pointer_table`, built once per slab), the grid is static (one program per
tensor, row and column split, nothing read on the host: it runs inside a captured CUDA graph), and
only the moved rows' first ``end`` columns are copied; every other program returns at once.

The copy is in place, without a temporary. That is exact under beam search's row assignment: a row
that some beam continues keeps its own place (``index[r] == r``), so no source of a moved row is
itself overwritten (see :func:`copy_moved_rows`).

Example:
    >>> keys = [torch.randn(4, 2, 16, 8) for _ in range(3)]        # [rows, heads, C, head_dim] each
    >>> table = pointer_table(keys)                                 # [3] int64
    >>> index = torch.tensor([0, 0, 2, 2])                          # rows 1 and 3 continue rows 0 and 2
    >>> copy_moved_rows(table, keys[0], index, torch.tensor([10]))  # doctest: +SKIP
    >>> torch.equal(keys[1][1, :, :10], keys[1][0, :, :10])         # doctest: +SKIP
    True
"""

from __future__ import annotations

import torch

from decodekit.fast import launch as L

if L.triton is not None:
    import triton.language as tl

__all__ = ["pointer_table", "copy_moved_rows"]

TILE = 4096  # elements a program copies per step (heads x columns x head_dim, padded to powers of two)
MAX_SPLITS = 32  # column splits per (tensor, row); a split copies every MAX_SPLITS-th column block
ALIGN = 16  # bytes: the tensors' addresses are multiples of it (vectorised loads and stores)

_ELEMENT: dict = {}  # torch dtype -> Triton element type of the pointers the kernel casts to

if L.triton is not None:
    _ELEMENT.update({torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32})

    @L.triton.jit(do_not_specialize=["n"])
    def _copy_rows_kernel(table, index, end, n, C, s_row, s_head,
                          H: tl.constexpr, HP: tl.constexpr, HD: tl.constexpr, HDP: tl.constexpr,
                          BLOCK_C: tl.constexpr, SPLITS: tl.constexpr, DTYPE: tl.constexpr):
        """``table [n_tensors]`` int64 addresses of ``[rows, H, C, HD]`` tensors of ``DTYPE``; ``index
        [n]``; ``end [1]``. Program (tensor, row r, split s) copies row ``index[r]``'s column blocks
        s, s + SPLITS, ... below ``end[0]`` into row r, all heads at once, when ``index[r] != r``."""
        p = tl.program_id(0)  # tensor p // n, row p % n
        s = tl.program_id(1)  # column blocks s, s + SPLITS, s + 2 SPLITS, ...
        r = p % n
        src = tl.load(index + r)  # int64
        if src != r:  # unmoved rows are not touched
            stop = tl.minimum(tl.load(end), C)  # columns < stop are copied
            addr = tl.multiple_of(tl.load(table + p // n), 16)  # the tensor's data_ptr (ALIGN bytes)
            base = addr.to(tl.pointer_type(DTYPE))
            dst = base + r.to(tl.int64) * s_row
            from_ = base + src * s_row
            h = tl.arange(0, HP)[:, None, None]
            c = tl.arange(0, BLOCK_C)[None, :, None]
            d = tl.arange(0, HDP)[None, None, :]
            inner = (h < H) & (d < HD)  # [HP, 1, HDP]
            off = h * s_head + c * HD + d  # [HP, BLOCK_C, HDP]
            b = s * BLOCK_C  # first column of the block
            while b < stop:  # (a while loop: Triton's interpreter cannot range() over a loaded bound)
                m = inner & (b + c < stop)
                x = tl.load(from_ + b * HD + off, mask=m)
                tl.store(dst + b * HD + off, x, mask=m)
                b += SPLITS * BLOCK_C


def pointer_table(tensors: list[torch.Tensor]) -> torch.Tensor:  # [len(tensors)] int64, on their device
    """The ``data_ptr()`` of each tensor, as :func:`copy_moved_rows` takes them. The tensors must share
    shape, dtype and device, be contiguous and 4-D (``[rows, heads, C, head_dim]``), of bf16, fp16 or
    fp32, at addresses aligned to 16 bytes; otherwise ``ValueError``. The table holds addresses, not
    references: keep the tensors alive (and in place) while it is used.

    Example:
        >>> pointer_table([torch.zeros(2, 1, 4, 8), torch.zeros(2, 1, 4, 8)]).shape
        torch.Size([2])
    """
    if not tensors:
        raise ValueError("decodekit.fast: pointer_table needs at least one tensor")
    like = tensors[0]
    for i, t in enumerate(tensors):
        if (t.shape, t.dtype, t.device) != (like.shape, like.dtype, like.device):
            raise ValueError(f"decodekit.fast: pointer_table's tensors must share shape, dtype and device; "
                             f"tensor {i} is {tuple(t.shape)} {t.dtype} on {t.device}, tensor 0 "
                             f"{tuple(like.shape)} {like.dtype} on {like.device}")
        if not t.is_contiguous():
            raise ValueError(f"decodekit.fast: pointer_table's tensors must be contiguous; tensor {i} has "
                             f"strides {t.stride()}")
        if t.data_ptr() % ALIGN:
            raise ValueError(f"decodekit.fast: pointer_table's tensors must start at {ALIGN}-byte aligned "
                             f"addresses; tensor {i} does not")
    if like.dim() != 4:
        raise ValueError(f"decodekit.fast: pointer_table takes [rows, heads, C, head_dim] tensors, got "
                         f"{tuple(like.shape)}")
    if like.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"decodekit.fast: pointer_table takes bf16, fp16 or fp32 tensors, got {like.dtype}")
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64, device=like.device)


def _blocks(C: int, heads: int, head_dim: int, block_c: int | None, splits: int | None) -> tuple[int, int]:
    """(BLOCK_C, SPLITS): a program copies ``heads x BLOCK_C x head_dim`` (about :data:`TILE` elements,
    padded to powers of two) per step, every ``SPLITS``-th column block."""
    if block_c is None:
        block_c = max(1, min(L.pow2(C), TILE // (L.pow2(heads) * L.pow2(head_dim))))
    if splits is None:
        splits = min(L.triton.cdiv(C, block_c), MAX_SPLITS)
    return block_c, splits


def copy_moved_rows(table: torch.Tensor, like: torch.Tensor, index: torch.Tensor, end: torch.Tensor, *,
                    block_c: int | None = None, splits: int | None = None) -> None:
    """For every tensor ``t`` of ``table`` (:func:`pointer_table`) and every row ``r < n`` with
    ``index[r] != r``: ``t[r, :, :end[0]] = t[index[r], :, :end[0]]``, in place, in one launch.

    ``table [n_tensors]`` int64 addresses of same-shaped tensors ``[rows, heads, C, head_dim]``, of
    which ``like`` is one (it gives shape, dtype and device; it is not otherwise special);
    ``index [n]`` long with ``n <= rows`` and values in ``[0, rows)``; ``end [1]`` long, on the
    device: the columns to copy (``end[0] > C`` copies all ``C``). Rows ``>= n``, columns
    ``>= end[0]`` and rows with ``index[r] == r`` are neither read nor written. Nothing is read on the
    host, so the call can be captured in a CUDA graph: the grid depends on shapes only.

    Precondition (unchecked): no source of a moved row is itself moved, i.e. ``index[r] != r``
    implies ``index[index[r]] == index[r]`` -- then each program reads rows that no program writes,
    and the in-place copy is exact. Beam search's row assignment satisfies it when every surviving
    parent row keeps its place. ``block_c`` / ``splits`` are for tests (defaults: :func:`_blocks`).

    Example:
        >>> cache = [torch.arange(24.0).view(3, 1, 4, 2) for _ in range(2)]   # [rows, heads, C, head_dim]
        >>> table = pointer_table(cache)
        >>> copy_moved_rows(table, cache[0], torch.tensor([0, 0, 2]), torch.tensor([3]))  # doctest: +SKIP
        >>> cache[1][1, 0]                                                    # doctest: +SKIP
        tensor([[ 0.,  1.], [ 2.,  3.], [ 4.,  5.], [14., 15.]])
    """
    rows, heads, C, head_dim = like.shape
    n = index.shape[0]
    if index.dim() != 1 or n > rows or end.numel() != 1 or table.dim() != 1:
        raise ValueError(f"decodekit.fast: copy_moved_rows takes table [n_tensors], index [n <= {rows}] and "
                         f"end [1]; got {tuple(table.shape)}, {tuple(index.shape)}, {tuple(end.shape)}")
    if table.device != like.device or index.device != like.device or end.device != like.device:
        raise ValueError("decodekit.fast: copy_moved_rows' table, index and end must be on the tensors' device")
    if like.dtype not in _ELEMENT:
        raise ValueError(f"decodekit.fast: copy_moved_rows takes bf16, fp16 or fp32 tensors, got {like.dtype}")
    if n == 0 or table.shape[0] == 0:
        return
    block_c, splits = _blocks(C, heads, head_dim, block_c, splits)
    L.launch(_copy_rows_kernel, (table.shape[0] * n, splits), table, index, end, n, C, heads * C * head_dim,
             C * head_dim, H=heads, HP=L.pow2(heads), HD=head_dim, HDP=L.pow2(head_dim), BLOCK_C=block_c,
             SPLITS=splits, DTYPE=_ELEMENT[like.dtype], num_warps=4)
