"""`wlasl-shards build`: a catalog of videos -> per-split WebDataset shards + dataset.json.

Per split, the items are shuffled with the seed, converted in parallel (ffmpeg decode + JPEG/npy encode
in worker processes (ffmpeg itself encodes the JPEGs), at most `2 * workers` videos in flight, results consumed in order) and appended to
shards that close before they would pass `shard_size` bytes. Order and boundaries depend only on the
inputs and options, never on timing or worker count, so builds are byte-identical.

Crash safety: a shard is written as `*.tar.tmp` and renamed when complete; then one line describing it
(and the failures among its videos) is appended to `OUTPUT/.build/<split>.jsonl` and fsynced. A re-run
keeps the shards its journal lists, deletes anything after them and carries on from there.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import hashlib
import io
import json
import logging
import os
import random
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from wlasl_shards import __version__, shards
from wlasl_shards.preprocess.sources import Catalog, Item, SourceError, load_catalog
from wlasl_shards.video import (CROP_MODES, VideoError, decode, decode_jpeg, ffmpeg_binary, plan_geometry,
                                probe)

log = logging.getLogger(__name__)

STATE_DIR = ".build"
PARAMS_FILE = "params.json"


@dataclass(frozen=True)
class BuildConfig:
    """Options of `wlasl-shards build`; every field but the last five is recorded in dataset.json."""

    source: str  # dataset root (WLASL layout) or manifest file (.csv / .jsonl)
    subset: str = "all"  # 100 | 300 | 1000 | 2000 | all: keep the first N glosses
    split_file: str | None = None  # an nslt_<N>.json to use instead of the one found in SOURCE
    fps: float = 25.0  # output frame rate
    crop: str = "auto"  # auto (bbox when boxes exist, else center) | bbox | center | none
    size: int = 256  # output side (crop bbox/center: size x size; none: shorter side)
    bbox_margin: float = 0.1  # bbox crops grow the box's longer side by this fraction
    codec: str = "jpeg"  # jpeg (all frames in one blob, decoded per frame) | npy (raw, lossless)
    jpeg_qscale: int = 3  # ffmpeg's JPEG quantiser scale, 2 (best) .. 31; 3 is visually lossless at 256 px
    apply_frame_range: bool = False  # cut [frame_start, frame_end]; off for the (already cut) Kaggle copy
    min_frames: int = 9  # shorter videos (after resampling) are recorded as failed; I3D needs 9
    shard_size: int = 128 * 2**20  # a shard closes before it would pass this many bytes
    seed: int = 0  # sample shuffle before sharding
    timeout: float = 300.0  # seconds per video before ffmpeg is killed and the video recorded as failed
    # Not recorded (they do not change the output):
    output: str = "shards"  # where shards and dataset.json go
    workers: int = 0  # processes; 0 = all cores
    overwrite: bool = False  # replace an OUTPUT built with other options
    max_consecutive_failures: int = 200  # stop when this many videos in a row fail (broken ffmpeg, wrong files)
    progress: bool = True  # tqdm bar

    def params(self) -> dict[str, Any]:
        """The options that determine the output, as stored in dataset.json."""
        skip = {"output", "workers", "overwrite", "max_consecutive_failures", "progress"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}

    def check(self) -> None:
        """Raise ValueError naming the first bad option."""
        if not self.fps > 0:
            raise ValueError(f"--fps must be > 0, got {self.fps}")
        if self.crop not in ("auto", *CROP_MODES):
            raise ValueError(f"--crop must be one of auto, {', '.join(CROP_MODES)}, got {self.crop!r}")
        if self.size < 16:
            raise ValueError(f"--size must be >= 16, got {self.size}")
        if self.codec not in shards.CODECS:
            raise ValueError(f"--codec must be one of {', '.join(shards.CODECS)}, got {self.codec!r}")
        if not 2 <= self.jpeg_qscale <= 31:
            raise ValueError(f"--jpeg-qscale must be in 2..31, got {self.jpeg_qscale}")
        if self.min_frames < 1:
            raise ValueError(f"--min-frames must be >= 1, got {self.min_frames}")
        if self.shard_size < 1 << 16:
            raise ValueError(f"--shard-size must be >= 64 KiB, got {self.shard_size}")
        if self.bbox_margin < 0:
            raise ValueError(f"--bbox-margin must be >= 0, got {self.bbox_margin}")
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {self.workers}")
        if not self.timeout > 0:
            raise ValueError(f"--timeout must be > 0, got {self.timeout}")


class BuildError(RuntimeError):
    """The build cannot go on (bad OUTPUT, too many failures in a row); what is done is kept."""


# ------------------------------------------------------------------------------ one video -> sample


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to convert one video (picklable, small)."""

    item: Item
    gloss: str
    crop: str  # resolved: bbox | center | none
    source_root: str
    params: dict


