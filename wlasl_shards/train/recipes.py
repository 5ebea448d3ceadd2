"""Optimisers, learning-rate schedules and each arch's default training recipe, with its source.

`TrainConfig` leaves a recipe's fields at None; `resolve` fills them from the arch's `Recipe` (and the
optimiser's own defaults when another optimiser than the recipe's is chosen), so config.json and every
checkpoint hold the values a run really used.

The recipes are for fine-tuning from the Kinetics-400 weights each arch's owners publish (`--init`),
at this tool's default effective batch of 16 clips (4 per pass x 4 accumulated): where the source
trains with another batch, its learning rate is scaled linearly (lr x 16 / its batch), as the sources
themselves say to. I3D keeps the seed's recipe bit for bit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

# Effective batch (clips per optimiser step) the recipes' learning rates are scaled to.
RECIPE_BATCH = 16


@dataclass(frozen=True)
class OptimizerKind:
    """One optimiser kind of `TrainConfig.optimizer`: its defaults, how it and its schedule are made,
    and when the schedule steps. The one place the kinds differ."""

    lr: float  # default learning rate (when the arch's recipe uses another optimiser)
    weight_decay: float  # default weight decay (likewise)
    make: Callable[[Iterable[Any], float, float], torch.optim.Optimizer]  # (params or groups, lr, weight decay)
    # (optimiser, optimiser steps in the run, warm-up steps) -> scheduler
    schedule: Callable[[torch.optim.Optimizer, int, int], Any]
    per_step: bool  # scheduler.step() after each optimiser step; else once per epoch on the val loss
    state_per_param: int  # tensors of a parameter's size in the optimiser's state (checkpoint size estimate)
    scratch_lr: float | None = None  # without --init, an lr from this on gets a warning (a recipe for Kinetics init)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """The lr factor at optimiser step `step` (from 0): linear warm-up to 1 over `warmup` steps (the
    first step already at 1 / warmup, not 0), then a half cosine to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, total - warmup) / max(1, total - warmup)))


def cosine(optimizer: torch.optim.Optimizer, steps: int, warmup: int) -> Any:
    """Cosine annealing to 0 over `steps` optimiser steps, after `warmup` linear warm-up steps. Without
    warm-up it is torch's CosineAnnealingLR, exactly the seed's schedule (and its checkpoints' state)."""
    if warmup == 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(warmup_cosine, warmup=warmup,
                                                                         total=max(steps, warmup + 1)))


def plateau(optimizer: torch.optim.Optimizer, steps: int, warmup: int) -> Any:
    """WLASL's ReduceLROnPlateau(factor 0.3, patience 5) on the val loss (no warm-up: `check` refuses it)."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "min", factor=0.3, patience=5)


OPTIMIZERS = {
    # The seed's recipe (for Kinetics-400 init): SGD momentum 0.9, cosine to 0 over the whole run.
    "sgd": OptimizerKind(
        lr=0.01, weight_decay=1e-7,
        make=lambda params, lr, wd: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd),
        schedule=cosine, per_step=True, state_per_param=1, scratch_lr=0.005),
    # WLASL's train_i3d.py with asl100.ini: Adam (eps left at 1e-8), ReduceLROnPlateau(0.3, 5) on the val loss.
    "adam": OptimizerKind(
        lr=1e-3, weight_decay=1e-7,
        make=lambda params, lr, wd: torch.optim.Adam(params, lr=lr, weight_decay=wd),
        schedule=plateau, per_step=False, state_per_param=2),
    # The transformers' recipes (VideoMAE, MViT, Video Swin): AdamW betas (0.9, 0.999), warm-up + cosine.
    "adamw": OptimizerKind(
        lr=1e-3 * RECIPE_BATCH / 256, weight_decay=0.05,
        make=lambda params, lr, wd: torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=wd),
        schedule=cosine, per_step=True, state_per_param=2),
}


@dataclass(frozen=True)
class Recipe:
    """An arch's default training recipe: what `resolve` fills into the TrainConfig fields left at None."""

    optimizer: str
    lr: float  # at the effective batch RECIPE_BATCH
    weight_decay: float
    clip_len: int  # frames per training clip
    source: str  # where the values come from, as the README's table quotes it
    frame_stride: int = 1  # every S-th frame
    eval_clips: int = 0  # 0: every frame (at the stride) in one pass; K: K uniformly spaced windows, averaged
    warmup_epochs: float = 0.0
    layer_decay: float | None = None  # layer-wise lr decay (ViTs)
    drop_path: float = 0.0  # stochastic depth (the archs that have it)
    label_smoothing: float = 0.0


