"""`wlasl-shards build`: a catalog of videos -> per-split WebDataset shards + dataset.json.

Per split, the items are shuffled with the seed, converted in parallel (ffmpeg decode + JPEG/npy encode
in worker processes (ffmpeg itself encodes the JPEGs), at most `2 * workers` videos in flight, results
consumed in order) and appended to shards that close before they would pass `shard_size` bytes. Order
and boundaries depend only on the inputs and options, never on timing or worker count, so builds are
byte-identical.

Crash safety: a shard is written as `*.tar.tmp` and renamed when complete; then one line describing it
(and the failures among its videos) is appended to `OUTPUT/.build/<split>.jsonl` and fsynced. A re-run
keeps the shards its journal lists, deletes anything after them and carries on from there.

Partitioned builds (`--partition I/N`, I 0-based as SLURM_ARRAY_TASK_ID and JOB_COMPLETION_INDEX are):
partition I takes every N-th video of each split's shuffled order, starting at the I-th, so the N
partitions are disjoint and together hold every video. All N write into the same OUTPUT: their own
shards (`<split>/shard-pIIII-NNNNNN.tar`), their own journals (`.build/<split>.pIIII.jsonl`, resumed
after a kill like a whole build's) and, when done, a partial index `.partitions/<I>-of-<N>.json`.
`merge` turns the N partial indexes into dataset.json; the partition that finds all N present after
writing its own runs it, so the last one to finish writes dataset.json and, before that, readers find
no dataset at all. Two partitions finishing together may both merge: both write the same bytes, each
through its own temporary file and an atomic rename, so either result is the same complete file.

A remote OUTPUT (`s3://bucket/prefix`, any S3-compatible store through AWS_ENDPOINT_URL) gets the same
files in the same order. Shards are written in a local staging directory as above; each complete one is
uploaded, then its journal line appended locally and the whole journal uploaded (one PUT, never torn),
then the local copy deleted, so the disk holds only the shard being written. The bucket is the record:
a re-run, on this machine or another with an empty staging directory, reads params.json and the
journals from the bucket, deletes this run's shards the bucket holds beyond its journal (uploaded just
before a kill) and carries on. dataset.json (or a partition's partial index) is the last object written.

One build at a time: a local OUTPUT is locked (`_locked`: fcntl on OUTPUT/.build/lock, exclusive for a
whole build, shared by the partitions of one, each also holding its own), and a second build of it
(or of the same partition) is refused at once. A remote OUTPUT is NOT protected: two machines building
into one bucket prefix at once are not detected (object stores have no lock, and a lease object would
need a clock both trust); run one build per prefix, or partitions with distinct indexes.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import tarfile
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wlasl_shards import __version__, shards, storage
from wlasl_shards.preprocess.sources import Catalog, Item, SourceError, load_catalog
from wlasl_shards.video import (
    CROP_MODES,
    DEFAULT_MAX_FRAMES,
    VideoError,
    decode,
    decode_jpeg,
    ffmpeg_binary,
    plan_geometry,
    probe,
)

log = logging.getLogger(__name__)

STATE_DIR = ".build"
PARAMS_FILE = "params.json"
PARTS_DIR = ".partitions"  # partial indexes of a partitioned build, <I>-of-<N>.json
PART_FORMAT = "wlasl-shards-partition"  # the `format` of a partial index
PART_VERSION = 1  # its `format_version`
LOCK_FILE = "lock"  # in .build: held by every build of a local OUTPUT (see `_locked`)
# Sane ranges: anything outside is a typo or an attack, and would fail late (after OUTPUT is written),
# write invalid JSON (inf) or grow memory without bound.
MAX_FPS = 120.0
MAX_SIZE = 4096
MAX_BBOX_MARGIN = 10.0
MAX_TIMEOUT = 24 * 3600.0
MAX_SHARD_SIZE = 1 << 40
# Options added after builds were made with this tool: an older params.json lacks them, and
# means their defaults (what the tool of the time did, or the nearest bound to it).
LATER_FIELDS = {"max_frames": DEFAULT_MAX_FRAMES}


@dataclass(frozen=True)
class BuildConfig:
    """Options of `wlasl-shards build`; every field but the last eight is recorded in dataset.json."""

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
    max_frames: int = DEFAULT_MAX_FRAMES  # longer videos (after resampling) are recorded as failed, as are
    #   those past shards.MAX_SAMPLE_BYTES decoded: no sample a reader would refuse, no unbounded memory
    shard_size: int = 128 * 2**20  # a shard closes before it would pass this many bytes
    seed: int = 0  # sample shuffle before sharding
    timeout: float = 300.0  # seconds per video before ffmpeg is killed and the video recorded as failed
    # Not recorded (they do not change the output):
    output: str = "shards"  # where shards and dataset.json go: a local directory or s3://bucket/prefix
    staging: str | None = None  # remote OUTPUT: local directory for the shard being written and the journals
    #   (None: default_staging(output, partition)); a local OUTPUT is written in place
    workers: int | None = None  # processes converting videos; None = all cores, 0 = none (in this process)
    overwrite: bool = False  # replace an OUTPUT built with other options
    max_consecutive_failures: int = 200  # stop when this many videos in a row fail (broken ffmpeg, wrong files)
    progress: bool = True  # tqdm bar
    partition: int = 0  # which share of the videos this run converts, 0 <= partition < partitions
    partitions: int = 1  # shares the build is split into (one run each, same OUTPUT); 1 = a whole build

    def params(self) -> dict[str, Any]:
        """The options that determine the output, as stored in dataset.json."""
        skip = {"output", "staging", "workers", "overwrite", "max_consecutive_failures", "progress", "partition",
                "partitions"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}

    def check(self) -> None:
        """Raise ValueError naming the first bad option and its value; nothing is written before this."""
        _in_range("--fps", self.fps, 0.0, MAX_FPS, low_open=True)
        if self.crop not in ("auto", *CROP_MODES):
            raise ValueError(f"--crop must be one of auto, {', '.join(CROP_MODES)}, got {self.crop!r}")
        _integer("--size", self.size, 16, MAX_SIZE)
        if self.codec not in shards.CODECS:
            raise ValueError(f"--codec must be one of {', '.join(shards.CODECS)}, got {self.codec!r}")
        if not (_is_int(self.jpeg_qscale) and 2 <= self.jpeg_qscale <= 31):
            raise ValueError(f"--jpeg-qscale must be in 2..31, got {self.jpeg_qscale}")
        if not (_is_int(self.min_frames) and self.min_frames >= 1):
            raise ValueError(f"--min-frames must be >= 1, got {self.min_frames}")
        if not (_is_int(self.max_frames) and self.max_frames >= self.min_frames):
            raise ValueError(f"--max-frames must be an integer >= --min-frames ({self.min_frames}), "
                             f"got {self.max_frames}")
        if not (_is_int(self.shard_size) and self.shard_size >= 1 << 16):
            raise ValueError(f"--shard-size must be >= 64 KiB, got {self.shard_size}")
        if self.shard_size > MAX_SHARD_SIZE:
            raise ValueError(f"--shard-size must be <= 1 TiB, got {self.shard_size}")
        _in_range("--bbox-margin", self.bbox_margin, 0.0, MAX_BBOX_MARGIN)
        _integer("--seed", self.seed, 0, 2**63 - 1)
        if self.workers is not None and not (_is_int(self.workers) and self.workers >= 0):
            raise ValueError(f"--workers must be >= 0, got {self.workers}")
        _in_range("--timeout", self.timeout, 0.0, MAX_TIMEOUT, low_open=True)
        _integer("max_consecutive_failures", self.max_consecutive_failures, 1, 2**63 - 1)
        if not 0 <= self.partition < self.partitions:
            raise ValueError(f"--partition must be I/N with 0 <= I < N, got {self.partition}/{self.partitions}")
        kind = storage.scheme(self.output)  # ValueError naming an unknown scheme
        if kind not in ("", "s3"):
            # Readers take every scheme storage knows; writing is done (and tested) for S3 only.
            raise ValueError(f"OUTPUT must be a local directory or an s3:// URL, got {self.output!r} ({kind}:// "
                             "is read-only here; build into a local directory and copy it, or into an S3-compatible "
                             "store through AWS_ENDPOINT_URL)")
        if kind and not urllib.parse.urlparse(self.output).netloc:
            raise ValueError(f"OUTPUT must name a bucket, e.g. s3://bucket/prefix, got {self.output!r}")
        if self.staging is not None and not kind:
            raise ValueError(f"--staging is for a remote OUTPUT (s3://...); a local OUTPUT is written in place, "
                             f"got --staging {self.staging!r} with OUTPUT {self.output!r}")
        if self.partitions > 1 and self.overwrite:
            # Partitions start at about the same time: each would delete what the others had begun.
            raise ValueError("--overwrite cannot be combined with --partition (partitions starting together would "
                             "delete each other's shards); empty OUTPUT first")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(name: str, value: Any, low: int, high: int) -> None:
    """ValueError naming the option and value unless `value` is an integer in [low, high]."""
    if not _is_int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    if value > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")


def _in_range(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    """ValueError naming the option and value unless `value` is a finite number in [low, high]
    ((low, high] with `low_open`): NaN passes every `<` test, and inf is not JSON."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low_open and not value > low:
        raise ValueError(f"{name} must be > {low:g}, got {value!r}")
    if not value >= low:
        raise ValueError(f"{name} must be >= {low:g}, got {value!r}")
    if value > high:
        raise ValueError(f"{name} must be <= {high:g}, got {value!r}")


