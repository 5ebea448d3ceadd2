"""Input pipelines, per worker: WebDataset shard parts -> decoded uint8 clips, for training and evaluation.

What each loader worker runs (every stage is a generator over sample dicts, testable on a list):

    parts           ShardParts: a shard, or every k-th sample of one (which ones: `plan`)
    read_parts      raw samples {"__key__", "__url__", "json", "cls", "jpgs" | "npy"}: bytes as stored,
                    read with webdataset's tar iterators and NO decoder (its defaults unpickle)
    shuffle_buffer  (train) the same, in a seeded random order; raw samples are small (compressed)
    map_samples     {"clip": (T, C, C, 3) uint8 tensor, "label": int, "video_id": str}; only the
                    frames of the chosen window are decoded. A bad sample is skipped and counted
                    here (`SkipCounter`), the one place bad data is handled
    islice(budget)  (train) exactly this worker's share of the epoch (`plan.worker_budget`)
    + one final {"__stats__": ...} record carrying the worker's skip count to the main process

`TrainStream` and `EvalStream` are those pipelines as torch IterableDatasets; `loader` runs them in
worker processes or threads and collates their samples into batches.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import IterableDataset
from webdataset.tariterators import tar_file_expander

from wlasl_shards import cache, shards, storage
from wlasl_shards.train import transforms
from wlasl_shards.train.distributed import loader_worker
from wlasl_shards.train.plan import EmptyShare, ShardPart, plan_rank, rank_pass, split_parts, worker_plan

log = logging.getLogger(__name__)

T = TypeVar("T")
STATS = "__stats__"  # key of the record that ends every worker's stream
READ_AT = "__read__"  # a raw sample's position in its worker's read order (before any shuffling)
AT = "__at__"  # a training example's place in its worker's stream (`TrainStream`): where a resume restarts
SHARD_ERRORS = ("skip", "stop")
WORKER_MODES = ("process", "thread")


class DataError(RuntimeError):
    """The data cannot be read (too many bad samples in a row, a split with nothing usable)."""


@dataclass(frozen=True)
class LoaderConfig:
    """How shards become batches; the same for every rank (rank and world size are arguments)."""

    clip_len: int = 64  # frames per training clip (WLASL's I3D recipe); shorter videos are padded
    crop_size: int = 224  # side of the square crop (random in training, centred in evaluation)
    flip: bool = True  # random left-right flip of training clips (p = 1/2, whole clip)
    batch_size: int = 8  # training clips per batch, per rank
    eval_batch_size: int = 1  # videos per eval batch, all of one frame count (no padding: batch-1 logits)
    eval_min_frames: int = transforms.I3D_MIN_FRAMES  # eval clips are padded to at least this length
    num_workers: int = 4  # loader workers per rank; 0 reads in the main process
    worker_mode: str = "process"  # "process": DataLoader worker processes; "thread": threads of this process
    prefetch_batches: int = 2  # batches' worth of samples a rank's workers may prepare ahead
    pin_memory: bool = True  # pin collated batches (only when CUDA is available) for async copies
    shuffle_buffer: int = 100  # raw (compressed, ~1-5 MB) samples each worker holds to shuffle samples
    seed: int = 0  # with epoch, rank and worker: shard order, sample order, windows, crops, flips
    max_consecutive_errors: int = 20  # more bad samples than this in a row stops with DataError
    shard_errors: str = "skip"  # a shard unreadable after storage's retries: skip its rest (counted) | stop
    eval_hold: int = 64  # eval clips that may wait for others of their frame count (~9 MB each at 224 px, 59 frames)
    cache_dir: str | None = None  # local cache of remote shards (and dataset.json); None: stream every epoch
    cache_limit: int | None = None  # bytes the cache may hold (least recently used shards go); None: no limit
    # issue 13 §3/§5: sampling (`transforms.train_window`, `eval_indices`, `eval_windows`)
    frame_stride: int = 1  # every S-th frame: a training window spans (clip_len - 1) * S + 1 frames; eval the same
    eval_clips: int = 0  # 0: eval on every (S-th) frame; K: K uniformly spaced windows of clip_len, one after another
    pad: str = "last"  # short training clips padded with the last frame | "first-or-last" (WLASL's, a coin per clip)

    def shard_cache(self) -> cache.ShardCache | None:
        """The shard cache these settings name (None without cache_dir)."""
        return cache.make(self.cache_dir, self.cache_limit)

    def check(self) -> None:
        """Raise ValueError naming the first bad field."""
        for name in ("clip_len", "crop_size", "batch_size", "eval_batch_size", "eval_min_frames",
                     "prefetch_batches", "frame_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_workers", "shuffle_buffer", "seed", "max_consecutive_errors", "eval_hold", "eval_clips"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.shard_errors not in SHARD_ERRORS:
            raise ValueError(f"shard_errors must be one of {SHARD_ERRORS}, got {self.shard_errors!r}")
        if self.worker_mode not in WORKER_MODES:
            raise ValueError(f"worker_mode must be one of {WORKER_MODES}, got {self.worker_mode!r}")
        if self.pad not in transforms.PADS:
            raise ValueError(f"pad must be one of {transforms.PADS}, got {self.pad!r}")
        self.shard_cache()

# --------------------------------------------------------------------------- the index


def _split_entry(index: dict, split: str, where: str) -> dict:
    splits = index["splits"]
    if split not in splits:
        raise ValueError(f"{where}: no split {split!r} (has {', '.join(sorted(splits)) or 'none'})")
    return splits[split]


def shard_parts(dataset: str | os.PathLike, split: str, index: dict | None = None) -> list[ShardPart]:
    """The shards of `split` as whole-shard parts, in dataset.json's order (`index`: dataset.json's
    dict when the caller has it, else it is read)."""
    index = storage.load_index(dataset) if index is None else index
    entry = _split_entry(index, split, storage.dataset_url(dataset))
    return [ShardPart(storage.dataset_url(dataset, s["name"]), int(s["samples"]), nbytes=s.get("bytes"),
                      sha256=s.get("sha256")) for s in entry["shards"]]


def shard_urls(dataset: str | os.PathLike, split: str, index: dict | None = None) -> list[str]:
    """URLs of the shards of `split`, in the order dataset.json lists them."""
    return [p.url for p in shard_parts(dataset, split, index)]


def check_crop(index: dict, crop_size: int, where: str) -> None:
    """ValueError when `crop_size` is larger than the frames of the dataset `index` describes (its
    `params.size`; a dataset without one is not checked here, each clip's size is at decode time)."""
    size = index["params"].get("size")
    if isinstance(size, int) and crop_size > size:
        raise ValueError(f"crop_size {crop_size} is larger than the frames of {where} (size {size})")



# ------------------------------------------------------------------------------------ bad data


class SkipCounter:
    """Bad samples of one stream (one worker process): count, first reasons, rate-limited
    warnings, and the bound on failures in a row.

    "In a row" is in read order (a sample's READ_AT, given by `read_parts`), not in the order the
    samples are decoded: the shuffle buffer mixes 25 bad samples in a row with good ones, and
    counting after it would never see more than a few together. Failures are kept as runs of
    consecutive read positions, merged as the shuffled samples come in. Samples without a read
    position (a plain list) count in the order they come."""

    FIRST_LOGGED = 5  # skips logged one by one; after that one summary line per LOG_EVERY_S
    LOG_EVERY_S = 30.0
    KEEP_REASONS = 100  # reasons kept for the report

    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.counting = True  # False while a resumed stream replays samples counted before (`TrainStream`)
        self.consecutive = 0  # the longest run of failed read positions so far
        self.reasons: list[str] = []
        self._last_log = -math.inf
        self._placed = 0  # read positions handed out (`place`)
        self._run_end: dict[int, int] = {}  # first failed position of a run -> its last
        self._run_start: dict[int, int] = {}  # last failed position of a run -> its first

    def place(self) -> int:
        """The next read position (`read_parts` numbers the samples it reads with these)."""
        self._placed += 1
        return self._placed - 1

    def ok(self, at: int | None = None) -> None:
        """A good sample at read position `at` (None: the next one)."""
        if at is None:
            self.place()

    def _fail(self, at: int) -> int:
        """Mark read position `at` failed; the length of the run of failures it is now part of."""
        start = self._run_start.pop(at - 1, at)
        end = self._run_end.pop(at + 1, at)
        self._run_end[start], self._run_start[end] = end, start
        return end - start + 1

    def skip(self, url: str, key: str, error: BaseException, at: int | None = None) -> None:
        """Record a bad sample at read position `at` (or the unreadable rest of a shard); raise
        DataError once more than `max_consecutive` positions in a row have failed."""
        if isinstance(error, OSError) and error.strerror:
            detail = error.strerror  # OSError's args[0] is the errno ("NotFound: 2"); the url is named already
        else:
            detail = error.args[0] if error.args else ""  # webdataset appends streams/urls to args
        reason = f"{url}: {key}: {type(error).__name__}: {detail}"
        run = self._fail(self.place() if at is None else at)
        if not self.counting:
            return
        self.skipped += 1
        self.consecutive = max(self.consecutive, run)
        if len(self.reasons) < self.KEEP_REASONS:
            self.reasons.append(reason)
        now = time.monotonic()
        if self.skipped <= self.FIRST_LOGGED:
            log.warning("skipped a bad sample: %s", reason)
        elif now - self._last_log >= self.LOG_EVERY_S:
            log.warning("%d bad samples skipped so far in this worker (latest: %s)", self.skipped, reason)
            self._last_log = now
        if run > self.max_consecutive:
            raise DataError(f"{run} bad samples in a row (more than max_consecutive_errors="
                            f"{self.max_consecutive}); the latest in shard {url}, sample {key}: "
                            f"{type(error).__name__}: {detail}")

    def stats(self, worker: int) -> dict:
        return {STATS: {"worker": worker, "skipped": self.skipped, "reasons": list(self.reasons)}}


# --------------------------------------------------------------------------------------- stages


def read_parts(parts: Iterable[ShardPart], errors: SkipCounter, on_error: str = "skip",
               shard_cache: cache.ShardCache | None = None) -> Iterator[dict]:
    """ShardParts -> their raw samples, {"__key__", "__url__", extension: bytes}, in shard order.

    A shard that cannot be opened or read to the end (truncated, not a tar, its server gone after
    storage's retries) loses the rest of its samples, counted as one skip; with on_error="stop" it
    raises DataError naming the shard instead. Each sample yielded gets its place in this read
    order as READ_AT (the unreadable rest of a shard takes one place too), so failures in a row
    are counted in read order whatever shuffles the samples afterwards. Remote shards are read
    through `shard_cache` when given (`wlasl_shards.cache`).
    """
    for part in parts:
        i = 0
        try:
            with cache.open_shard(part.url, part.nbytes, part.sha256, shard_cache) as stream:
                files = tar_file_expander([{"url": part.url, "stream": stream}])
                # shards.group_members, not webdataset's group_by_keys: a repeated key (ids that share
                # one, in shards from before build refused them) is two samples, not an error that
                # loses the rest of the shard.
                members = ((f["fname"], f["data"]) for f in files if "fname" in f)  # {}: webdataset's shard end
                for sample in shards.group_members(members):
                    sample["__url__"] = part.url
                    if part.keeps(i):
                        sample[READ_AT] = errors.place()
                        yield sample
                    i += 1
                    if part.stop is not None and i >= part.stop:
                        break  # the rest of the shard is not in this part: stop reading
        except Exception as e:  # noqa: BLE001 - any read failure is the shard's, reported with its name
            if on_error == "stop":
                raise DataError(f"shard {part.url} failed at sample #{i} ({type(e).__name__}: {e}); "
                                f"shard_errors='skip' would skip the rest of it and go on") from None
            errors.skip(part.url, f"sample #{i} onwards", e, errors.place())


def shuffle_buffer(samples: Iterable[T], size: int, rng: random.Random) -> Iterator[T]:
    """The same samples in a random order: holds `size`, emits a random held one per arrival,
    shuffles the rest at the end. size <= 1 keeps the order."""
    buf: list[T] = []
    for sample in samples:
        if len(buf) < max(size, 1):
            buf.append(sample)
            continue
        k = rng.randrange(len(buf))
        yield buf[k]
        buf[k] = sample
    rng.shuffle(buf)
    yield from buf


def map_samples(samples: Iterable[dict], fn: Callable[[dict], dict], errors: SkipCounter) -> Iterator[dict]:
    """fn over raw samples; a sample fn raises for is skipped and recorded in `errors`."""
    for sample in samples:
        try:
            out = fn(sample)
        except Exception as e:  # noqa: BLE001 - bad data takes many forms (JSON, JPEG, npy, labels)
            errors.skip(sample.get("__url__", "?"), sample.get("__key__", "?"), e, sample.get(READ_AT))
            continue
        errors.ok(sample.get(READ_AT))
        yield out


# ------------------------------------------------------------------------------ one sample


def _member(sample: dict, ext: str) -> bytes:
    if ext not in sample:
        raise ValueError(f"missing member .{ext}")
    return sample[ext]


def parse_sample(sample: dict, num_classes: int) -> tuple[dict, int]:
    """(metadata, label) of a raw sample, checked enough that decoding can only fail on the frames:
    `shards.check_sample` bounds what the metadata claims before anything is allocated for it."""
    meta = shards.check_sample(sample)
    raw = _member(sample, shards.EXT_LABEL)
    try:
        label = int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"label {raw[:20]!r} is not an integer") from None
    if not 0 <= label < num_classes:
        raise ValueError(f"label {label} is outside 0..{num_classes - 1}")
    return meta, label


