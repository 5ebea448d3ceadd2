"""device.py: the device from an option, a rank's device, batches moved there, autocast, the GPU clock."""

from __future__ import annotations

import contextlib

import pytest
import torch

from wlasl_shards.train import distributed as ddp
from wlasl_shards.train.device import (
    DEVICES,
    GpuClock,
    autocast,
    clips_to_device,
    device_for,
    resolve_device,
    to_device,
)

CPU = torch.device("cpu")


def test_resolve_device():
    assert DEVICES == ("auto", "cpu", "cuda")
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be one of .*, got 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' asked for, but torch sees no CUDA GPU"):
            resolve_device("cuda")


def test_device_for_gives_each_rank_its_own_gpu():
    alone, rank3 = ddp.Dist(0, 1, 0, False), ddp.Dist(3, 4, 1, True)
    assert device_for(CPU, rank3) == CPU  # gloo on the CPU: every rank on the CPU
    assert device_for(torch.device("cuda", 0), alone) == torch.device("cuda", 0)
    assert device_for(torch.device("cuda", 0), rank3) == torch.device("cuda", 1)  # LOCAL_RANK 1


def test_clips_and_batches_to_device_are_the_model_input():
    clips = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 1, 1, 3, 1).expand(2, 4, 5, 3, 3).contiguous()
    x = clips_to_device(clips, CPU)
    assert x.shape == (2, 3, 4, 5, 3) and x.dtype == torch.float32
    assert x[0, :, 0, 0].tolist() == [pytest.approx([-1.0, -0.6, 1.0])] * 3  # x / 255 * 2 - 1, channels first
    labels = torch.tensor([2, 0])
    x2, y = to_device(clips, labels, CPU)
    assert torch.equal(x2, x) and torch.equal(y, labels)
    with pytest.raises(ValueError, match="uint8 batch"):
        clips_to_device(clips.float(), CPU)


def test_autocast_is_float32_on_the_cpu():
    assert isinstance(autocast(CPU), contextlib.nullcontext)
    with autocast(CPU):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_gpu_clock_is_silent_off_cuda():
    clock = GpuClock(CPU)
    clock.start()
    clock.stop()
    assert clock.collect() is None and clock.overall() is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_clock_on_cuda():
    dev = torch.device("cuda")
    assert autocast(dev).fast_dtype == torch.bfloat16
    clock = GpuClock(dev)
    a = torch.randn(512, 512, device=dev)
    for _ in range(3):
        clock.start()
        for _ in range(20):
            a = a @ a / 512
        clock.stop()
    share = clock.collect()
    assert share is not None and 0 < share <= 1
    assert 0 < clock.overall() <= 1
    x = clips_to_device(torch.zeros(1, 2, 3, 3, 3, dtype=torch.uint8), dev)
    assert x.device.type == "cuda" and float(x.min()) == -1.0