def parse_partition(text: str) -> tuple[int, int]:
    """'3/8' -> (3, 8): the 0-based index I of one of N partitions. Raises ValueError naming the value."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"--partition must look like I/N, e.g. 0/8 (I is 0-based), got {text!r}")
    index, count = int(m[1]), int(m[2])
    if count < 1:
        raise ValueError(f"--partition N must be >= 1, got {text!r}")
    if index >= count:
        raise ValueError(f"--partition I must be in 0..{count - 1} (0-based, as SLURM_ARRAY_TASK_ID and "
                         f"JOB_COMPLETION_INDEX are), got {text!r}")
    return index, count


class BuildError(RuntimeError):
    """The build cannot go on (bad OUTPUT, too many failures in a row); what is done is kept."""


class PartitionsMissing(BuildError):
    """`merge` found partial indexes missing; `missing` lists their partition indexes."""

    def __init__(self, message: str, missing: list[int]):
        super().__init__(message)
        self.missing = missing


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
        geom = plan_geometry(info.width, info.height, job.crop, p["size"], item.bbox, p["bbox_margin"],
                             sar=info.sar)
        frame_range = item.frame_range if p["apply_frame_range"] else None
        warnings: list[str] = []
        # Older params (a resumed build) lack max_frames: LATER_FIELDS says what they mean.
        args = dict(frame_range=frame_range, timeout=p["timeout"], threads=1, warnings=warnings,
                    max_frames=p.get("max_frames", LATER_FIELDS["max_frames"]), max_bytes=shards.MAX_SAMPLE_BYTES)
        if p["codec"] == "jpeg":
            blobs = list(decode_jpeg(item.path, geom, p["fps"], p["jpeg_qscale"], **args))
            count = len(blobs)
            blob, offsets = shards.pack_jpegs(blobs)
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
    if info.sar != (1, 1):  # source_size and the bbox are in its pixels; crop_box is in square ones
        meta["source_sar"] = list(info.sar)
    if warnings:
        meta["decode_warnings"] = warnings
    key = shards.sample_key(item.video_id)
    return Converted(key, item.label, shards.sample_members(key, meta, blob), count)


def worker_processes(workers: int | None) -> int:
    """A config's `workers` (None = all cores, 0 = none) as a process count; 1 runs in this process."""
    return (os.cpu_count() or 1) if workers is None else max(workers, 1)


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


