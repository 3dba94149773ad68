"""Cache-column bookkeeping for draft-then-verify: keep accepted columns, mask the rest, trim.

Every row owns the cache columns marked 1 in its attention mask ``[rows, S]``; masked columns are
invisible and do not shift positions. Rows of a batch that accept different numbers of drafts
(BASS, Qian et al. 2024, arXiv:2404.15778) therefore need no re-padding: a row simply masks the
columns of its rejected drafts. Columns masked in every row at the end are cropped.

Example:
    >>> import torch
    >>> mask_newest(torch.tensor([[1, 1, 0, 1, 1], [1, 1, 1, 1, 1]]), torch.tensor([2, 1]))
    tensor([[1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0]])
"""

from __future__ import annotations

import torch

__all__ = ["mask_newest", "trailing_unused", "crop_columns"]


def mask_newest(mask: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Mask the ``n[r]`` newest valid columns of each row of ``mask [rows, S]``; returns ``[rows, S]``."""
    right = mask.flip(-1).cumsum(-1).flip(-1)  # [rows, S] valid columns at or after each column
    return mask.masked_fill((mask > 0) & (right <= n[:, None]), 0)


def trailing_unused(mask: torch.Tensor) -> torch.Tensor:
    """0-d long tensor: how many columns at the end of ``mask [rows, S]`` no row uses."""
    used = mask.any(0)  # [S]
    last = torch.where(used, torch.arange(mask.shape[1], device=mask.device), -1).max()  # 0-d
    return mask.shape[1] - 1 - last


def crop_columns(lm, cache, mask: torch.Tensor, drop: int) -> torch.Tensor:
    """Crop the last ``drop`` columns (unused by every row) from ``cache`` and ``mask [rows, S]``."""
    if drop <= 0:
        return mask
    keep = mask.shape[1] - drop
    lm.crop(cache, keep)
    return mask[:, :keep]  # [rows, S - drop]
