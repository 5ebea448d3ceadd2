"""Where the model runs: the device from an option, a rank's own GPU, batches moved there, the
precision inside a forward pass, and how busy the GPU is kept.

Every stage that runs the model (train, evaluate, predict, extract) takes its device helpers from here.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch

from wlasl_shards.train.models import I3D_INPUT, InputSpec, model_input

if TYPE_CHECKING:
    from wlasl_shards.train.distributed import Dist

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; "cuda" without a GPU is a ValueError."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch sees no CUDA GPU (use --device cpu or auto)")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def device_for(device: torch.device, info: Dist) -> torch.device:
    """A rank's device: its own GPU (LOCAL_RANK) on CUDA in a multi-process job, else `device`."""
    if device.type == "cuda" and info.active:
        return torch.device("cuda", info.local_rank)
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); full float32 on the CPU, where
    bf16 convolutions are slower and the tests want exact numbers."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def clips_to_device(clips: torch.Tensor, device: torch.device, spec: InputSpec = I3D_INPUT,
                    channels: str = "rgb") -> torch.Tensor:
    """uint8 clips (B, T, H, W, 3) -> model input (B, 3, T, H, W) float on `device`, normalised per the
    arch's `spec` (I3D: [-1, 1]) after the `channels` order (`models.model_input`).
    The copy is of uint8 (pinned by the loader on CUDA, so asynchronous); the floats are made there."""
    return model_input(clips.to(device, non_blocking=True), spec, channels)


def to_device(clips: torch.Tensor, labels: torch.Tensor, device: torch.device, spec: InputSpec = I3D_INPUT,
              channels: str = "rgb") -> tuple[torch.Tensor, torch.Tensor]:
    """A batch, uint8 clips (B, T, H, W, 3) and labels (B,) -> (model input (B, 3, T, H, W) float,
    labels), both on `device` (see `clips_to_device`)."""
    return clips_to_device(clips, device, spec, channels), labels.to(device, non_blocking=True)


class GpuClock:
    """How busy the GPU is during training, from CUDA events (no synchronisation per step): each pass
    is bracketed by two events; the busy share is the GPU time inside passes over the GPU time from
    the first pass's start to the last one's end. On CUDA the CPU's wait for the loader says little
    about the GPU, which is still running earlier kernels meanwhile; the gaps between passes do.
    Does nothing off CUDA."""

    def __init__(self, device: torch.device):
        self.on = device.type == "cuda"
        self.passes: list[tuple[Any, Any]] = []  # not yet collected
        self._start = None
        self.first = self.last = None  # events bracketing every pass so far
        self.total_busy = 0.0

    def start(self) -> None:
        if self.on:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
            self.first = self.first or self._start

    def stop(self) -> None:
        if self.on:
            self.last = torch.cuda.Event(enable_timing=True)
            self.last.record()
            self.passes.append((self._start, self.last))

    def collect(self) -> float | None:
        """Busy share of the passes since the last call (synchronises once); None off CUDA or with none."""
        if not self.on or not self.passes:
            return None
        self.passes[-1][1].synchronize()
        busy = sum(a.elapsed_time(b) for a, b in self.passes)
        span = self.passes[0][0].elapsed_time(self.passes[-1][1])
        self.total_busy += busy
        self.passes = []
        return busy / max(span, 1e-6)

    def overall(self) -> float | None:
        """Busy share over every pass so far, gaps between collections included."""
        if self.collect() is None and self.first is None:
            return None
        return self.total_busy / max(self.first.elapsed_time(self.last), 1e-6)


__all__ = ["DEVICES", "GpuClock", "autocast", "clips_to_device", "device_for", "resolve_device", "to_device"]
