"""to_device: host values to the device without waiting for the queued GPU work; the step tail's
capture likewise (no device synchronisation)."""

from __future__ import annotations

import pytest
import torch

from decodekit.fast.step_graph import _capture_queued
from decodekit.transfer import to_device

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_to_device_values_and_dtype():
    got = to_device([[1, 2], [3, 4]], torch.device("cpu"), torch.long)
    assert got.dtype == torch.long and got.tolist() == [[1, 2], [3, 4]]
    host = torch.tensor([1.5, 2.5])
    assert to_device(host, "cpu", torch.float64).dtype == torch.float64
    assert to_device([True, False], "cpu").dtype == torch.bool


def _busy_gpu() -> torch.cuda.Event:
    """Queue ~1-2 s of GPU work; the event completes after it."""
    torch.cuda.synchronize()
    torch.cuda._sleep(int(2e9))  # cycles, ~1-2 GHz
    done = torch.cuda.Event()
    done.record()
    return done


@pytest.mark.gpu
@cuda
def test_to_device_does_not_wait_for_queued_work():
    busy = _busy_gpu()
    got = to_device(list(range(1000)), torch.device("cuda"), torch.long)
    assert not busy.query()  # the host came back while the GPU was still busy
    assert got.device.type == "cuda" and got.sum().item() == sum(range(1000))  # ordered after the copy


@pytest.mark.gpu
@cuda
def test_tail_capture_runs_nothing_and_replays_in_order():
    """The capture runs nothing; each replay runs once, after what was queued before it. (Whether
    the host waited for the queued work during the capture is printed, not required: on an H200
    with torch 2.11 it did.)"""
    x = torch.zeros(4, device="cuda")
    x.add_(1)  # the kernel loaded, as the step tail's eager warm-up does
    busy = _busy_gpu()
    x.fill_(10.0)  # queued after the busy period: a replay must come after it
    graph = torch.cuda.CUDAGraph()
    _capture_queued(graph, None, lambda: x.mul_(2))
    print(f"the host waited for the queued work during the capture: {busy.query()}")
    graph.replay()
    graph.replay()
    assert x.tolist() == [40.0] * 4  # 10, then doubled by each replay; the capture doubled nothing
