"""Trainer fixtures: shards built from the synthetic videos, hand-made npy shards, trained runs.

Runs are small (I3D on 8-frame clips of 40 px) so that every test but the learning one takes
seconds on 2 CPU cores; training runs that several tests inspect are session-wide and read-only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import synth_dataset
from wlasl_shards import shards
from wlasl_shards.preprocess.build import BuildConfig, build
from wlasl_shards.preprocess.synth import SynthConfig

REPO = Path(__file__).resolve().parents[2]

# Small settings for runs on the tiny synthetic shards (4 classes; train 8 / val 4 / test 4 videos).
TINY_SIZE = 48
SMALL = dict(epochs=2, batch_size=2, accumulate=1, optimizer="adam", lr=1e-4, clip_len=8, crop_size=40,
             precise_bn_batches=2, num_workers=0, log_every=1, progress=False, seed=0)

# The learning test's data: >= 10 classes, small frames, short videos.
LEARN_SYNTH = SynthConfig(classes=10, videos_per_class=12, seed=1, sizes=((160, 120),), min_frames=16,
                          max_frames=24, workers=2)
LEARN_SIZE = 64


@pytest.fixture(scope="session")
def tiny_shards(tiny_wlasl, tmp_path_factory) -> Path:
    """JPEG shards of the tiny synthetic dataset (bbox crops, 48 px)."""
    out = tmp_path_factory.mktemp("tiny_shards")
    build(BuildConfig(source=str(tiny_wlasl), output=str(out), size=TINY_SIZE, workers=1, progress=False))
    return out


def write_npy_dataset(root: Path, classes: int = 4, per_class: dict[str, int] | None = None,
                      frames: int | tuple[int, ...] = 10, size: int = 32) -> Path:
    """Shards of deterministic numpy frames (codec npy, no ffmpeg or JPEG involved), one shard per
    split: the inputs are bit-identical on every machine. Class c's videos are a bright square at a
    class-specific place on a dim background that changes with the video and the frame. A tuple of
    `frames` gives video n (counted over all splits) frames[n % len(frames)] frames."""
    lengths = frames if isinstance(frames, tuple) else (frames,)
    per_class = per_class or {"train": 2, "val": 1, "test": 1}
    root.mkdir(parents=True, exist_ok=True)
    splits, n = {}, 0
    for split, count in per_class.items():
        (root / split).mkdir(exist_ok=True)
        name = shards.shard_name(split, 0)
        with tarfile.open(root / name, "w", format=tarfile.PAX_FORMAT) as tar:
            split_frames = 0
            for c in range(classes):
                for _ in range(count):
                    frames = lengths[n % len(lengths)]
                    split_frames += frames
                    t = np.arange(frames)[:, None, None, None]
                    clip = ((t * 7 + n * 13 + np.arange(size)[None, None, :, None] * 3) % 60).astype(np.uint8)
                    clip = np.broadcast_to(clip, (frames, size, size, 3)).copy()
                    y, x = (c * 7) % (size - 8), (c * 11) % (size - 8)
                    clip[:, y:y + 8, x:x + 8] = (200, 50 + 40 * c, 255 - 30 * c)
                    video_id = f"{split}{n:03d}"
                    meta = {"video_id": video_id, "gloss": f"g{c}", "label": c, "split": split, "num_frames": frames,
                            "frames": shards.frames_meta("npy", frames, size, size, None)}
                    members = shards.sample_members(shards.sample_key(video_id), meta, shards.encode_npy(clip))
                    for mname, blob in members:
                        tar.addfile(shards.tar_member(mname, len(blob)), io.BytesIO(blob))
                    n += 1
        raw = (root / name).read_bytes()
        record = shards.ShardRecord(name, classes * count, split_frames, len(raw),
                                    hashlib.sha256(raw).hexdigest())
        splits[split] = {"samples": classes * count, "shards": [record.to_json()]}
    index = {"format": shards.FORMAT_NAME, "format_version": shards.FORMAT_VERSION, "tool_version": "test",
             "classes": [f"g{c}" for c in range(classes)], "splits": splits, "crop_resolved": "center",
             "params": {"fps": 25.0, "size": size, "crop": "center", "bbox_margin": 0.1, "codec": "npy",
                        "jpeg_qscale": 3, "apply_frame_range": False}}
    (root / shards.INDEX_NAME).write_text(json.dumps(index))
    return root


@pytest.fixture(scope="session")
def npy_shards(tmp_path_factory) -> Path:
    """4 classes, 8 train / 4 val / 4 test clips of 10 frames, 64 px, codec npy."""
    return write_npy_dataset(tmp_path_factory.mktemp("npy_shards"), size=64)


# A training run in a fresh interpreter: the same process state (threads, RNG, flags) for every run.
RUN_SCRIPT = """
import json, logging, sys, torch
torch.set_num_threads(2)
logging.basicConfig(level=logging.WARNING)
from wlasl_shards.train.loop import TrainConfig, train
train(TrainConfig(**json.loads(sys.argv[1])))
"""


def train_command(**kw) -> list[str]:
    return [sys.executable, "-c", RUN_SCRIPT, json.dumps(kw)]


def run_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def train_subprocess(**kw) -> None:
    res = subprocess.run(train_command(**kw), env=run_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise AssertionError(f"training subprocess failed ({res.returncode}):\n{res.stderr[-4000:]}")


@pytest.fixture(scope="session")
def reference_run(tiny_shards, tmp_path_factory) -> Path:
    """A finished 2-epoch run on the tiny shards (run in a subprocess, as the resume test's runs are)."""
    run = tmp_path_factory.mktemp("reference_run") / "run"
    train_subprocess(shards=str(tiny_shards), run_dir=str(run), **SMALL)
    return run


@pytest.fixture(scope="session")
def learn_src(tmp_path_factory) -> Path:
    """A 10-class synthetic dataset in the WLASL layout (80 train / 20 val / 20 test videos)."""
    return synth_dataset(tmp_path_factory, "learn_src", LEARN_SYNTH)


@pytest.fixture(scope="session")
def learn_shards(learn_src, tmp_path_factory) -> Path:
    """`learn_src` as JPEG shards, bbox crops of 64 px."""
    out = tmp_path_factory.mktemp("learn_shards")
    build(BuildConfig(source=str(learn_src), output=str(out), size=LEARN_SIZE, workers=2, progress=False))
    return out


# The learning test's recipe: Adam 1e-4 from scratch (SGD 0.01 is for Kinetics init), 16-frame
# clips (the synthetic videos are 16-24 frames, so training clips look like evaluation's), no
# dropout, batches of 4 (more steps for the same CPU time), precise BN on 20 clips.
LEARN = dict(epochs=12, batch_size=4, accumulate=1, optimizer="adam", lr=1e-4, clip_len=16, crop_size=56,
             dropout=0.0, precise_bn_batches=5, num_workers=0, log_every=5, progress=False, seed=0)


@pytest.fixture(scope="session")
def learned_run(learn_shards, tmp_path_factory) -> tuple[Path, dict, float]:
    """(run_dir, report, wall seconds) of training from scratch on `learn_shards` (in this process)."""
    from wlasl_shards.train.loop import TrainConfig, train

    run = tmp_path_factory.mktemp("learned_run") / "run"
    started = time.monotonic()
    report = train(TrainConfig(shards=str(learn_shards), run_dir=str(run), **LEARN))
    return run, report, time.monotonic() - started


# 7 / 3 / 3 one-sample shards per split (see odd_shards).
KEEP = {"train": 7, "val": 3, "test": 3}


@pytest.fixture(scope="session")
def odd_shards(tiny_shards, tmp_path_factory) -> Path:
    """tiny_shards re-packed one sample per shard, KEEP shards per split: no split divides evenly
    between 2 ranks, and one lost shard still leaves data."""
    out = tmp_path_factory.mktemp("odd_shards")
    index = json.loads((tiny_shards / shards.INDEX_NAME).read_text())
    for split, keep in KEEP.items():
        samples = [sample for rec in index["splits"][split]["shards"]
                   for sample in shards.read_samples(open(tiny_shards / rec["name"], "rb"))]
        assert len(samples) >= keep
        records = []
        for i, sample in enumerate(samples[:keep]):
            name = shards.shard_name(split, i)
            (out / split).mkdir(exist_ok=True)
            with tarfile.open(out / name, "w", format=tarfile.PAX_FORMAT) as tar:
                for ext in sorted(k for k in sample if not k.startswith("__")):
                    blob = sample[ext]
                    tar.addfile(shards.tar_member(f"{sample['__key__']}.{ext}", len(blob)), io.BytesIO(blob))
            raw = (out / name).read_bytes()
            frames = json.loads(sample[shards.EXT_META])["frames"]["count"]
            records.append(shards.ShardRecord(name, 1, frames, len(raw), hashlib.sha256(raw).hexdigest()).to_json())
        index["splits"][split].update(samples=keep, shards=records)
    (out / shards.INDEX_NAME).write_text(json.dumps(index))
    return out