@dataclass(frozen=True)
class Converted:
    key: str
    label: int
    members: list[tuple[str, bytes]]
    frames: int


@dataclass(frozen=True)
class Failed:
    video_id: str
    path: str
    reason: str


def _relative(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)
    return path if rel.startswith("..") else rel


def convert(job: Job) -> Converted | Failed:
    """Decode, resample, crop, resize and encode one video. Never raises for a bad video."""
    item, p = job.item, job.params
    rel = _relative(item.path, job.source_root)
    try:
        info = probe(item.path, timeout=min(p["timeout"], 60.0))
        geom = plan_geometry(info.width, info.height, job.crop, p["size"], item.bbox, p["bbox_margin"])
        frame_range = item.frame_range if p["apply_frame_range"] else None
        warnings: list[str] = []
        args = dict(frame_range=frame_range, timeout=p["timeout"], threads=1, warnings=warnings)
        if p["codec"] == "jpeg":
            blobs = list(decode_jpeg(item.path, geom, p["fps"], p["jpeg_qscale"], **args))
            count = len(blobs)
            offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).tolist()
            blob = b"".join(blobs)
        else:
            stack = list(decode(item.path, geom, p["fps"], **args))
            count = len(stack)
            offsets = None
            blob = shards.encode_npy(np.stack(stack)) if stack else b""
        if count < p["min_frames"]:
            return Failed(item.video_id, rel, f"too short: {count} frames at {p['fps']:g} fps "
                                              f"< --min-frames {p['min_frames']}")
    except VideoError as e:
        return Failed(item.video_id, rel, str(e))
    meta = {
        "video_id": item.video_id,
        "gloss": job.gloss,
        "label": item.label,
        "split": item.split,
        "signer_id": item.signer_id,
        "source_path": rel,
        "source_fps": info.fps,
        "source_size": [info.width, info.height],
        "fps": p["fps"],
        "num_frames": count,
        "crop_box": list(geom.crop) if geom.crop else None,
        "frame_range": list(frame_range) if frame_range else None,
        "frames": shards.frames_meta(p["codec"], count, geom.out_height, geom.out_width, offsets),
    }
    if geom.note:
        meta["crop_note"] = geom.note
    if warnings:
        meta["decode_warnings"] = warnings
    key = shards.sample_key(item.video_id)
    return Converted(key, item.label, shards.sample_members(key, meta, blob), count)


def ordered_map(fn: Callable, jobs: Iterable, workers: int) -> Iterator:
    """fn over jobs in worker processes, results in input order, at most 2 * workers in flight,
    so memory stays bounded whatever the number of jobs. workers == 1 runs in this process."""
    if workers == 1:
        yield from map(fn, jobs)
        return
    with cf.ProcessPoolExecutor(workers) as pool:
        pending: collections.deque = collections.deque()
        for job in jobs:
            pending.append(pool.submit(fn, job))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# ----------------------------------------------------------------------------------------- writing


