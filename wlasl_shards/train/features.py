"""`extract(cfg)`: per-video I3D features of a dataset's shards, written as WebDataset shards.

The features are what researchers use as "I3D features" (pytorch-i3d's `extract_features.py`): the
Mixed_5c activations of the whole video averaged over space, one 1024-vector per time step,

    (T', 1024) float32,  T' = ceil(T_eval / 8),  T_eval = max(frames, min_frames)

computed with the evaluation transform (every frame, padded at the end with the last one up to
I3D's minimum of 9, centre crop), plus their mean over time, (1024,) float32. A training checkpoint
of another arch (`train --arch`) gives that arch's penultimate features instead: (T', D), T' = 1 where
it pools time before its head (features.json's "arch", "layer" and "dims" say which); an arch that
takes a fixed clip length (MViT, VideoMAE) sees the checkpoint's K eval windows, one step each: (K, D).

Output under OUT, one shard per input shard with the same name (so `<split>/shard-NNNNNN.tar`):

    <key>.features.npy     (T', 1024) float32, NumPy .npy without pickle
    <key>.mean.npy         (1024,) float32, the mean over time of the above
    <key>.cls              the class index, as in the input
    <key>.json             the input metadata, without `frames` (it describes frame members that are
                           not here), plus `features`: layer, shape, source and eval frame counts,
                           crop size, checkpoint name and sha256
    features.json          the index: format, source dataset (with its class list), checkpoint,
                           layer, dims, settings, and per split the shard records (samples, time
                           steps, bytes, sha256, the input shard's sha256, skipped samples)
    features.journal.jsonl resume state: the settings, then one line per finished shard

Keys are the input's, so `wds.WebDataset(OUT/test/...)` yields `features.npy`, `mean.npy`, `cls`
and `json` per video (read the arrays with `np.load(..., allow_pickle=False)`).

What runs where:

    FeatureStream   (loader workers) each worker takes whole input shards, in dataset.json order:
        read_parts      raw samples of one shard, bytes as stored
        map_samples     {"clip": (T_eval, C, C, 3) uint8, "label", "video_id", "key", "meta",
                        "frames"}; a bad sample is skipped and counted here (its reason goes to
                        the index)
        + one SHARD_END record per shard: samples read, kept, skip reasons
    extract         (main process) batches of clips -> `clip_features` on the device -> each
                    video's (T', 1024) -> the writer of its shard; a shard is renamed into place,
                    hashed and journaled when its SHARD_END arrives

Batching: `batch_size` 1 (default) is the exact protocol. With more, the videos of a batch are
padded to the longest with their last frame (as `evaluate` does) and each video's features are cut
back to its own T'. Mixed_5c's temporal receptive field is wide, so every time step of a padded
video sees some of the repeated frames instead of the zero padding a batch-1 pass sees: its
features change, and not by a rounding error (the longest video of each batch is unaffected). Keep
1 unless a measured gain in throughput matters more than exactness. The batch size is part of the
settings a resume checks.

Precision: float32 on the CPU; bf16 autocast on CUDA (as evaluate), features stored as float32.

Resume: a shard listed in the journal whose file still has the recorded size and sha256, made from
an input shard with the recorded sha256, is kept; everything else is (re)computed, and a partial
`.tmp` of an interrupted run is discarded. Settings other than the journal's (checkpoint, crop,
batch size, precision, ...) are an error unless `overwrite`. An input shard that yields fewer (or
more) samples than dataset.json lists stops the run with DataError (rerun to retry), rather than
being recorded as finished with a hole.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset
from tqdm import tqdm

from wlasl_shards import __version__, cache, shards, storage
from wlasl_shards.train import checkpoint as ckpt_io
from wlasl_shards.train import data, models, transforms
from wlasl_shards.train.device import DEVICES, autocast, clips_to_device, resolve_device
from wlasl_shards.train.distributed import loader_worker
from wlasl_shards.train.evaluate import model_from_checkpoint
from wlasl_shards.train.loader import RAISED, WorkerPool, collate
from wlasl_shards.train.models import KINETICS_CLASSES, InceptionI3d, InputSpec, load_init, read_checkpoint
from wlasl_shards.train.plan import ShardPart

log = logging.getLogger(__name__)

FEATURES_FORMAT = "wlasl-shards-features"
FEATURES_VERSION = 1
FEATURES_INDEX = "features.json"
JOURNAL_NAME = "features.journal.jsonl"
LAYER = "Mixed_5c"  # I3D's; the other archs' features are those their head reads ("penultimate")
TIME_STRIDE = 8  # Mixed_5c has ceil(T / 8) time steps: three stride-2 stages in time
KINETICS_CROP = 224  # the crop Kinetics I3D was trained and is usually run at
EXT_FEATURES = "features.npy"
EXT_MEAN = "mean.npy"
SHARD_END = "__shard_end__"  # key of the record that follows the last sample of an input shard


@dataclass(frozen=True)
class FeaturesConfig:
    """What `extract` reads, computes and writes."""

    checkpoint: str  # a checkpoint of `train` (best.pt) or an I3D state_dict such as Kinetics rgb_imagenet.pt
    shards: str  # the dataset: directory written by `build`, or its dataset.json
    out: str  # output directory: shards mirroring the input's names, features.json, the journal
    splits: tuple[str, ...] = ()  # splits to extract; () = every split in dataset.json
    device: str = "auto"  # auto | cpu | cuda
    batch_size: int = 1  # videos per forward pass; > 1 pads shorter videos (module docstring)
    num_workers: int = 2  # loader processes reading and decoding input shards; 0 = this process
    crop_size: int | None = None  # None: the checkpoint's training crop; a state_dict: min(224, frame size)
    min_frames: int = transforms.I3D_MIN_FRAMES  # shorter videos are padded with their last frame
    overwrite: bool = False  # replace features in `out` made with other settings (else ValueError)
    max_consecutive_errors: int = 20  # more bad samples than this in a row stops with DataError
    progress: bool = True  # tqdm bar over videos
    cache_dir: str | None = None  # local cache of remote shards (`wlasl_shards.cache`); None: stream them
    cache_limit: int | None = None  # bytes the cache may hold (least recently used shards go); None: no limit

    def check(self) -> None:
        """Raise ValueError naming the first bad field."""
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        for name in ("batch_size", "min_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_workers", "max_consecutive_errors"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.crop_size is not None and self.crop_size < 1:
            raise ValueError(f"crop_size must be >= 1, got {self.crop_size}")
        if len(set(self.splits)) != len(self.splits):
            raise ValueError(f"splits must not repeat, got {list(self.splits)}")
        cache.make(self.cache_dir, self.cache_limit)


@dataclass(frozen=True)
class FeatureJob:
    """One input shard and the output shard of features made from it (same relative name)."""

    split: str
    name: str  # relative to both roots, e.g. "test/shard-000000.tar"
    part: ShardPart  # where the input is, and its sample count per dataset.json
    source_sha256: str  # the input shard's sha256 per dataset.json


# ------------------------------------------------------------------------------------ the maths


def time_steps(num_frames: int, min_frames: int = transforms.I3D_MIN_FRAMES) -> int:
    """Mixed_5c time steps of a `num_frames` video under the eval transform:
    ceil(max(num_frames, min_frames) / 8)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return math.ceil(max(num_frames, min_frames) / TIME_STRIDE)