def _frames(sample: dict, meta: dict, indices: np.ndarray, box: tuple[int, int, int],
            mirror: bool = False) -> torch.Tensor:
    """(len(indices), size, size, 3) uint8 RGB, `box` = (y, x, size) cut while decoding, left-right
    mirrored if `mirror`; each distinct frame decoded once (padding repeats frames; `eval_clips` windows
    may overlap and go back in time)."""
    unique, inverse = np.unique(indices, return_inverse=True)
    ext = shards.EXT_FRAMES[meta["frames"]["codec"]]
    frames = shards.decode_frames({shards.EXT_META: meta, ext: sample[ext]}, unique.tolist(), box,
                                  channels="BGR" if mirror else "RGB")
    clip = torch.from_numpy(frames if np.array_equal(unique, indices) else frames[inverse.reshape(-1)])
    if mirror:
        # A BGR row read backwards byte by byte is the mirrored row in RGB. Reversing contiguous bytes
        # is vectorised; torch's flip of 3-byte pixels and numpy's reversed view are several times slower.
        n, h, w, _ = clip.shape
        clip = clip.view(n, h, w * 3).flip(-1).view(n, h, w, 3)
    return clip


def _train_draws(sample: dict, cfg: LoaderConfig, num_classes: int,
                 rng: np.random.Generator) -> tuple[dict, int, np.ndarray, int, int, bool]:
    """(meta, label, frame indices, crop y, crop x, mirror) of a raw training sample: every draw from
    `rng` a training example makes, without decoding a frame (a mid-epoch resume replays these)."""
    meta, label = parse_sample(sample, num_classes)
    indices = transforms.train_window(shards.frame_count(meta), cfg.clip_len, rng, cfg.frame_stride, cfg.pad)
    y, x = transforms.random_crop_params(meta["frames"]["height"], meta["frames"]["width"], cfg.crop_size, rng)
    mirror = cfg.flip and rng.random() < 0.5
    return meta, label, indices, y, x, mirror


