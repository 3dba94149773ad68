"""Host values to the device without waiting for the GPU.

``torch.tensor(values, device="cuda")`` copies from pageable host memory, which makes the host wait
until the stream has run everything queued before it: in the middle of a decode the GPU then idles
while the host catches up. :func:`to_device` stages the values in pinned memory and copies them
asynchronously, in stream order (the caching host allocator keeps the pinned block until the copy
has run). On the CPU it is ``torch.tensor``.

Example:
    >>> to_device([3, 1, 2], torch.device("cpu"))
    tensor([3, 1, 2])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["to_device"]


def to_device(values: Sequence | torch.Tensor, device: torch.device | str,
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """``values`` (a nested sequence or a host tensor) as a tensor on ``device``; on CUDA without
    waiting for the work already queued."""
    device = torch.device(device)
    host = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    if dtype is not None and host.dtype != dtype:
        host = host.to(dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