def shard_name(split: str, index: int, partition: int | None = None) -> str:
    """Path of a shard relative to the dataset root; a partition's shards carry its index, so the
    partitions of one build never write the same name."""
    if partition is None:
        return shards.shard_name(split, index)
    return f"{split}/{_partition_prefix(partition)}{index:06d}.tar"


def _partition_prefix(partition: int) -> str:
    return f"shard-p{partition:04d}-"


class ShardWriter:
    """Writes one shard at a time as `<name>.tmp`, renamed (after fsync) when finished."""

    def __init__(self, root: Path, split: str, index: int, limit: int, partition: int | None = None):
        self.root, self.split, self.index, self.limit = root, split, index, limit
        self.partition = partition
        self.tar: shards.TarWriter | None = None

    def _open(self) -> None:
        self.name = shard_name(self.split, self.index, self.partition)
        self.tar = shards.TarWriter(self.root / self.name)
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
        self.tar.add(sample.members)
        self.samples += 1
        self.frames += sample.frames
        self.labels.add(sample.label)

    def finish(self) -> shards.ShardRecord | None:
        """Close, fsync and rename the open shard; None when none is open."""
        if self.tar is None:
            return None
        size, sha256 = self.tar.close()
        record = shards.ShardRecord(self.name, self.samples, self.frames, size, sha256)
        self.tar = None
        self.index += 1
        return record


def _url(output: str, name: str) -> str:
    """Where `name` ("/"-separated, relative to the dataset root) of OUTPUT (a path or URL) is."""
    return storage.join(output, *name.split("/"))


def _publish_json(output: str, name: str, obj: Any) -> None:
    """Write OUTPUT/`name` whole (storage.write_json: a temp file and a rename, or one PUT)."""
    storage.write_json(_url(output, name), obj)


def _listed(output: str, folder: str, name: str) -> bool:
    """Whether OUTPUT/folder holds `name`, from a fresh listing: s3fs answers a plain lookup from its
    cache of an earlier listing, which misses what other machines (partitions) wrote since."""
    return name in storage.listdir(storage.join(output, folder))


def _read_state(where: str) -> dict | None:
    """OUTPUT's .build/params.json (a path or URL) with its partition count, None when there is none.
    A params.json from before partitions existed has no count: it was a whole build."""
    if not _listed(where, STATE_DIR, PARAMS_FILE):
        return None
    return {"partitions": 1, **json.loads(storage.read_bytes(storage.join(where, STATE_DIR, PARAMS_FILE)))}


