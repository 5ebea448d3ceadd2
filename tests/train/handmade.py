"""Tiny hand-made shards for the input-pipeline tests, written with the contract's own functions.

Every sample gets its own class (label == global sample number), so labels identify samples; flat
frames hold label * 7 + t.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import torch

from tests.conftest import encode_jpeg
from wlasl_shards import shards
from wlasl_shards.train import loader
from wlasl_shards.train.data import LoaderConfig

FRAMES, SIZE, CROP, CLIP = 20, 32, 24, 8
TRAIN_SIZES = [7, 5, 9, 4, 6]  # 31 samples, 5 shards: divisible by neither 2 nor 3


def frame(value: int) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8, flat: survives JPEG almost exactly."""
    return np.full((SIZE, SIZE, 3), value % 256, np.uint8)


def sample_blob(label: int, count: int, codec: str) -> tuple[bytes, list[int] | None]:
    if codec == "npy":
        return shards.encode_npy(np.stack([frame(label * 7 + t) for t in range(count)])), None
    return shards.pack_jpegs([encode_jpeg(frame(label * 7 + t), 90) for t in range(count)])


def members(label: int, split: str, count: int, codec: str, bad: str | None) -> list[tuple[str, bytes]]:
    """The tar members of one sample; `bad` breaks it: json | jpeg | no-cls | label."""
    blob, offsets = sample_blob(label, count, codec)
    video_id = f"v{label:03d}.mp4"  # a dot, so the key must be sanitised
    meta = {"video_id": video_id, "label": label, "split": split, "num_frames": count,
            "frames": shards.frames_meta(codec, count, SIZE, SIZE, offsets)}
    if bad == "jpeg":
        blob = bytes(len(blob))  # zeros: offsets valid, no frame decodes
    out = shards.sample_members(shards.sample_key(video_id), meta, blob)
    if bad == "json":
        out = [(n, b"{not json" if n.endswith(".json") else d) for n, d in out]
    elif bad == "no-cls":
        out = [(n, d) for n, d in out if not n.endswith(".cls")]
    elif bad == "label":
        out = [(n, b"seven" if n.endswith(".cls") else d) for n, d in out]
    return out


def make_dataset(root: Path, splits: dict[str, list[int]], codec: str = "jpeg", count: int = FRAMES,
                 bad: dict[int, str] | None = None) -> Path:
    """Shards of `splits` ({split: samples per shard}) and dataset.json under root. Samples are
    numbered across all splits; `bad` maps sample numbers to a way of breaking them."""
    bad = bad or {}
    index_splits, label = {}, 0
    for split, sizes in splits.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        records = []
        for i, size in enumerate(sizes):
            name = shards.shard_name(split, i)
            with tarfile.open(root / name, "w", format=tarfile.PAX_FORMAT) as tar:
                for _ in range(size):
                    for mname, blob in members(label, split, count, codec, bad.get(label)):
                        tar.addfile(shards.tar_member(mname, len(blob)), io.BytesIO(blob))
                    label += 1
            raw = (root / name).read_bytes()
            records.append(shards.ShardRecord(name, size, size * count, len(raw),
                                              hashlib.sha256(raw).hexdigest()).to_json())
        index_splits[split] = {"samples": sum(sizes), "shards": records, "frames": sum(sizes) * count,
                               "bytes": sum(r["bytes"] for r in records), "failed": 0, "missing": 0}
    index = {"format": shards.FORMAT_NAME, "format_version": shards.FORMAT_VERSION,
             "classes": [f"gloss{i}" for i in range(label)], "splits": index_splits,
             "params": {"fps": 25.0, "size": SIZE, "codec": codec}, "crop_resolved": "center", "failed": []}
    (root / shards.INDEX_NAME).write_text(json.dumps(index))
    return root


def cfg(**kw) -> LoaderConfig:
    return LoaderConfig(**{"clip_len": CLIP, "crop_size": CROP, "batch_size": 2, "num_workers": 0,
                           "shuffle_buffer": 4, "pin_memory": False, **kw})


def train_labels(ds: Path, c: LoaderConfig, epoch: int = 0, rank: int = 0, world: int = 1) -> list[int]:
    out = []
    for clips, labels in loader.make_train_loader(ds, c, epoch, rank, world):
        assert clips.shape == (c.batch_size, CLIP, CROP, CROP, 3) and clips.dtype == torch.uint8
        assert labels.dtype == torch.int64
        out += labels.tolist()
    return out


def eval_ids(ds: Path, c: LoaderConfig, split: str = "val", rank: int = 0, world: int = 1) -> list[str]:
    ids = []
    for clips, labels, vids in loader.make_eval_loader(ds, c, split, rank, world):
        assert clips.shape[0] == labels.shape[0] == len(vids)
        ids += vids
    return ids