def spatial_mean(activations: torch.Tensor) -> torch.Tensor:
    """(B, C, t, h, w) -> (B, t, C) float32: the average over space, one row per time step."""
    if activations.dim() != 5:
        raise ValueError(f"expected (B, C, t, h, w) activations, got {tuple(activations.shape)}")
    return activations.float().mean(dim=(3, 4)).transpose(1, 2)


def feature_layer(arch: str) -> str:
    return LAYER if arch == "i3d" else "penultimate"


def feature_steps(arch: str, num_frames: int, min_frames: int, windows: int = 0) -> int:
    """Time steps of an `arch` model's features of a `num_frames` video: `time_steps` for the archs whose
    features keep time (I3D, S3D: stride 8), 1 for those that pool time before their head, and with
    `windows` K (the archs that take a fixed clip length) one step per window."""
    if windows:
        return windows
    return time_steps(num_frames, min_frames) if models.get(arch).time_logits else 1


@torch.inference_mode()
def clip_features(model: torch.nn.Module, clips: torch.Tensor, device: torch.device, arch: str = "i3d",
                  spec: InputSpec = models.I3D_INPUT, channels: str = "rgb", windows: int = 0) -> torch.Tensor:
    """uint8 clips (B, T, C, C, 3) -> features (B, t, D) float32 on the CPU: I3D's Mixed_5c averaged over
    space (t = ceil(T / 8), D = 1024), other archs' `models.clip_features` (their penultimate features).
    With `windows` K, each clip is K windows one after another (`transforms.eval_windows`), and t = K:
    one step per window, for the archs that take a fixed clip length.

    The uint8 batch crosses to the device, the floats are made there (per `spec`, `channels`); bf16
    autocast on CUDA.
    """
    batch = len(clips)
    if windows:
        clips = transforms.split_windows(clips, windows)  # (B * K, L, C, C, 3)
    x = clips_to_device(clips, device, spec, channels)
    with autocast(device):
        if arch == "i3d":
            return spatial_mean(model.features(x)).cpu()
        feats = models.clip_features(model, arch, x)
    feats = feats.float().transpose(1, 2)  # (B [* K], t, D)
    if windows:
        feats = feats.reshape(batch, windows, -1)  # each window's (t = 1) features, one step per window
    return feats.cpu()