def default_staging(output: str, partition: int | None = None) -> Path:
    """Where a remote OUTPUT's shards are written before upload when --staging is not given: a folder
    under the temp directory named from the URL (and the partition), so that a re-run on this machine
    cleans up what a killed one left there, and partitions on one machine keep apart."""
    digest = hashlib.sha256(output.rstrip("/").encode("utf-8")).hexdigest()[:16]
    tag = "" if partition is None else f"-p{partition:04d}"
    return Path(tempfile.gettempdir()) / "wlasl-shards-staging" / f"{digest}{tag}"


def _work_dir(cfg: BuildConfig, partition: int | None) -> Path:
    """The local directory shards and journals are written in: OUTPUT itself, or a remote OUTPUT's staging."""
    if not storage.is_remote(cfg.output):
        return Path(cfg.output)
    return Path(cfg.staging) if cfg.staging else default_staging(cfg.output, partition)


def _clear_staging(work: Path, partition: int | None, remove_root: bool) -> None:
    """After a remote build: drop this run's journals from its staging directory (its shards went with
    their upload) and the folders left empty. Other partitions staging in the same folder keep theirs."""
    tag = "" if partition is None else f".p{partition:04d}"
    for split in shards.SPLITS:
        (work / STATE_DIR / f"{split}{tag}.jsonl").unlink(missing_ok=True)
    for folder in (*(work / split for split in shards.SPLITS), work / STATE_DIR, *([work] if remove_root else [])):
        try:
            folder.rmdir()
        except OSError:
            pass  # absent, or still in use by another partition


# ------------------------------------------------------------------------------------------ output


def _resolved(cfg: BuildConfig) -> dict[str, str | None]:
    """SOURCE and --split-file as absolute paths with links resolved: `src10` and `../data/src10`
    from another folder are one source."""
    return {"source": os.path.realpath(cfg.source),
            "split_file": os.path.realpath(cfg.split_file) if cfg.split_file else None}


_PATHS = ("source", "split_file")


def _differences(before: dict, now: dict, resolved_before: dict | None, resolved_now: dict | None) -> list[str]:
    """'name: old -> new' for each option that differs between two recorded builds. SOURCE and
    --split-file count as the same when spelled the same or when they resolve to the same paths
    (either way round: one machine may spell them differently, another mount them elsewhere)."""
    before, now = {**LATER_FIELDS, **before}, {**LATER_FIELDS, **now}
    diff = []
    for key in [*now, *(k for k in before if k not in now)]:
        if key == "resolved" or before.get(key) == now.get(key):
            continue
        if key in _PATHS and resolved_before and resolved_now and resolved_before.get(key) == resolved_now.get(key):
            continue
        shown = f" (resolved: {resolved_before.get(key)!r} -> {resolved_now.get(key)!r})" \
            if key in _PATHS and resolved_before and resolved_now else ""
        diff.append(f"{key}: {before.get(key)!r} -> {now.get(key)!r}{shown}")
    return diff


def prepare_output(out: str | Path, params: dict, overwrite: bool, partitions: int = 1,
                   resolved: dict | None = None) -> bool:
    """Make OUTPUT (a local directory or a remote URL) ready. Returns True when it holds a build with
    the same parameters and number of partitions: one to resume, or other partitions of this build to join.
    `resolved`: SOURCE and --split-file resolved (`_resolved`), recorded in params.json and compared
    instead of their spelling.

    A non-empty OUTPUT built with other options (or holding other files) is refused unless
    `overwrite`, which removes only what a build writes (split folders, dataset.json, .build but its
    locks, .partitions), dataset.json first: a kill part-way leaves no index pointing at deleted shards.
    """
    state = {**params, "partitions": partitions}
    if resolved is not None:
        state["resolved"] = resolved
    remote = storage.is_remote(out)
    where = str(out)
    if not remote and os.path.exists(where) and not os.path.isdir(where):
        raise BuildError(f"OUTPUT {where!r} exists and is not a directory")
    entries = set(storage.listdir(where))
    previous = _read_state(where)
    # A lone .build without params.json is another partition starting (it makes .build, then writes
    # params.json), a build killed in between, or this build's lock: nothing to keep or refuse yet.
    if entries and not (previous is None and entries == {STATE_DIR}):
        diff = None if previous is None else _differences(previous, state, previous.get("resolved"), resolved)
        if diff == []:
            return True
        if not overwrite:
            if previous is None:
                raise BuildError(f"OUTPUT {where!r} holds files that are not a wlasl-shards build; choose a new "
                                 "or empty OUTPUT")
            done = _finished_shards(where)
            keep = f"{done} finished shard(s)" if done else "what it has built"
            fix = (f"to keep {keep}, re-run with the options recorded in {STATE_DIR}/{PARAMS_FILE}, or choose "
                   "another OUTPUT")
            fix += "" if partitions > 1 else f"; --overwrite discards {keep} and starts again"
            raise BuildError(f"OUTPUT {where!r} was built with other options ({'; '.join(diff)}); {fix}")
        if remote:
            _remove_remote_build(where)
        else:
            _remove_local_build(Path(where))
    _publish_json(where, f"{STATE_DIR}/{PARAMS_FILE}", state)
    return False