def train_example(sample: dict, cfg: LoaderConfig, num_classes: int, rng: np.random.Generator) -> dict:
    """Raw sample -> {"clip": (clip_len, crop, crop, 3) uint8 tensor, "label", "video_id"}: a random
    window (only its frames decoded), random crop, random flip — `transforms.train_crop` with the same
    rng draws, but cropping while decoding and mirroring as part of it (see `_frames`)."""
    meta, label, indices, y, x, mirror = _train_draws(sample, cfg, num_classes, rng)
    clip = _frames(sample, meta, indices, (y, x, cfg.crop_size), mirror)
    return {"clip": clip, "label": label, "video_id": str(meta.get("video_id", ""))}


def eval_frames(num_frames: int, cfg: LoaderConfig) -> np.ndarray:
    """The frames an eval clip of a `num_frames` video holds: every `frame_stride`-th (padded to
    eval_min_frames), or with `eval_clips` K, K windows of clip_len frames one after another."""
    return transforms.eval_frame_indices(num_frames, cfg.eval_min_frames, cfg.frame_stride, cfg.eval_clips,
                                         cfg.clip_len)


def eval_example(sample: dict, cfg: LoaderConfig, num_classes: int) -> dict:
    """Raw sample -> {"clip": (T', crop, crop, 3) uint8 tensor, "label", "video_id"}: the frames of
    `eval_frames` (T' = max(ceil(T / frame_stride), eval_min_frames), or eval_clips * clip_len),
    center crop."""
    meta, label = parse_sample(sample, num_classes)
    indices = eval_frames(shards.frame_count(meta), cfg)
    y, x = transforms.center_crop_params(meta["frames"]["height"], meta["frames"]["width"], cfg.crop_size)
    clip = _frames(sample, meta, indices, (y, x, cfg.crop_size))
    return {"clip": clip, "label": label, "video_id": str(meta.get("video_id", ""))}