# --------------------------------------------------------------------------------- the model


def load_feature_model(path: str | os.PathLike, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The model of a checkpoint file, in eval mode on `device`, and what the index records of it:
    {"name", "sha256", "kind": "training" | "state_dict", "crop_size", "preprocessing", "arch", "spec",
    "channels", "windows"} (crop_size and preprocessing None for a state_dict; windows: (K, clip_len,
    frame_stride) of the checkpoint's eval windows for an arch that takes a fixed clip length, else None).

    Decided by content: a file `train` wrote is loaded as `evaluate` loads it (its arch, its input
    convention); anything else must
    be an I3D state_dict (the Kinetics layout; any head or none, `module.` prefixes and a
    {"model": ...} wrapper are fine), loaded into InceptionI3d(400): the head is not used here.
    Files are read with weights_only=True. ValueError names the file and what is wrong with it.
    """
    path = os.fspath(path)
    # Read once to tell the kinds apart; each kind's loader then reads it again with its own checks.
    obj = read_checkpoint(path)
    ours = isinstance(obj, Mapping) and obj.get("format") == ckpt_io.CHECKPOINT_FORMAT
    del obj
    info: dict[str, Any] = {"name": os.path.basename(path), "sha256": storage.sha256(path)[0],
                            "kind": "training" if ours else "state_dict", "crop_size": None, "preprocessing": None,
                            "arch": "i3d", "spec": models.I3D_INPUT, "channels": "rgb", "windows": None}
    if ours:
        ck = ckpt_io.load(path)
        info["crop_size"] = int(ck["config"]["crop_size"])
        info["preprocessing"] = ck["preprocessing"]
        info["arch"] = ck["config"].get("arch", "i3d")
        info["spec"], info["channels"] = models.input_from_config(ck["config"])
        arch = models.get(info["arch"])
        if arch.frames is not None:  # whole videos cannot be fed to it: its eval windows, one step each
            cfg = ck["config"]
            info["windows"] = (max(1, int(cfg.get("eval_clips") or 1)), int(cfg["clip_len"]),
                               int(cfg.get("frame_stride") or 1))
        return model_from_checkpoint(ck, device), info
    model = InceptionI3d(KINETICS_CLASSES)
    try:
        load_init(model, path)
    except ValueError as e:
        raise ValueError(f"{e} (features takes a checkpoint written by `wlasl-shards train` or an I3D "
                         f"state_dict such as the Kinetics-400 rgb_imagenet.pt)") from None
    return model.to(device).eval(), info


def feature_crop_size(asked: int | None, ck_info: dict, index: dict, where: str) -> int:
    """The crop side: `asked`, else the checkpoint's training crop, else min(224, the dataset's
    frame size); ValueError when it is larger than the dataset's frames."""
    size = index["params"].get("size")
    if asked is not None:
        crop = asked
        if ck_info["crop_size"] is not None and asked != ck_info["crop_size"]:
            log.warning("crop %d differs from the %d the checkpoint was trained with", asked, ck_info["crop_size"])
    elif ck_info["crop_size"] is not None:
        crop = ck_info["crop_size"]
    else:
        crop = min(KINETICS_CROP, size) if isinstance(size, int) else KINETICS_CROP
    data.check_crop(index, crop, where)
    return crop


# ------------------------------------------------------------------------------------- reading


def feature_example(sample: dict, crop_size: int, min_frames: int, num_classes: int,
                    windows: tuple[int, int, int] | None = None) -> dict:
    """Raw sample -> {"clip": (max(T, min_frames), crop, crop, 3) uint8 tensor, "label", "video_id",
    "key", "meta" (parsed), "frames": T}: every frame decoded once, centre crop, padded at the end
    (`transforms.eval_indices`), i.e. the evaluation transform; with `windows` (K, clip_len, stride),
    the K eval windows one after another instead (`transforms.eval_windows`)."""
    meta, label = data.parse_sample(sample, num_classes)
    fmeta = meta["frames"]
    count = shards.frame_count(meta)
    y, x = transforms.center_crop_params(int(fmeta["height"]), int(fmeta["width"]), crop_size)
    frames = shards.decode_frames({**sample, shards.EXT_META: meta}, None, (y, x, crop_size))
    k, clip_len, stride = windows or (0, 1, 1)
    # fancy indexing: a contiguous copy
    clip = frames[transforms.eval_frame_indices(count, min_frames, stride, k, clip_len)]
    return {"clip": torch.from_numpy(clip), "label": label, "video_id": str(meta.get("video_id", "")),
            "key": sample["__key__"], "meta": meta, "frames": count}


def _counted(samples: Iterable[dict], read: list[int]) -> Iterator[dict]:
    """`samples` as they are, adding one to read[0] per sample (bad ones included: they are read)."""
    for sample in samples:
        read[0] += 1
        yield sample


class FeatureStream(IterableDataset):
    """Eval clips of whole input shards, each worker its share of the shards; every shard's
    samples are followed by a SHARD_END record {"__shard_end__": name, "read", "kept", "reasons"}."""

    def __init__(self, jobs: list[FeatureJob], crop_size: int, min_frames: int, num_classes: int,
                 max_consecutive_errors: int, shard_cache: cache.ShardCache | None = None,
                 windows: tuple[int, int, int] | None = None):
        self.jobs, self.crop_size, self.min_frames = jobs, crop_size, min_frames
        self.num_classes, self.max_consecutive_errors = num_classes, max_consecutive_errors
        self.shard_cache, self.windows = shard_cache, windows

    def __iter__(self) -> Iterator[dict]:
        return self.worker_stream(*loader_worker())

    def worker_stream(self, worker: int, workers: int) -> Iterator[dict]:
        """Worker `worker` of `workers`' share: every workers-th job from the worker-th on."""
        errors = data.SkipCounter(self.max_consecutive_errors)
        for job in self.jobs[worker::workers]:
            read, kept, reasons = [0], 0, len(errors.reasons)
            stream = data.read_parts([job.part], errors, shard_cache=self.shard_cache)
            stream = _counted(stream, read)  # raw samples of one shard, in order
            stream = data.map_samples(stream, lambda s: feature_example(
                s, self.crop_size, self.min_frames, self.num_classes, self.windows), errors)  # decoded eval clips
            for example in stream:
                kept += 1
                yield {**example, "shard": job.name}
            yield {SHARD_END: job.name, "read": read[0], "kept": kept, "reasons": errors.reasons[reasons:]}


# ------------------------------------------------------------------------------------- writing


def feature_members(key: str, meta: dict, label: int, features: np.ndarray, info: dict) -> list[tuple[str, bytes]]:
    """The (member name, bytes) of one output sample, in a fixed order: features (T', 1024) float32,
    their mean (1024,), the label, and the input metadata (minus `frames`) with `features` = info."""
    features = np.asarray(features, dtype=np.float32)
    out_meta = {k: v for k, v in meta.items() if k != "frames"}
    out_meta["features"] = {**info, "shape": list(features.shape)}
    return [
        (f"{key}.{EXT_FEATURES}", shards.npy_bytes(features)),
        (f"{key}.{EXT_MEAN}", shards.npy_bytes(features.mean(axis=0, dtype=np.float32))),
        (f"{key}.{shards.EXT_LABEL}", str(int(label)).encode()),
        (f"{key}.{shards.EXT_META}", json.dumps(out_meta, separators=(",", ":")).encode()),
    ]


class FeatureShardWriter:
    """One output shard, written as `<name>.tmp`, renamed into place after fsync when finished."""

    def __init__(self, root: Path, job: FeatureJob):
        self.job = job
        (root / job.name).parent.mkdir(parents=True, exist_ok=True)
        self.tar = shards.TarWriter(root / job.name)
        self.samples = self.steps = 0

    def add(self, members: list[tuple[str, bytes]], steps: int) -> None:
        self.tar.add(members)
        self.samples += 1
        self.steps += steps

    def finish(self, skipped: int, reasons: list[str]) -> dict:
        """Close, fsync, rename; the shard's record for the journal and the index."""
        size, sha256 = self.tar.close()
        return {"name": self.job.name, "split": self.job.split, "samples": self.samples, "steps": self.steps,
                "bytes": size, "sha256": sha256, "source_sha256": self.job.source_sha256, "skipped": skipped,
                "skip_reasons": reasons}

    def abandon(self) -> None:
        """Close without renaming: the `.tmp` stays behind and the next run discards it."""
        self.tar.abandon()


# -------------------------------------------------------------------------------- resume state


def _read_journal(path: Path) -> tuple[dict | None, dict[str, dict]]:
    """(settings, shard name -> its latest record) of a journal; complete lines only (a kill
    during an append leaves a partial last line, which is dropped)."""
    entries = storage.read_lines(path)
    first = entries[0] if entries else None
    settings = first.get("settings") if isinstance(first, dict) else None
    records = {e["shard"]["name"]: e["shard"] for e in entries[1:]
               if isinstance(e, dict) and isinstance(e.get("shard"), dict)}
    return settings, records


def _finished(record: dict | None, job: FeatureJob, out: Path) -> bool:
    """Is the journal's record of `job` a shard still on disk as written, from the same input?"""
    if record is None or record.get("source_sha256") != job.source_sha256:
        return False
    path = out / job.name
    return (path.is_file() and path.stat().st_size == record.get("bytes")
            and storage.sha256(path)[0] == record.get("sha256"))


def prepare_out(out: Path, settings: dict, overwrite: bool) -> dict[str, dict]:
    """Make `out` ready for a run with `settings`: the journal's records when its settings are
    these, else (with `overwrite`) a fresh journal, the earlier run's shards and index removed."""
    out.mkdir(parents=True, exist_ok=True)
    journal = out / JOURNAL_NAME
    old, records = _read_journal(journal)
    if old == settings:
        return records
    if old is not None and not overwrite:
        differs = ", ".join(f"{k}: {old.get(k)!r} there vs {v!r}" for k, v in settings.items() if old.get(k) != v)
        raise ValueError(f"{out} holds features made with other settings ({differs}); use another "
                         f"output directory, or overwrite=True (--overwrite) to replace them")
    for record in records.values():  # only files this tool wrote and journaled
        (out / record["name"]).unlink(missing_ok=True)
    (out / FEATURES_INDEX).unlink(missing_ok=True)
    storage.write_bytes(journal, (json.dumps({"settings": settings}) + "\n").encode("utf-8"))
    return {}


def _check_out(out: Path, dataset: str | os.PathLike) -> None:
    """The output must not be the input (its shards have the same names)."""
    source = Path(storage.dataset_url(dataset)).parent
    if (out / shards.INDEX_NAME).exists() or (source.exists() and out.resolve() == source.resolve()):
        raise ValueError(f"output directory {out} holds a dataset ({shards.INDEX_NAME}); features need "
                         f"a directory of their own")


def _jobs(dataset: str | os.PathLike, index: dict, split: str) -> list[FeatureJob]:
    entries = index["splits"][split]["shards"] if split in index["splits"] else []
    jobs = []
    for part, entry in zip(data.shard_parts(dataset, split, index), entries):
        name = str(entry["name"])
        if os.path.isabs(name) or ".." in Path(name).parts:
            raise ValueError(f"{storage.dataset_url(dataset)}: shard name {name!r} leaves the dataset directory")
        jobs.append(FeatureJob(split, name, part, str(entry["sha256"])))
    return jobs


# ------------------------------------------------------------------------------------ the run


def extract(cfg: FeaturesConfig) -> dict:
    """Features of every video of `cfg.splits` of `cfg.shards` -> shards under `cfg.out` and
    `features.json` (see the module docstring); returns that index.

    The index lists the splits asked for plus any other split whose shards an earlier run with
    the same settings finished. Raises ValueError for bad arguments, files or settings, and
    data.DataError when reading the input fails (finished shards are kept: rerun to go on).
    """
    cfg.check()
    out = Path(cfg.out)
    index = cache.load_index(cfg.shards, cache.make(cfg.cache_dir, cfg.cache_limit))
    where = storage.dataset_url(cfg.shards)
    splits = cfg.splits or tuple(index["splits"])
    all_jobs = {s: _jobs(cfg.shards, index, s) for s in splits}  # ValueError for a split it lacks
    for split in index["splits"]:
        all_jobs.setdefault(split, _jobs(cfg.shards, index, split))
    _check_out(out, cfg.shards)

    device = resolve_device(cfg.device)
    model, ck_info = load_feature_model(cfg.checkpoint, device)
    crop = feature_crop_size(cfg.crop_size, ck_info, index, where)
    if ck_info["preprocessing"] is not None:
        ckpt_io.warn_preprocessing_differs(ck_info["preprocessing"], index, where)
    precision = "bfloat16-autocast" if device.type == "cuda" else "float32"
    layer, dims = feature_layer(ck_info["arch"]), models.feature_dim(ck_info["arch"])
    settings = {"checkpoint_sha256": ck_info["sha256"], "layer": layer, "crop_size": crop,
                "min_frames": cfg.min_frames, "batch_size": cfg.batch_size, "precision": precision}
    records = prepare_out(out, settings, cfg.overwrite)

    todo = [j for s in splits for j in all_jobs[s] if not _finished(records.get(j.name), j, out)]
    for job in todo:  # a partial shard of an interrupted run
        (out / (job.name + ".tmp")).unlink(missing_ok=True)
    total = sum(j.part.count for j in todo)
    log.info("%s: %d of %d shards to compute (%d videos), crop %d, %s on %s", where, len(todo),
             sum(len(all_jobs[s]) for s in splits), total, crop, precision, device)
    info = {"layer": layer, "dims": dims, "crop_size": crop, "checkpoint": ck_info["name"],
            "checkpoint_sha256": ck_info["sha256"]}
    if ck_info["windows"]:  # an arch of a fixed clip length: one feature step per eval window
        k, clip_len, stride = ck_info["windows"]
        info["windows"] = {"clips": k, "clip_len": clip_len, "frame_stride": stride}
    if todo:
        _run(model, device, todo, cfg, crop, len(index["classes"]), info, out, records, total, ck_info)

    done = {s: [records[j.name] for j in jobs] for s, jobs in all_jobs.items()
            if s in splits or (jobs and all(_finished(records.get(j.name), j, out) for j in jobs))}
    result = {
        "format": FEATURES_FORMAT,
        "format_version": FEATURES_VERSION,
        "tool_version": __version__,
        "source": {"dataset": where, "format_version": index["format_version"],
                   "classes": index["classes"], "params": index["params"],
                   "crop_resolved": index.get("crop_resolved")},
        "checkpoint": {k: ck_info[k] for k in ("name", "sha256", "kind")},
        "layer": layer,
        "dims": dims,
        "arch": ck_info["arch"],
        "time_stride": TIME_STRIDE,
        "windows": info.get("windows"),  # a fixed-length arch's eval windows (one step each), else None
        "members": {"features": EXT_FEATURES, "mean": EXT_MEAN, "label": shards.EXT_LABEL,
                    "meta": shards.EXT_META},
        "settings": settings,
        "splits": {s: {"samples": sum(r["samples"] for r in recs), "skipped": sum(r["skipped"] for r in recs),
                       "shards": recs} for s, recs in done.items()},
    }
    storage.write_json(out / FEATURES_INDEX, result, indent=1)
    return result


def _run(model: torch.nn.Module, device: torch.device, todo: list[FeatureJob], cfg: FeaturesConfig, crop: int,
         num_classes: int, info: dict, out: Path, records: dict[str, dict], total: int, ck_info: dict) -> None:
    """Compute and write the shards of `todo`; each finished one goes into `records` and the journal."""
    stream = FeatureStream(todo, crop, cfg.min_frames, num_classes, cfg.max_consecutive_errors,
                           cache.make(cfg.cache_dir, cfg.cache_limit), ck_info["windows"])
    workers = min(cfg.num_workers, len(todo))
    # Worker processes whose clips cross in reused shared-memory slots (`loader.WorkerPool`), in
    # DataLoader's round-robin order; errors come as `report_errors` records.
    pool = WorkerPool.sized(workers, cfg.batch_size, ahead=2) if workers else None
    items = pool.run([(stream, w, workers) for w in range(workers)]) if pool else iter(stream)
    pin = device.type == "cuda"
    jobs = {j.name: j for j in todo}
    writers: dict[str, FeatureShardWriter] = {}
    pending: list[dict] = []
    bar = tqdm(total=total, desc="features", unit="video", disable=not cfg.progress, dynamic_ncols=True)

    def writer(name: str) -> FeatureShardWriter:
        if name not in writers:
            writers[name] = FeatureShardWriter(out, jobs[name])
        return writers[name]

    def flush() -> None:
        if not pending:
            return
        clips, labels, _ = collate(pending, pin)
        k = ck_info["windows"][0] if ck_info["windows"] else 0
        feats = clip_features(model, clips, device, ck_info["arch"], ck_info["spec"], ck_info["channels"],
                              k)  # (B, t, D)
        for example, label, f in zip(pending, labels.tolist(), feats):
            steps = feature_steps(ck_info["arch"], example["frames"], cfg.min_frames, k)
            # The video's own steps; with batch_size > 1 the rest are those of its padding.
            own = f[:steps].numpy()
            extra = {"source_frames": example["frames"], "eval_frames": len(example["clip"])}
            writer(example["shard"]).add(feature_members(example["key"], example["meta"], label, own,
                                                        {**info, **extra}), steps)
        bar.update(len(pending))
        pending.clear()

    try:
        for item in items:
            if RAISED in item:
                raise item[RAISED]
            if SHARD_END not in item:
                pending.append(item)
                if len(pending) == cfg.batch_size:
                    flush()
                continue
            flush()  # this shard's last samples may be waiting
            job = jobs[item[SHARD_END]]
            if item["read"] != job.part.count:
                raise data.DataError(
                    f"input shard {job.part.url} gave {item['read']} samples, dataset.json lists {job.part.count}"
                    + (f" ({item['reasons'][-1]})" if item["reasons"] else "")
                    + "; the shards finished so far are kept, rerun to retry")
            skipped = item["read"] - item["kept"]
            bar.update(skipped)
            record = writer(job.name).finish(skipped, item["reasons"])
            del writers[job.name]
            records[job.name] = record
            storage.append_line(out / JOURNAL_NAME, {"shard": record})
            log.debug("finished %s: %d samples, %d skipped", job.name, record["samples"], skipped)
    finally:
        getattr(items, "close", lambda: None)()  # the pool's streams stop now
        if pool is not None:
            pool.close()
        for w in writers.values():
            w.abandon()
        bar.close()


__all__ = ["EXT_FEATURES", "EXT_MEAN", "FEATURES_FORMAT", "FEATURES_VERSION", "FeatureStream", "FeaturesConfig",
           "FeatureJob", "FeatureShardWriter", "FEATURES_INDEX", "JOURNAL_NAME", "LAYER", "TIME_STRIDE",
           "clip_features", "extract", "feature_crop_size", "feature_example", "load_feature_model", "prepare_out",
           "feature_layer", "feature_members", "feature_steps", "spatial_mean", "time_steps"]