def _scaled(lr: float, batch: int) -> float:
    """A source's lr for `batch` clips per step, scaled linearly to RECIPE_BATCH."""
    return lr * RECIPE_BATCH / batch


_VIDEO_RESNET = Recipe(
    "sgd", _scaled(0.64, 64 * 24), 1e-4, 16, frame_stride=2, warmup_epochs=10,
    source="torchvision's video reference (SGD momentum 0.9, lr 0.64 for 64x24 clips, weight decay 1e-4, "
           "10 warm-up epochs; 16 frames at 15 fps: every 2nd of our 25 fps)")
_SWIN = dict(optimizer="adamw", lr=_scaled(1e-3, 64), weight_decay=0.02, clip_len=32, frame_stride=2,
             warmup_epochs=2.5)
_SWIN_SOURCE = ("Video Swin Transformer's Kinetics-400 configs (AdamW lr 1e-3 for 64 clips, weight decay 0.02, "
                "2.5 warm-up epochs, 32 frames every 2nd, drop path {})")

RECIPES: dict[str, Recipe] = {
    "i3d": Recipe("sgd", 0.01, 1e-7, 64,
                  source="the seed's (WLASL's I3D fine-tuned from Kinetics-400: SGD momentum 0.9, lr 0.01, "
                         "weight decay 1e-7, cosine; 64 frames)"),
    "r3d_18": _VIDEO_RESNET,
    "mc3_18": _VIDEO_RESNET,
    "r2plus1d_18": _VIDEO_RESNET,
    "s3d": Recipe("sgd", _scaled(0.2, 64 * 12), 1e-4, 64, warmup_epochs=10,
                  source="torchvision's video reference for S3D (lr 0.2 for 64x12 clips, 64 frames; "
                         "otherwise as the video ResNets)"),
    "mvit_v1_b": Recipe("adamw", _scaled(1.6e-3, 512), 0.05, 16, frame_stride=4, eval_clips=5, warmup_epochs=5,
                        drop_path=0.2,
                        source="MViT's Kinetics-400 16x4 recipe (PySlowFast: AdamW lr 1.6e-3 for 512 clips, "
                               "weight decay 0.05, drop path 0.2; 16 frames every 4th; 5-clip test), "
                               "with 5 warm-up epochs for fine-tuning"),
    "swin3d_t": Recipe(**_SWIN, drop_path=0.1, source=_SWIN_SOURCE.format(0.1)),
    "swin3d_s": Recipe(**_SWIN, drop_path=0.2, source=_SWIN_SOURCE.format(0.2)),
    "swin3d_b": Recipe(**_SWIN, drop_path=0.3, source=_SWIN_SOURCE.format(0.3)),
    "videomae-base": Recipe(
        "adamw", _scaled(5e-4, 256), 0.05, 16, frame_stride=4, eval_clips=5, warmup_epochs=5, layer_decay=0.75,
        label_smoothing=0.1,
        source="VideoMAE's Kinetics-400 fine-tuning (AdamW lr 5e-4 per 256 clips, weight decay 0.05, layer decay "
               "0.75, label smoothing 0.1, 5 warm-up epochs; 16 frames every 4th; 5-clip test); its drop path "
               "0.1 is left out: transformers' VideoMAE has no stochastic depth"),
}
RECIPES["mvit_v2_s"] = RECIPES["mvit_v1_b"]
RECIPES["videomae-large"] = RECIPES["videomae-base"]


def recipe(arch: str) -> Recipe:
    """The default recipe of `arch`; ValueError naming the archs that have one."""
    if arch not in RECIPES:
        raise ValueError(f"arch must be one of {', '.join(RECIPES)}, got {arch!r}")
    return RECIPES[arch]


def optimizer_kind(name: str) -> OptimizerKind:
    """`OPTIMIZERS[name]`; ValueError naming the kinds."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name]


def make_optimizer(kind: OptimizerKind, groups: list[dict], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimiser over parameter `groups` (`models.param_groups`): a group's "lr_scale" (layer-wise
    decay) multiplies `lr` for it, a group's own "weight_decay" (0 for biases and norms) replaces
    `weight_decay`."""
    groups = [{k: v for k, v in g.items() if k != "lr_scale"} | ({"lr": lr * g["lr_scale"]} if "lr_scale" in g else {})
              for g in groups]
    return kind.make(groups, lr, weight_decay)


__all__ = ["OPTIMIZERS", "RECIPES", "RECIPE_BATCH", "OptimizerKind", "Recipe", "cosine", "make_optimizer",
           "optimizer_kind", "plateau", "recipe", "warmup_cosine"]
