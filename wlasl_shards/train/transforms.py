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


# issue 13 §3/§5: sampling. How a short training clip is padded: "last" (ours) repeats the last frame;
# "first-or-last" is WLASL's own loader (nslt_dataset.py's pad: np.random.random_sample() > 0.5 -> the
# first frame, else the last, appended at the end), one coin per clip that needs padding.
PADS = ("last", "first-or-last")


def _pad_to(indices: np.ndarray, length: int, value: int | None = None) -> np.ndarray:
    """(n,) int64, n >= 1 -> (max(n, length),) int64: `value` (default the last index) repeated at the end."""
    if len(indices) >= length:
        return indices
    fill = indices[-1] if value is None else value
    return np.concatenate([indices, np.full(length - len(indices), fill, np.int64)])


def window_span(clip_len: int, stride: int) -> int:
    """Frames a window of `clip_len` frames, every `stride`-th, spans: (clip_len - 1) * stride + 1."""
    return (clip_len - 1) * stride + 1


def _check_lengths(num_frames: int, clip_len: int, stride: int) -> None:
    for name, value in (("num_frames", num_frames), ("clip_len", clip_len), ("stride", stride)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def train_window(num_frames: int, clip_len: int, rng: np.random.Generator, stride: int = 1,
                 pad: str = "last") -> np.ndarray:
    """Indices of `clip_len` frames, every `stride`-th, in a window starting at a uniformly random
    frame: (clip_len,) int64.

    A video no longer than the window's span takes every `stride`-th frame of the whole video (no
    draw), padded AT THE END up to `clip_len`: with `pad` "last", its last frame, so the clip holds
    the final pose instead of jumping back in time; with "first-or-last" (WLASL's own loader), the
    first or the last frame, by one coin from `rng` (`rng.random() > 0.5`: the first) drawn only
    when padding is needed. stride 1 and pad "last" make the draws this function always made.
    """
    _check_lengths(num_frames, clip_len, stride)
    if pad not in PADS:
        raise ValueError(f"pad must be one of {PADS}, got {pad!r}")
    span = window_span(clip_len, stride)
    if num_frames <= span:
        taken = np.arange(0, num_frames, stride, dtype=np.int64)
        if pad == "first-or-last" and len(taken) < clip_len:
            return _pad_to(taken, clip_len, 0 if rng.random() > 0.5 else None)
        return _pad_to(taken, clip_len)
    start = int(rng.integers(0, num_frames - span + 1))
    return np.arange(start, start + span, stride, dtype=np.int64)


def eval_indices(num_frames: int, min_len: int = I3D_MIN_FRAMES, stride: int = 1) -> np.ndarray:
    """Every `stride`-th frame, padded at the end with the last one up to `min_len`:
    (max(ceil(num_frames / stride), min_len),) int64."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if min_len < 1:
        raise ValueError(f"min_len must be >= 1, got {min_len}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return _pad_to(np.arange(0, num_frames, stride, dtype=np.int64), min_len)


def eval_windows(num_frames: int, clip_len: int, clips: int, stride: int = 1) -> np.ndarray:
    """`clips` uniformly spaced windows of `clip_len` frames, every `stride`-th, one after another:
    (clips * clip_len,) int64 (the multi-view test of mmaction2 and VideoMAE).

    Window k starts at int((k + 1/2) * (num_frames - span + 1) / clips), mmaction2's SampleFrames
    test offsets: the windows' starts divide the possible ones evenly, one window is the middle
    one. A video no longer than the span gives `clips` copies of its padded window (every
    `stride`-th frame, then the last frame), so every video has the same frame count.
    """
    _check_lengths(num_frames, clip_len, stride)
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    span = window_span(clip_len, stride)
    if num_frames <= span:
        return np.tile(_pad_to(np.arange(0, num_frames, stride, dtype=np.int64), clip_len), clips)
    starts = ((np.arange(clips) + 0.5) * (num_frames - span + 1) / clips).astype(np.int64)
    return (starts[:, None] + np.arange(clip_len, dtype=np.int64)[None, :] * stride).reshape(-1)


def eval_frame_indices(num_frames: int, min_len: int = I3D_MIN_FRAMES, stride: int = 1, windows: int = 0,
                       clip_len: int = 1) -> np.ndarray:
    """The frames an eval clip of a `num_frames` video holds: every `stride`-th, padded to `min_len`
    (`eval_indices`), or with `windows` K > 0, K windows of `clip_len` frames one after another
    (`eval_windows`). What the eval loader, `predict` and `features` all take."""
    if windows:
        return eval_windows(num_frames, clip_len, windows, stride)
    return eval_indices(num_frames, min_len, stride)


def split_windows(clips: torch.Tensor, windows: int) -> torch.Tensor:
    """(B, K * L, ...) -> (B * K, L, ...) view: each of a batch's K windows (`eval_windows`) a clip of its own."""
    b, t = clips.shape[:2]
    if windows < 1 or t % windows:
        raise ValueError(f"clips of {t} frames do not split into {windows} windows")
    return clips.reshape(b * windows, t // windows, *clips.shape[2:])


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


__all__ = ["I3D_MIN_FRAMES", "PADS", "center_crop_params", "crop", "eval_crop", "eval_frame_indices", "eval_indices",
           "eval_windows",
           "hflip", "random_crop_params", "split_windows", "to_model_input", "train_crop", "train_window",
           "window_span"]
