"""`predict`: the top-k glosses of video files, preprocessed exactly as the training shards were.

A checkpoint carries the preprocessing of its shards (fps, size, crop, bbox margin, codec, JPEG
quality). Each video goes through the same `wlasl_shards.video` calls `build` makes (probe,
plan_geometry, decode at the same fps and size; for JPEG shards the same ffmpeg JPEG encoding,
decoded with simplejpeg as the loader does), then the evaluation transform (every frame, padded to
I3D's minimum, centre crop; or the checkpoint's frame stride and eval windows, `clip_input`) and the
evaluation rule (logits reduced over time, averaged over windows, softmax).

Crop: a user's video has no signer box, so a checkpoint trained on bbox crops predicts on the
centre square unless `bbox` (x1, y1, x2, y2 in the video's pixels) is given; center stays
center and none stays none. With the box a shard was built with, the frames, and so the
probabilities, are the ones evaluation computes for that shard sample.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from wlasl_shards import shards, video
from wlasl_shards.train import checkpoint as ckpt_io
from wlasl_shards.train import metrics, models, transforms
from wlasl_shards.train.device import autocast, clips_to_device, resolve_device
from wlasl_shards.train.evaluate import check_sampling, model_from_checkpoint, sampling

log = logging.getLogger(__name__)


def crop_mode(crop_resolved: str, bbox: Sequence[float] | None) -> str:
    """The crop mode for a user video from the checkpoint's resolved crop (bbox | center | none)."""
    if crop_resolved == "bbox":
        return "bbox"  # plan_geometry centre-crops when bbox is None
    if bbox is not None:
        log.warning("bbox ignored: the checkpoint's shards were built with crop %r", crop_resolved)
    return crop_resolved


def load_frames(path: str | os.PathLike, prep: dict, bbox: Sequence[float] | None = None) -> tuple[np.ndarray, str]:
    """A video file -> (frames (T, H, W, 3) uint8 as `build` would have stored them, crop note).

    Raises ValueError naming the file when ffmpeg cannot read it or it has no frames.
    """
    mode = crop_mode(prep.get("crop_resolved") or "center", bbox)
    try:
        info = video.probe(path)
        geom = video.plan_geometry(info.width, info.height, mode, int(prep["size"]),
                                   tuple(bbox) if bbox is not None else None, float(prep.get("bbox_margin") or 0.0),
                                   sar=info.sar)
        # The bound the shards were built with (checkpoints from before it: the build default), so that a
        # video whose timestamps claim hours is refused instead of filling memory.
        bound = {"max_frames": int(prep.get("max_frames") or video.DEFAULT_MAX_FRAMES),
                 "max_bytes": shards.MAX_SAMPLE_BYTES}
        if prep.get("codec") == "jpeg":
            # Same ffmpeg JPEGs as the shards, decoded as the loader decodes them: identical pixels.
            blobs = list(video.decode_jpeg(path, geom, float(prep["fps"]), int(prep.get("jpeg_qscale") or 3),
                                           **bound))
            blob, offsets = shards.pack_jpegs(blobs)
            meta = {"frames": shards.frames_meta("jpeg", len(blobs), geom.out_height, geom.out_width, offsets)}
            frames = (shards.decode_frames({shards.EXT_META: meta, shards.EXT_FRAMES["jpeg"]: blob})
                      if blobs else np.empty((0,), np.uint8))
        else:
            decoded = list(video.decode(path, geom, float(prep["fps"]), **bound))
            frames = np.stack(decoded) if decoded else np.empty((0,), np.uint8)
    except video.VideoError as e:
        raise ValueError(f"video {os.fspath(path)}: {e}") from e
    if len(frames) == 0:
        raise ValueError(f"video {os.fspath(path)}: no frames decoded")
    note = mode + (f" ({geom.note})" if geom.note else "")
    return frames, note


