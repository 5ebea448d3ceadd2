"""Precise BatchNorm statistics (pycls / SlowFast "precise BN"), recomputed before every evaluation.

I3D's BatchNorm momentum (0.01) makes the running statistics an average over the last ~100 steps of
weights that kept changing, so eval-mode accuracy lags far behind train-mode accuracy (the README has
the figures). `precise_bn` replaces them by the exact average over a few train batches of the current
weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from wlasl_shards.train.device import autocast, clips_to_device
from wlasl_shards.train.models import I3D_INPUT, InputSpec

# BatchNorm momentum from which (down) running statistics lag the weights by hundreds of steps.
SLOW_MOMENTUM = 0.01


def slow_batchnorm(model: nn.Module) -> float | None:
    """The smallest BatchNorm momentum of `model` when it is SLOW_MOMENTUM or less (I3D 0.01, torchvision's
    S3D 0.001), else None: without precise BN such a model's eval-mode accuracy lags far behind."""
    momenta = [m.momentum for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None]
    low = min(momenta, default=None)
    return low if low is not None and low <= SLOW_MOMENTUM else None


@torch.no_grad()
def precise_bn(model: nn.Module, batches: Iterable[tuple], device: torch.device, limit: int,
               spec: InputSpec = I3D_INPUT, channels: str = "rgb") -> int:
    """Recompute every BatchNorm's running mean and variance as the plain average over `limit`
    batches `(clips uint8, labels)` of the current weights (forward in train mode, no gradients).
    Returns the batches used. Momentum and the train/eval mode are restored afterwards; with a
    process group the statistics are averaged over ranks."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or limit <= 0:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over the batches seen
    model.train()
    used = 0
    try:
        for batch in batches:
            if used >= limit:
                break
            x = clips_to_device(batch[0], device, spec, channels)
            with autocast(device):
                model(x)
            used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        for m in norms:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf.div_(world)
    return used


__all__ = ["SLOW_MOMENTUM", "precise_bn", "slow_batchnorm"]