class _HashingFile(io.RawIOBase):
    """File wrapper that hashes and counts what is written through it."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.f.write(b)


class ShardWriter:
    """Writes one shard at a time as `<name>.tmp`, renamed (after fsync) when finished."""

    def __init__(self, root: Path, split: str, index: int, limit: int):
        self.root, self.split, self.index, self.limit = root, split, index, limit
        self.tar: tarfile.TarFile | None = None

    def _open(self) -> None:
        self.name = shards.shard_name(self.split, self.index)
        self.tmp = self.root / (self.name + ".tmp")
        self.file = open(self.tmp, "wb")
        self.hashed = _HashingFile(self.file)
        self.tar = tarfile.open(fileobj=self.hashed, mode="w", format=tarfile.PAX_FORMAT)
        self.samples = self.frames = 0
        self.labels: set[int] = set()

    @staticmethod
    def tar_size(members: list[tuple[str, bytes]]) -> int:
        return sum(512 + -(-len(data) // 512) * 512 for _, data in members)

    def full_for(self, sample: Converted) -> bool:
        """Would this sample push a non-empty shard past the limit? A closed tar ends with two zero
        blocks and is padded to a multiple of tarfile.RECORDSIZE."""
        if self.tar is None or self.samples == 0:
            return False
        end = self.tar.offset + self.tar_size(sample.members) + 1024
        return -(-end // tarfile.RECORDSIZE) * tarfile.RECORDSIZE > self.limit

    def add(self, sample: Converted) -> None:
        if self.tar is None:
            self._open()
        for name, data in sample.members:
            self.tar.addfile(shards.tar_member(name, len(data)), io.BytesIO(data))
        self.samples += 1
        self.frames += sample.frames
        self.labels.add(sample.label)

    def finish(self) -> shards.ShardRecord | None:
        """Close, fsync and rename the open shard; None when none is open."""
        if self.tar is None:
            return None
        self.tar.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.root / self.name)
        record = shards.ShardRecord(self.name, self.samples, self.frames, self.hashed.size,
                                    self.hashed.sha.hexdigest())
        self.tar = None
        self.index += 1
        return record


def _append_line(path: Path, entry: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_journal(path: Path) -> list[dict]:
    """Complete lines only: a kill during the append leaves a partial last line, which is dropped."""
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return entries


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ output


def prepare_output(out: Path, params: dict, overwrite: bool) -> bool:
    """Make OUTPUT ready. Returns True when it holds a resumable build with the same parameters.

    A non-empty OUTPUT built with other options (or holding other files) is refused unless
    `overwrite`, which removes only what a build writes (split folders, dataset.json, .build).
    """
    state = out / STATE_DIR / PARAMS_FILE
    if out.exists() and not out.is_dir():
        raise BuildError(f"OUTPUT {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        previous = json.loads(state.read_text()) if state.is_file() else None
        if previous == params:
            return True
        if not overwrite:
            if previous is None:
                why = "holds files that are not a wlasl-shards build"
            else:
                diff = [f"{k}: {previous.get(k)!r} -> {v!r}" for k, v in params.items() if previous.get(k) != v]
                why = "was built with other options (" + "; ".join(diff) + ")"
            raise BuildError(f"OUTPUT {str(out)!r} {why}; pass --overwrite to replace it")
        for name in (*shards.SPLITS, STATE_DIR, shards.INDEX_NAME):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    _atomic_write_json(state, params)
    return False


def shuffled(items: list[Item], seed: int, split: str) -> list[Item]:
    """The split's items in the seeded order they are written in (every shard mixes classes)."""
    order = sorted(items, key=lambda it: it.video_id)
    random.Random(f"{seed}:{split}").shuffle(order)
    return order


def _build_split(cfg: BuildConfig, catalog: Catalog, split: str, items: list[Item], crop: str,
                 workers: int, bar: tqdm, failed_before: int) -> tuple[list[dict], list[dict]]:
    """Write one split's shards, resuming from its journal. Returns (journal entries, failures)."""
    out = Path(cfg.output)
    (out / split).mkdir(exist_ok=True)
    journal_path = out / STATE_DIR / f"{split}.jsonl"
    journal = _read_journal(journal_path)
    done = journal[-1]["end"] if journal else 0
    kept = {e["shard"]["name"] for e in journal if e["shard"]}
    for stray in sorted((out / split).iterdir()):
        if f"{split}/{stray.name}" not in kept:
            stray.unlink()
    bar.update(done)
    params = cfg.params()
    jobs = (Job(it, catalog.classes[it.label], crop, _source_root(cfg), params) for it in items[done:])
    writer = ShardWriter(out, split, sum(1 for e in journal if e["shard"]), cfg.shard_size)
    failures: list[dict] = []
    in_a_row = 0

    def close(end: int) -> None:
        labels = sorted(writer.labels) if writer.tar is not None else []
        record = writer.finish()
        entry = {"end": end, "shard": record.to_json() if record else None, "labels": labels,
                 "failed": failures.copy()}
        _append_line(journal_path, entry)
        journal.append(entry)
        failures.clear()

    for pos, result in enumerate(ordered_map(convert, jobs, workers), done):
        bar.update(1)
        if isinstance(result, Failed):
            failures.append({"video_id": result.video_id, "split": split, "path": result.path,
                             "reason": result.reason})
            in_a_row += 1
            if in_a_row >= cfg.max_consecutive_failures:
                # The open shard stays a .tmp and is redone on resume, so shard boundaries stay
                # those of an uninterrupted build.
                raise BuildError(f"{in_a_row} videos in a row failed (last: {result.path}: {result.reason}); "
                                 "stopping. Fix the cause and re-run the same command to resume")
            continue
        in_a_row = 0
        if writer.full_for(result):
            close(pos)
        writer.add(result)
        bar.set_postfix(split=split, refresh=False,
                        failed=failed_before + sum(len(e["failed"]) for e in journal) + len(failures))
    if writer.tar is not None or failures or (not journal and items):
        close(len(items))
    return journal, [f for e in journal for f in e["failed"]]