def clip_input(frames: np.ndarray, crop_size: int, min_frames: int = transforms.I3D_MIN_FRAMES,
               stride: int = 1, windows: int = 0, clip_len: int = 1) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (1, T', crop, crop, 3) uint8: the evaluation transform, every `stride`-th
    frame (T' = max(ceil(T / stride), min_frames)), or `windows` K > 0 windows of `clip_len` frames
    one after another (T' = K * clip_len; `transforms.eval_windows`)."""
    idx = transforms.eval_frame_indices(len(frames), min_frames, stride, windows, clip_len)
    return torch.from_numpy(transforms.eval_crop(frames[idx], crop_size))[None]


@dataclass(frozen=True)
class PredictConfig:
    """Options of `wlasl-shards predict`."""

    checkpoint: str  # a checkpoint written by `train`
    videos: tuple[str, ...]  # video files (any container and codec ffmpeg reads)
    top_k: int = 5  # glosses per video (at most the class count)
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    # issue 13 §3: sampling; None = the checkpoint's (see `evaluate.sampling`)
    frame_stride: int | None = None  # every S-th frame
    eval_clips: int | None = None  # 0: every (S-th) frame; K: K windows of the checkpoint's clip_len, logits averaged
    # The signer's box (x1, y1, x2, y2) in the videos' pixels, for every video, used when the checkpoint
    # was trained on bbox crops; None crops the centre square (a user's video has no box).
    bbox: tuple[float, float, float, float] | None = None
    progress: bool = True  # tqdm bar over videos

    def check(self) -> None:
        """Raise ValueError naming the first bad option (a bad device is resolve_device's ValueError)."""
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not self.videos:
            raise ValueError("no videos given")
        if self.bbox is not None and len(self.bbox) != 4:
            raise ValueError(f"bbox must be (x1, y1, x2, y2), got {self.bbox!r}")
        check_sampling(self.frame_stride, self.eval_clips)


def predict(config: PredictConfig) -> list[dict]:
    """Top-k glosses of each video: [{"video", "frames", "crop", "top": [{"gloss", "label",
    "probability"}]}], probabilities descending (softmax over all classes of the time-reduced
    logits). ValueError for a bad option; it names the file for a video ffmpeg cannot read.
    """
    config.check()
    # The names the prediction below is written in.
    checkpoint, videos, top_k, device, bbox, progress = (config.checkpoint, config.videos, config.top_k, config.device,
                                                         config.bbox, config.progress)
    ck = ckpt_io.load(checkpoint)
    cfg, prep, classes = ck["config"], ck["preprocessing"], ck["classes"]
    reduce = cfg.get("eval_reduce", "max")
    dev = resolve_device(device)
    model = model_from_checkpoint(ck, dev)
    spec, channels = models.input_from_config(cfg)
    k = min(top_k, len(classes))
    stride, windows = sampling(cfg, config.frame_stride, config.eval_clips)
    out = []
    for path in tqdm(videos, desc="predict", unit="video", disable=not progress, dynamic_ncols=True):
        frames, note = load_frames(path, prep, bbox)
        clip = clip_input(frames, int(cfg["crop_size"]), stride=stride, windows=windows, clip_len=int(cfg["clip_len"]))
        if windows:
            clip = transforms.split_windows(clip, windows)  # (K, clip_len, crop, crop, 3)
        x = clips_to_device(clip, dev, spec, channels)
        with torch.inference_mode(), autocast(dev):
            logits = model(x)
        scores = metrics.reduce_time(logits.float(), reduce)
        if windows:
            scores = metrics.average_windows(scores, windows)
        probs = torch.softmax(scores[0], dim=0).cpu()
        values, labels = probs.topk(k)
        out.append({"video": os.fspath(path), "frames": len(frames), "crop": note,
                    "top": [{"gloss": classes[i], "label": i, "probability": float(p)}
                            for p, i in zip(values.tolist(), labels.tolist())]})
    return out


__all__ = ["PredictConfig", "clip_input", "crop_mode", "load_frames", "predict"]
