"""Clip sampling and augmentation as pure functions on frame indices, numpy arrays and tensors.

Frames stay uint8 (T, H, W, 3) from the shard to the GPU: only `to_model_input`, meant to run on the
device after the transfer, makes floats. A float32 clip is 4x the bytes of its uint8 source, and the
host-to-device copy and the worker -> main process hand-over are what a video loader is short of.

The crop and flip functions return views (no copy); the caller makes the result contiguous once.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

# Shortest clip evaluated as is; the build's --min-frames default, and what WLASL's I3D recipe assumes.
I3D_MIN_FRAMES = 9


def _pad_to(indices: np.ndarray, length: int) -> np.ndarray:
    """(n,) int64, n >= 1 -> (max(n, length),) int64: the last index repeated at the end."""
    if len(indices) >= length:
        return indices
    return np.concatenate([indices, np.full(length - len(indices), indices[-1], np.int64)])


def train_window(num_frames: int, clip_len: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `clip_len` consecutive frames starting at a uniformly random frame: (clip_len,) int64.

    A video shorter than `clip_len` is taken whole and padded AT THE END with its last frame, so the
    clip holds the final pose instead of jumping back in time. (WLASL's own loader also pads at the
    end, with the first or the last frame chosen at random; the first-frame case makes a cut to the
    start of the sign that no real video has, so it is not reproduced.)
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if clip_len < 1:
        raise ValueError(f"clip_len must be >= 1, got {clip_len}")
    if num_frames <= clip_len:
        return _pad_to(np.arange(num_frames, dtype=np.int64), clip_len)
    start = int(rng.integers(0, num_frames - clip_len + 1))
    return np.arange(start, start + clip_len, dtype=np.int64)


def eval_indices(num_frames: int, min_len: int = I3D_MIN_FRAMES) -> np.ndarray:
    """Every frame, padded at the end with the last one up to `min_len`: (max(num_frames, min_len),) int64."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if min_len < 1:
        raise ValueError(f"min_len must be >= 1, got {min_len}")
    return _pad_to(np.arange(num_frames, dtype=np.int64), min_len)


def _check_crop(height: int, width: int, crop_size: int) -> None:
    if crop_size < 1:
        raise ValueError(f"crop_size must be >= 1, got {crop_size}")
    if crop_size > height or crop_size > width:
        raise ValueError(f"crop_size {crop_size} does not fit frames of {height}x{width} (HxW)")


def random_crop_params(height: int, width: int, crop_size: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left (y, x) of a `crop_size` square placed uniformly at random inside (height, width)."""
    _check_crop(height, width, crop_size)
    y = int(rng.integers(0, height - crop_size + 1))
    x = int(rng.integers(0, width - crop_size + 1))
    return y, x


def center_crop_params(height: int, width: int, crop_size: int) -> tuple[int, int]:
    """Top-left (y, x) of the centred `crop_size` square; an odd margin leaves the extra pixel at the
    bottom / right (floor), e.g. 25 -> 24 starts at 0."""
    _check_crop(height, width, crop_size)
    return (height - crop_size) // 2, (width - crop_size) // 2


def crop(frames: np.ndarray, y: int, x: int, size: int) -> np.ndarray:
    """(T, H, W, 3) -> (T, size, size, 3) view of rows y..y+size-1, columns x..x+size-1."""
    if frames.ndim != 4:
        raise ValueError(f"expected (T, H, W, C) frames, got shape {frames.shape}")
    _, height, width, _ = frames.shape
    if not (0 <= y <= height - size and 0 <= x <= width - size):
        raise ValueError(f"crop {size}x{size} at (y={y}, x={x}) leaves frames of {height}x{width}")
    return frames[:, y:y + size, x:x + size]


def hflip(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, C) -> (T, H, W, C) view mirrored left-right (the whole clip, so motion stays consistent)."""
    return frames[:, :, ::-1]


def train_crop(frames: np.ndarray, crop_size: int, flip: bool, rng: np.random.Generator) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, crop_size, crop_size, 3) uint8, contiguous: random crop, then a
    left-right flip with probability 1/2 when `flip`. The rng draws are y, x, then the flip coin."""
    y, x = random_crop_params(frames.shape[1], frames.shape[2], crop_size, rng)
    out = crop(frames, y, x, crop_size)
    if flip and rng.random() < 0.5:
        out = hflip(out)
    return np.ascontiguousarray(out)


def eval_crop(frames: np.ndarray, crop_size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, crop_size, crop_size, 3) uint8, contiguous: the center crop."""
    y, x = center_crop_params(frames.shape[1], frames.shape[2], crop_size)
    return np.ascontiguousarray(crop(frames, y, x, crop_size))


def to_model_input(batch: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float32 in [-1, 1] (x / 255 * 2 - 1), contiguous.

    Run it on the device, after the uint8 batch was moved there: the float tensor never crosses
    the PCIe bus or a process boundary.
    """
    if batch.dtype != torch.uint8 or batch.ndim != 5 or batch.shape[-1] != 3:
        raise ValueError(f"expected a (B, T, H, W, 3) uint8 batch, got {tuple(batch.shape)} {batch.dtype}")
    x = batch.permute(0, 4, 1, 2, 3).to(torch.float32, memory_format=torch.contiguous_format)
    return x.div_(255.0).mul_(2.0).sub_(1.0)


__all__ = ["I3D_MIN_FRAMES", "center_crop_params", "crop", "eval_crop", "eval_indices", "hflip",
           "random_crop_params", "to_model_input", "train_crop", "train_window"]