def _finished_shards(where: str) -> int:
    """How many shards a local OUTPUT's journals list: the work an --overwrite would discard (0 when
    unknown, e.g. for a bucket, whose journals are read later)."""
    if storage.is_remote(where):
        return 0
    journals = Path(where, STATE_DIR).glob("*.jsonl")
    return sum(1 for journal in journals for e in storage.read_lines(journal) if isinstance(e, dict) and e.get("shard"))


def _remove_local_build(root: Path) -> None:
    """Delete what a build writes in a local OUTPUT, in the order `_remove_remote_build` explains:
    dataset.json first (then a kill leaves "no dataset", never an index of deleted shards), .build
    (its locks kept: they are held right now) and .partitions, the shards last."""
    (root / shards.INDEX_NAME).unlink(missing_ok=True)
    _fsync_dir(root)
    for name in (PARTS_DIR, STATE_DIR, *shards.SPLITS):
        target = root / name
        if name == STATE_DIR and target.is_dir():
            for entry in target.iterdir():
                if entry.name == LOCK_FILE or entry.name.startswith(LOCK_FILE + "."):
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _fsync_dir(path: Path) -> None:
    """Make a removal in `path` durable before the next step (a crash then cannot bring it back)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -------------------------------------------------------------------------------------------- lock


@contextlib.contextmanager
def _locked(where: str | Path, partition: int | None, partitions: int) -> Iterator[None]:
    """Hold OUTPUT's build lock for the body. A whole build holds OUTPUT/.build/lock exclusively; a
    partition holds it shared (the partitions of one build run together) and its own
    .build/lock.pIIII exclusively. A second build of the same OUTPUT, or of the same partition, is
    refused at once with a BuildError naming OUTPUT. fcntl locks end with their process, so a killed
    build leaves nothing to clear by hand; the lock files are removed by the last holder.

    Local OUTPUT only: see the module docstring for what is not protected on a bucket."""
    if storage.is_remote(where):
        yield
        return
    root = Path(where)
    if root.exists() and not root.is_dir():
        raise BuildError(f"OUTPUT {str(where)!r} exists and is not a directory")
    state = root / STATE_DIR
    made = not state.exists()
    state.mkdir(parents=True, exist_ok=True)
    held: list[tuple[Path, int]] = []
    try:
        main = state / LOCK_FILE
        fd = _take_lock(main, fcntl.LOCK_EX if partition is None else fcntl.LOCK_SH)
        if fd is None:
            raise BuildError(f"OUTPUT {str(where)!r} is being built by another process right now (it holds "
                             f"{main}); wait for it to finish, or stop it and re-run this command to resume")
        held.append((main, fd))
        if partition is not None:
            own = state / f"{LOCK_FILE}.p{partition:04d}"
            fd = _take_lock(own, fcntl.LOCK_EX)
            if fd is None:
                raise BuildError(f"partition {partition}/{partitions} of OUTPUT {str(where)!r} is being built by "
                                 f"another process right now (it holds {own}); run each partition once")
            held.append((own, fd))
        yield
    finally:
        for path, fd in reversed(held):
            _drop_lock(path, fd)
        if made:
            try:
                state.rmdir()  # refused before writing anything: leave OUTPUT as it was
            except OSError:
                pass


def _take_lock(path: Path, mode: int) -> int | None:
    """An fd of `path` holding flock `mode`, or None when another process holds a conflicting lock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)  # its last holder removed the file between our open and lock: lock the new one