def _source_root(cfg: BuildConfig) -> str:
    src = Path(cfg.source)
    return str(src.parent if src.is_file() else src)


def resolve_crop(crop: str, catalog: Catalog) -> str:
    """`auto` -> bbox when any item has a signer box, else center."""
    if crop != "auto":
        return crop
    return "bbox" if any(it.bbox is not None for it in catalog.items) else "center"


def build(cfg: BuildConfig) -> dict:
    """Run a build (or finish an interrupted one) and return the index written to dataset.json.

    Raises ValueError for bad options, SourceError for unusable metadata (before anything is written),
    BuildError when OUTPUT cannot be used or too many videos fail in a row.
    """
    cfg.check()
    try:
        ffmpeg_binary()
    except RuntimeError as e:
        raise BuildError(str(e)) from None
    catalog = load_catalog(Path(cfg.source), cfg.subset, Path(cfg.split_file) if cfg.split_file else None)
    for note in catalog.notes:
        log.warning(note)
    out = Path(cfg.output)
    params = cfg.params()
    resumed = prepare_output(out, params, cfg.overwrite)
    if resumed:
        log.info("resuming the build in %s", out)
    crop = resolve_crop(cfg.crop, catalog)
    workers = cfg.workers or os.cpu_count() or 1
    present = [it for it in catalog.items if it.path is not None]
    missing = [{"video_id": it.video_id, "split": it.split, "label": it.label} for it in catalog.items
               if it.path is None]
    started = time.monotonic()
    split_index: dict[str, dict] = {}
    failed: list[dict] = []
    with tqdm(total=len(present), unit="video", disable=not cfg.progress, dynamic_ncols=True,
              desc="build", mininterval=0.5) as bar:
        for split in shards.SPLITS:
            items = shuffled([it for it in present if it.split == split], cfg.seed, split)
            journal, split_failed = _build_split(cfg, catalog, split, items, crop, workers, bar, len(failed))
            failed += split_failed
            records = [e["shard"] for e in journal if e["shard"]]
            listed = [it for it in catalog.items if it.split == split]
            split_index[split] = {
                "samples": sum(r["samples"] for r in records),
                "frames": sum(r["frames"] for r in records),
                "classes": len({label for e in journal for label in e["labels"]}),
                "bytes": sum(r["bytes"] for r in records),
                "videos_listed": len(listed),
                "failed": len(split_failed),
                "missing": sum(it.path is None for it in listed),
                "shards": records,
            }
    index = {
        "format": shards.FORMAT_NAME,
        "format_version": shards.FORMAT_VERSION,
        "tool_version": __version__,
        "params": params,
        "crop_resolved": crop,
        "source": {"layout": catalog.layout, "files": [_relative(f, _source_root(cfg)) for f in catalog.files]},
        "classes": list(catalog.classes),
        "splits": split_index,
        "totals": {k: sum(s[k] for s in split_index.values())
                   for k in ("samples", "frames", "bytes", "videos_listed", "failed", "missing")},
        "failed": failed,
        "missing": missing,
    }
    index["totals"]["shards"] = sum(len(s["shards"]) for s in split_index.values())
    _atomic_write_json(out / shards.INDEX_NAME, index)
    elapsed = time.monotonic() - started
    log.info("built %d samples in %.1f s", index["totals"]["samples"], elapsed)
    return index


__all__ = ["BuildConfig", "BuildError", "SourceError", "build", "convert", "shuffled"]