# ------------------------------------------------------------------------------- worker streams


def start_position(num_workers: int) -> dict:
    """The position (`TrainStream`'s `position`) of an epoch not started: no worker has produced anything."""
    return {"first_worker": 0, "workers": [{"produced": 0, "chunk": 0, "emitted": 0, "skipped": 0}
                                           for _ in range(max(num_workers, 1))]}


class TrainStream(IterableDataset):
    """One rank's training samples for one epoch; in each DataLoader worker, that worker's share.

    `position` (a mid-epoch resume; `start_position` is the epoch's start) says, per worker, how many
    examples the trainer used ("produced") and where the last of them was in the worker's stream: pass
    ("chunk") and the shuffle buffer's outputs so far ("emitted", bad samples included), with the skips so
    far; "first_worker" is the worker whose example comes next in the round robin. A worker resumed there
    replays what came before without decoding it: its raw samples are read again (a tar stream has no
    index to seek in) so that the shuffle buffer gets the same ones, and the augmentation draws are
    made from each sample's metadata, so the rest of the epoch is exactly the uninterrupted run's.
    Every example carries AT = {"worker", "chunk", "emitted", "skipped"}, from which the loader keeps
    the position (`TrainLoader.position`).
    """

    def __init__(self, parts: list[ShardPart], cfg: LoaderConfig, num_classes: int, epoch: int,
                 rank: int, world_size: int, budget: int, position: dict | None = None):
        self.parts, self.cfg, self.num_classes = parts, cfg, num_classes
        self.epoch, self.rank, self.world_size, self.budget = epoch, rank, world_size, budget
        self.position = position  # None: the epoch's start, for whatever number of workers reads it

    def start(self, num_workers: int) -> dict:
        """The position this stream starts at, read by `num_workers` workers: a DataLoader of the user's
        (api.ClipDataset) picks its own worker count, and an epoch's start fits any."""
        return self.position or start_position(num_workers)

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = loader_worker()
        return self.worker_stream(self.logical_worker(worker, num_workers), num_workers)

    def logical_worker(self, worker: int, num_workers: int) -> int:
        """The worker whose share loader worker `worker` runs: rotated so that the round robin starts
        at the position's "first_worker" (the order an uninterrupted epoch goes on in)."""
        return (worker + self.start(num_workers)["first_worker"]) % num_workers

    def worker_stream(self, worker: int, num_workers: int) -> Iterator[dict]:
        """Worker `worker` of `num_workers`' share, ending with its stats record."""
        cfg = self.cfg
        try:
            plan = plan_rank(self.parts, cfg.seed, self.epoch, self.rank, self.world_size, self.budget)
        except EmptyShare as e:
            raise DataError(str(e)) from None
        position = self.start(num_workers)
        if len(position["workers"]) != num_workers:
            raise DataError(f"a position of {len(position['workers'])} loader workers cannot resume "
                            f"with {num_workers}")
        at = position["workers"][worker]
        planned = worker_plan(plan, worker, num_workers)
        budget = sum(p.count for p in planned) - at["produced"]
        errors = SkipCounter(cfg.max_consecutive_errors)
        shard_cache = cfg.shard_cache()
        errors.skipped = at["skipped"]
        done = (at["chunk"], at["emitted"])  # the last output used, as (pass, shuffle output number)
        errors.counting = done == (0, 0)  # what is read up to it was counted in `skipped` already
        ids = (cfg.seed, self.epoch, self.rank, worker)
        order_rng = random.Random("wlasl-shards:" + ":".join(map(str, ids)))
        aug_rng = np.random.default_rng(ids)

        def chunks() -> Iterator[list[ShardPart]]:
            yield planned
            # Reached only when samples were skipped (or dataset.json overstates a shard): more
            # of this rank's data, from the next passes, until the worker's budget is met.
            for cycle in itertools.count(len(plan)):
                rank_parts = rank_pass(self.parts, cfg.seed, self.epoch, cycle, self.rank, self.world_size)
                yield split_parts(rank_parts, num_workers, worker)

        def fresh(samples: Iterable[dict], chunk: int, replayed: list[int]) -> Iterator[dict]:
            """The shuffled raw samples after the position, each with its AT; those up to it only
            advance the augmentation RNG as their decoding did (a bad one failed there, or later)."""
            for n, sample in enumerate(samples, 1):
                if (chunk, n) <= done:
                    replayed[0] += 1
                    with contextlib.suppress(Exception):  # it was skipped (and counted) when it was used
                        _train_draws(sample, cfg, self.num_classes, aug_rng)
                    errors.counting = (chunk, n) == done
                    continue
                sample[AT] = {"worker": worker, "chunk": chunk, "emitted": n}
                yield sample

        def example(sample: dict) -> dict:
            out = train_example(sample, cfg, self.num_classes, aug_rng)
            out[AT] = {**sample[AT], "skipped": errors.skipped}
            return out

        def examples() -> Iterator[dict]:
            for chunk, parts in enumerate(chunks()):
                got = [0]
                stream = read_parts(parts, errors, cfg.shard_errors, shard_cache)  # raw samples, shard by shard
                stream = shuffle_buffer(stream, cfg.shuffle_buffer, order_rng)  # raw, random order
                stream = fresh(stream, chunk, got)  # those after the position (a resume)
                stream = map_samples(stream, example, errors)  # decoded, cropped clips
                for out in stream:
                    got[0] += 1
                    yield out
                if not got[0]:
                    raise DataError("no usable sample in " + (", ".join(p.url for p in parts) or "no shards")
                                    + (f" ({errors.reasons[-1]})" if errors.reasons else ""))

        gen = examples()
        try:
            yield from itertools.islice(gen, budget)
        finally:
            gen.close()  # closes the open shard now, not at garbage collection
        yield _stats(errors, worker, shard_cache)