def _drop_lock(path: Path, fd: int) -> None:
    """Release a lock; remove its file when no other process holds it (they check the inode, see
    `_take_lock`)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)
    except BlockingIOError:
        pass  # other partitions hold it
    finally:
        os.close(fd)


def _remove_remote_build(url: str) -> None:
    """Delete what a build writes under `url`, object by object (a bucket has no folders to drop).
    dataset.json goes first, so no reader is sent to shards that are going; then the partial indexes
    and .build, so an interrupted removal leaves shards that no params.json vouches for (refused, not
    resumed, by the next run); the shards last."""
    storage.remove(storage.join(url, shards.INDEX_NAME))
    for folder in (PARTS_DIR, STATE_DIR, *shards.SPLITS):
        for name in storage.listdir(storage.join(url, folder)):
            storage.remove(storage.join(url, folder, name))


def _fetch_journal(output: str, name: str, path: Path) -> None:
    """Replace the local copy of a remote build's journal `name` with the bucket's, the record: the
    local one may be a line ahead (a kill between appending it and uploading the journal) or missing
    (a new machine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder, file = name.split("/")
    if _listed(output, folder, file):
        path.write_bytes(storage.read_bytes(_url(output, name)))  # a torn copy is cut back by append_line
    else:
        path.unlink(missing_ok=True)


def _remove_remote_strays(output: str, split: str, own: str, kept: set[str]) -> None:
    """Delete this run's shards in the bucket that its journal does not list: uploaded right before a
    kill, before their journal line. Only names starting with `own` (other partitions' are theirs)."""
    for name in storage.listdir(storage.join(output, split)):
        # Only what a build uploads (.tar): some stores (SeaweedFS) list a folder emptied of its objects
        # as an entry of itself.
        if name.startswith(own) and name.endswith(".tar") and f"{split}/{name}" not in kept:
            url = _url(output, f"{split}/{name}")
            log.info("deleting %s: uploaded before an interruption, not in the journal", url)
            storage.remove(url)


def shuffled(items: list[Item], seed: int, split: str) -> list[Item]:
    """The split's items in the seeded order they are written in (every shard mixes classes)."""
    order = sorted(items, key=lambda it: it.video_id)
    random.Random(f"{seed}:{split}").shuffle(order)
    return order


def _build_split(cfg: BuildConfig, catalog: Catalog, split: str, items: list[Item], crop: str,
                 workers: int, bar: tqdm, failed_before: int,
                 partition: int | None = None) -> tuple[list[dict], list[dict]]:
    """Write one split's shards (or one partition's share of them), resuming from its journal.
    Returns (journal entries, failures).

    A remote OUTPUT's shards are written in the staging directory, each uploaded when complete, then
    its journal line appended and the journal uploaded, then the local copy deleted."""
    work = _work_dir(cfg, partition)
    remote = storage.is_remote(cfg.output)
    (work / split).mkdir(parents=True, exist_ok=True)
    tag = "" if partition is None else f".p{partition:04d}"
    journal_name = f"{STATE_DIR}/{split}{tag}.jsonl"
    journal_path = work / journal_name
    if remote:
        _fetch_journal(cfg.output, journal_name, journal_path)
    journal = storage.read_lines(journal_path)
    done = journal[-1]["end"] if journal else 0
    kept = {e["shard"]["name"] for e in journal if e["shard"]}
    # Other partitions write into the same folder, perhaps right now: only this one's files are its strays.
    own = "" if partition is None else _partition_prefix(partition)
    for stray in sorted((work / split).iterdir()):
        # Staged files are all strays: a kept shard was uploaded (its journal line follows the upload).
        if stray.name.startswith(own) and (remote or f"{split}/{stray.name}" not in kept):
            stray.unlink()
    if remote:
        _remove_remote_strays(cfg.output, split, own, kept)
    bar.update(done)
    params = cfg.params()
    jobs = (Job(it, catalog.classes[it.label], crop, _source_root(cfg), params) for it in items[done:])
    writer = ShardWriter(work, split, sum(1 for e in journal if e["shard"]), cfg.shard_size, partition)
    failures: list[dict] = []
    in_a_row = 0

    def close(end: int) -> None:
        labels = sorted(writer.labels) if writer.tar is not None else []
        record = writer.finish()
        if remote and record is not None:
            storage.upload(work / record.name, _url(cfg.output, record.name))
        entry = {"end": end, "shard": record.to_json() if record else None, "labels": labels,
                 "failed": failures.copy()}
        storage.append_line(journal_path, entry)
        if remote:
            # The whole journal in one PUT: objects cannot be appended to, and are never seen half written.
            storage.write_bytes(_url(cfg.output, journal_name), journal_path.read_bytes())
            if record is not None:
                (work / record.name).unlink()
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

    With `cfg.partitions` > 1 only partition `cfg.partition`'s share is built and its partial index
    written; dataset.json follows when it is the last partition to finish (see `merge`). Returns the
    dataset index when dataset.json was written, else this partition's partial index (format PART_FORMAT).

    OUTPUT may be a local directory or an s3:// URL (see the module docstring for how a bucket is written).

    Raises ValueError for bad options, SourceError for unusable metadata or video ids that would share
    a sample key (before anything is written), BuildError when OUTPUT cannot be used or another build
    of it is running, too many videos fail in a row, the disk is full ("no space left on DEVICE
    writing PATH", the partial file removed), or a remote OUTPUT cannot be read or written after
    storage's retries (naming the URL; what was uploaded is kept for the re-run).
    """
    cfg.check()
    try:
        ffmpeg_binary()
    except RuntimeError as e:
        raise BuildError(str(e)) from None
    catalog = load_catalog(Path(cfg.source), cfg.subset, Path(cfg.split_file) if cfg.split_file else None)
    for note in catalog.notes:
        log.warning(note)
    collisions = shards.key_collisions(it.video_id for it in catalog.items if it.path is not None)
    if collisions:
        shown = "; ".join(" and ".join(map(repr, ids)) for ids in collisions[:3])
        raise SourceError(f"{cfg.source}: {len(collisions)} group(s) of video ids would share a sample key in "
                          f"the shards (dots and slashes become '_'): {shown}; rename them apart")
    try:
        return _build(cfg, catalog)
    except storage.NoSpace as e:
        raise BuildError(f"{e}; free some space and re-run the same command: finished shards are kept") from None
    except storage.StorageError as e:
        raise BuildError(f"{e}; what was uploaded is kept: re-run the same command to resume") from None
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise BuildError(f"{storage.no_space_message(e.filename or cfg.output)}; free some space and re-run "
                         "the same command: finished shards are kept") from None


def _build(cfg: BuildConfig, catalog: Catalog) -> dict:
    """`build` once the options and SOURCE are known to be good."""
    remote = storage.is_remote(cfg.output)
    where = cfg.output if remote else Path(cfg.output)  # OUTPUT: a URL, or a local directory
    params = cfg.params()
    part = cfg.partition if cfg.partitions > 1 else None
    with _locked(where, part, cfg.partitions):
        return _build_locked(cfg, catalog, where, params, part)


def _build_locked(cfg: BuildConfig, catalog: Catalog, where: str | Path, params: dict, part: int | None) -> dict:
    """`_build` holding OUTPUT's lock (a local OUTPUT; see `_locked`)."""
    remote = storage.is_remote(cfg.output)
    if not remote:
        # Temporaries of writes a kill interrupted. A whole build is alone here (the lock); other
        # partitions may be writing right now, so theirs are left unless clearly abandoned.
        for folder in (where, where / STATE_DIR, where / PARTS_DIR):
            storage.sweep_temporaries(folder, older_than=0.0 if part is None else 600.0)
    resumed = prepare_output(where, params, cfg.overwrite, cfg.partitions, _resolved(cfg))
    if resumed:
        log.info("resuming the build in %s" if part is None else "joining the partitioned build in %s", where)
    if remote:
        log.info("staging shards in %s", _work_dir(cfg, part))
    crop = resolve_crop(cfg.crop, catalog)
    workers = worker_processes(cfg.workers)
    present = [it for it in catalog.items if it.path is not None]
    missing = [{"video_id": it.video_id, "split": it.split, "label": it.label} for it in catalog.items
               if it.path is None]
    # Every N-th video of the split's order, from the partition's index: disjoint shares, all of them together.
    todo = {split: shuffled([it for it in present if it.split == split], cfg.seed, split)
            [cfg.partition::cfg.partitions] for split in shards.SPLITS}
    started = time.monotonic()
    split_parts: dict[str, dict] = {}
    failed_count = 0
    desc = "build" if part is None else f"build {part}/{cfg.partitions}"
    with tqdm(total=sum(map(len, todo.values())), unit="video", disable=not cfg.progress, dynamic_ncols=True,
              desc=desc, mininterval=0.5) as bar:
        for split in shards.SPLITS:
            journal, split_failed = _build_split(cfg, catalog, split, todo[split], crop, workers, bar, failed_count,
                                                 part)
            failed_count += len(split_failed)
            listed = [it for it in catalog.items if it.split == split]
            split_parts[split] = {
                "videos_listed": len(listed),
                "missing": sum(it.path is None for it in listed),
                "labels": sorted({label for e in journal for label in e["labels"]}),
                "failed": split_failed,
                "shards": [e["shard"] for e in journal if e["shard"]],
            }
    partial = {
        "format": PART_FORMAT,
        "format_version": PART_VERSION,
        "tool_version": __version__,
        "partition": cfg.partition,
        "partitions": cfg.partitions,
        "params": params,
        "resolved": _resolved(cfg),
        "crop_resolved": crop,
        "source": {"layout": catalog.layout, "files": [_relative(f, _source_root(cfg)) for f in catalog.files],
                   # which files decided the splits, and the per-video disagreements (counts and first ids)
                   "splits_from": [_relative(f, _source_root(cfg)) for f in catalog.splits_from],
                   "problems": catalog.problem_summary()},
        "classes": list(catalog.classes),
        "splits": split_parts,
        "missing": missing,
    }
    samples = sum(r["samples"] for s in split_parts.values() for r in s["shards"])
    elapsed = time.monotonic() - started
    if remote:
        _clear_staging(_work_dir(cfg, part), part, remove_root=cfg.staging is None)
    if part is None:
        index = _assemble([partial])
        _publish_json(str(where), shards.INDEX_NAME, index)
        log.info("built %d samples in %.1f s", samples, elapsed)
        return index
    _publish_json(str(where), f"{PARTS_DIR}/{_part_file(part, cfg.partitions)}", partial)
    log.info("partition %d/%d: built %d samples in %.1f s", part, cfg.partitions, samples, elapsed)
    try:
        # Written after our own partial index, so of partitions finishing together at least one sees all N.
        return merge(where)
    except PartitionsMissing as e:
        log.info("dataset.json waits: %s", e)
        return partial


def _part_file(partition: int, partitions: int) -> str:
    return f"{partition}-of-{partitions}.json"


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8': a short list of many missing partitions."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


def _assemble(parts: list[dict]) -> dict:
    """The dataset.json of a build from its partitions' partial indexes, in partition order (one for a
    whole build). Shards and failures are listed split by split, partition by partition."""
    first = parts[0]
    split_index: dict[str, dict] = {}
    for split in shards.SPLITS:
        pieces = [p["splits"][split] for p in parts]
        records = [r for piece in pieces for r in piece["shards"]]
        split_index[split] = {
            "samples": sum(r["samples"] for r in records),
            "frames": sum(r["frames"] for r in records),
            "classes": len({label for piece in pieces for label in piece["labels"]}),
            "bytes": sum(r["bytes"] for r in records),
            "videos_listed": pieces[0]["videos_listed"],
            "failed": sum(len(piece["failed"]) for piece in pieces),
            "missing": pieces[0]["missing"],
            "shards": records,
        }
    index = {
        "format": shards.FORMAT_NAME,
        "format_version": shards.FORMAT_VERSION,
        "tool_version": first["tool_version"],
        "params": first["params"],
        "crop_resolved": first["crop_resolved"],
        "source": first["source"],
        "classes": first["classes"],
        "splits": split_index,
        "totals": {k: sum(s[k] for s in split_index.values())
                   for k in ("samples", "frames", "bytes", "videos_listed", "failed", "missing")},
        "failed": [f for split in shards.SPLITS for p in parts for f in p["splits"][split]["failed"]],
        "missing": first["missing"],
    }
    index["totals"]["shards"] = sum(len(s["shards"]) for s in split_index.values())
    return index


def _catalog_facts(partial: dict) -> dict:
    """What every partition reads from SOURCE alone; partitions that disagree read different sources."""
    return {"classes": partial["classes"], "crop_resolved": partial["crop_resolved"], "source": partial["source"],
            "missing": partial["missing"],
            "videos_listed": {k: (v["videos_listed"], v["missing"]) for k, v in partial["splits"].items()}}


def merge(output: str | Path) -> dict:
    """Write OUTPUT/dataset.json (a local directory or an s3:// URL) from the partial indexes of a
    partitioned build; returns the index.

    Checks that all N partitions finished, with the parameters and N of OUTPUT's build and the same
    source. Writes nothing when a check fails: PartitionsMissing names the partitions that have not
    finished; BuildError says what else is wrong (or which URL could not be read or written).
    Deterministic: merging again writes the same bytes.
    """
    where = str(output) if storage.is_remote(output) else str(Path(output))
    try:
        return _merge(where)
    except storage.StorageError as e:
        raise BuildError(str(e)) from None


def _merge(where: str) -> dict:
    # Listings, not lookups, for what other machines may have written meanwhile (see _listed).
    params = _read_state(where)
    if params is None:
        raise BuildError(f"OUTPUT {where!r} is not a wlasl-shards build (no {STATE_DIR}/{PARAMS_FILE})")
    n = params.pop("partitions")
    resolved = params.pop("resolved", None)
    if n == 1:
        raise BuildError(f"OUTPUT {where!r} was not built with --partition; `build` writes its dataset.json")
    names = [f"{PARTS_DIR}/{_part_file(i, n)}" for i in range(n)]
    present = set(storage.listdir(storage.join(where, PARTS_DIR)))
    missing = [i for i in range(n) if _part_file(i, n) not in present]
    if missing:
        raise PartitionsMissing(f"{len(missing)} of {n} partitions have not finished: {_ranges(missing)} (no "
                                f"{PARTS_DIR}/<I>-of-{n}.json in {where!r}); run `build --partition I/{n}` "
                                "for them with the same options", missing)
    parts = [json.loads(storage.read_bytes(storage.join(where, *name.split("/")))) for name in names]
    facts = _catalog_facts(parts[0])
    for i, (name, part) in enumerate(zip(names, parts)):
        if part.get("format") != PART_FORMAT or (part.get("partition"), part.get("partitions")) != (i, n):
            raise BuildError(f"{name} in {where!r} is not the partial index of partition {i}/{n}")
        diff = _differences(params, part["params"], resolved, part.get("resolved"))
        if diff:
            raise BuildError(f"partition {i}/{n} was built with other options than {where!r} ("
                             + "; ".join(diff) + ")")
        if _catalog_facts(part) != facts:
            differ = [k for k, v in _catalog_facts(part).items() if facts[k] != v]
            raise BuildError(f"partitions 0/{n} and {i}/{n} read different sources ({', '.join(differ)} differ); "
                             "rebuild them from the same SOURCE")
    index = _assemble(parts)
    _publish_json(where, shards.INDEX_NAME, index)
    log.info("merged %d partitions: %d samples in %d shards", n, index["totals"]["samples"],
             index["totals"]["shards"])
    return index


__all__ = ["BuildConfig", "BuildError", "PartitionsMissing", "SourceError", "build", "convert", "default_staging",
           "merge", "parse_partition", "shuffled"]