def _stats(errors: SkipCounter, worker: int, shard_cache: cache.ShardCache | None) -> dict:
    """A worker's final record: its skips and, with a cache, its cache counts."""
    out = errors.stats(worker)
    out[STATS]["cache"] = dict(shard_cache.counts) if shard_cache is not None else {}
    return out


class EvalStream(IterableDataset):
    """One rank's share of a split, every sample once; in each worker, that worker's share."""

    def __init__(self, parts: list[ShardPart], cfg: LoaderConfig, num_classes: int, rank: int, world_size: int):
        self.parts, self.cfg, self.num_classes = parts, cfg, num_classes
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[dict]:
        return self.worker_stream(*loader_worker())

    def worker_stream(self, worker: int, num_workers: int) -> Iterator[dict]:
        """Worker `worker` of `num_workers`' share, ending with its stats record."""
        parts = split_parts(split_parts(self.parts, self.world_size, self.rank), num_workers, worker)
        errors = SkipCounter(self.cfg.max_consecutive_errors)
        shard_cache = self.cfg.shard_cache()
        stream = read_parts(parts, errors, self.cfg.shard_errors, shard_cache)  # raw samples in shard order
        yield from map_samples(stream, lambda s: eval_example(s, self.cfg, self.num_classes),
                               errors)  # decoded, center-cropped clips
        yield _stats(errors, worker, shard_cache)


__all__ = ["AT", "DataError", "EvalStream", "LoaderConfig", "READ_AT", "STATS", "SHARD_ERRORS", "SkipCounter",
           "TrainStream", "WORKER_MODES", "check_crop", "eval_example", "eval_frames", "map_samples", "parse_sample",
           "read_parts",
           "shard_parts", "shard_urls", "shuffle_buffer", "start_position", "train_example"]
