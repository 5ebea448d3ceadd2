"""Input pipelines: WebDataset shards -> batches of uint8 clips, for training and for evaluation.

What each DataLoader worker runs (every stage is a generator over sample dicts, testable on a list):

    parts           ShardParts: a shard, or every k-th sample of one (see `split_parts`)
    read_parts      raw samples {"__key__", "__url__", "json", "cls", "jpgs" | "npy"}: bytes as stored,
                    read with webdataset's tar iterators and NO decoder (its defaults unpickle)
    shuffle_buffer  (train) the same, in a seeded random order; raw samples are small (compressed)
    map_samples     {"clip": (T, C, C, 3) uint8 tensor, "label": int, "video_id": str}; only the
                    frames of the chosen window are decoded. A bad sample is skipped and counted
                    here (`SkipCounter`), the one place bad data is handled
    islice(budget)  (train) exactly this worker's share of the epoch
    + one final {"__stats__": ...} record carrying the worker's skip count to the main process

and the main process (`ClipLoader`) collates B samples into `(clips (B, T, C, C, 3) uint8,
labels (B,) int64[, video_ids])`, pinned when CUDA is there; floats are made on the device
(`transforms.to_model_input`).

Equal batches on every rank (DDP hangs when one rank runs out first). Every rank gets exactly
`batches_per_epoch = total // (world_size * batch_size)` batches, i.e. a budget of that many
samples times the batch size, planned from the sample counts in dataset.json before any reading:

  * pass c of epoch e: all shards shuffled by (seed, e, c), the same order on every rank, split
    among ranks (`rank_pass`); a rank takes its passes' parts in order until its budget is met,
    the last part cut to the samples still needed (`plan_rank`). A rank whose shards hold fewer
    samples than the budget goes on to pass 1, 2, ... (other shards, a new order): only then does
    it see a sample twice.
  * each pass's parts are split among the rank's workers (`split_parts`), and each worker yields
    exactly the planned samples of its parts (`worker_budget`), so the rank's samples for the epoch
    are the same multiset whatever `num_workers` is; the main process batches the merged stream
    and ends after exactly `batches_per_epoch` batches, with no partial batch.
  * a skipped (corrupt) sample is replaced by the worker reading on into its next passes, so
    skips do not change the count either.

Evaluation reads every sample of the split exactly once over all ranks and workers (same
`split_parts`, no shuffle, no budget); ranks may get different counts, which is fine for a forward
pass without collectives (gather results with `all_gather_object`, not equal-shape tensors).

Where there are fewer shards than ranks (or a rank has fewer parts than workers), `split_parts`
splits samples instead: the sharers each read the shard and keep every k-th sample. The union is
still exactly the input, at the cost of reading that shard k times.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import queue
import random
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from wlasl_shards import shards, storage
from wlasl_shards.train import transforms

log = logging.getLogger(__name__)

# webdataset's own pipelines (wds.WebDataset(urls), users' code) open s3://, gs://, http(s):// through
# storage as well: the same timeouts and retries instead of curl's unbounded waits.
storage.register_webdataset()

T = TypeVar("T")
STATS = "__stats__"  # key of the record that ends every worker's stream
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
    eval_batch_size: int = 1  # videos per eval batch; > 1 pads shorter videos with their last frame
    eval_min_frames: int = transforms.I3D_MIN_FRAMES  # eval clips are padded to at least this length
    num_workers: int = 4  # loader workers per rank; 0 reads in the main process
    worker_mode: str = "process"  # "process": DataLoader worker processes; "thread": threads of this process
    prefetch_batches: int = 2  # batches' worth of samples a rank's workers may prepare ahead
    pin_memory: bool = True  # pin collated batches (only when CUDA is available) for async copies
    shuffle_buffer: int = 100  # raw (compressed, ~1-5 MB) samples each worker holds to shuffle samples
    seed: int = 0  # with epoch, rank and worker: shard order, sample order, windows, crops, flips
    max_consecutive_errors: int = 20  # more bad samples than this in a row stops with DataError
    shard_errors: str = "skip"  # a shard unreadable after storage's retries: skip its rest (counted) | stop

    def check(self) -> None:
        """Raise ValueError naming the first bad field."""
        for name in ("clip_len", "crop_size", "batch_size", "eval_batch_size", "eval_min_frames",
                     "prefetch_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_workers", "shuffle_buffer", "seed", "max_consecutive_errors"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.shard_errors not in SHARD_ERRORS:
            raise ValueError(f"shard_errors must be one of {SHARD_ERRORS}, got {self.shard_errors!r}")
        if self.worker_mode not in WORKER_MODES:
            raise ValueError(f"worker_mode must be one of {WORKER_MODES}, got {self.worker_mode!r}")


# --------------------------------------------------------------------------- locations and index


# dataset_url and load_index live in wlasl_shards.storage (local paths and URLs); re-exported here.
dataset_url = storage.dataset_url
load_index = storage.load_index


def _split_entry(index: dict, split: str, where: str) -> dict:
    splits = index["splits"]
    if split not in splits:
        raise ValueError(f"{where}: no split {split!r} (has {', '.join(sorted(splits)) or 'none'})")
    return splits[split]


def shard_urls(dataset: str | os.PathLike, split: str, index: dict | None = None) -> list[str]:
    """URLs of the shards of `split`, in the order dataset.json lists them."""
    return [p.url for p in shard_parts(dataset, split, index)]


@dataclass(frozen=True)
class ShardPart:
    """A shard, or the samples of it with index i (0-based, in the shard) such that
    i % stride == offset and i < stop. Splitting a part again multiplies the stride."""

    url: str  # where the shard is (from `dataset_url`)
    samples: int  # samples in the whole shard, from dataset.json
    nbytes: int | None = None  # the shard's size per dataset.json: a remote object of another size is an error
    stride: int = 1
    offset: int = 0
    stop: int | None = None  # None: to the end of the shard

    @property
    def count(self) -> int:
        """Samples this part holds, as dataset.json counts them."""
        end = self.samples if self.stop is None else min(self.stop, self.samples)
        return len(range(self.offset, end, self.stride))

    def keeps(self, i: int) -> bool:
        return i % self.stride == self.offset and (self.stop is None or i < self.stop)

    def split(self, parts: int, j: int) -> ShardPart:
        """The j-th of `parts` interleaved pieces (0 <= j < parts); the pieces partition this part."""
        return dataclasses.replace(self, stride=self.stride * parts, offset=self.offset + self.stride * j)

    def head(self, n: int) -> ShardPart:
        """The first n (>= 1) samples of this part."""
        stop = self.offset + self.stride * (n - 1) + 1
        return dataclasses.replace(self, stop=stop if self.stop is None else min(stop, self.stop))


def shard_parts(dataset: str | os.PathLike, split: str, index: dict | None = None) -> list[ShardPart]:
    """The shards of `split` as whole-shard parts, in dataset.json's order."""
    index = load_index(dataset) if index is None else index
    entry = _split_entry(index, split, dataset_url(dataset))
    return [ShardPart(dataset_url(dataset, s["name"]), int(s["samples"]), nbytes=s.get("bytes"))
            for s in entry["shards"]]


# ---------------------------------------------------------------------------------- the plan


def split_parts(parts: Sequence[ShardPart], n: int, j: int) -> list[ShardPart]:
    """The j-th of n disjoint shares of `parts` (whose union is `parts`).

    With at least n parts, every n-th part (starting at j). With fewer, share j is a piece of a
    single part: the parts are dealt round-robin and the sharers of one part interleave its samples.
    """
    if not 0 <= j < n:
        raise ValueError(f"share {j} of {n} does not exist")
    if len(parts) >= n:
        return list(parts[j::n])
    if not parts:
        return []
    u = j % len(parts)
    sharers = len(range(u, n, len(parts)))
    return [parts[u].split(sharers, j // len(parts))]


def batches_per_epoch(total_samples: int, world_size: int, batch_size: int) -> int:
    """Batches every rank yields in a training epoch: total // (world_size * batch_size), at least 1."""
    return max(1, total_samples // (world_size * batch_size))


def shard_order(parts: Sequence[ShardPart], seed: int, epoch: int, cycle: int) -> list[ShardPart]:
    """`parts` in the random order of pass `cycle` of `epoch`: a function of the arguments only, so
    every rank computes the same order without communicating."""
    order = list(parts)
    random.Random(f"wlasl-shards:{seed}:{epoch}:{cycle}").shuffle(order)  # str seeds are stable
    return order


def rank_pass(parts: Sequence[ShardPart], seed: int, epoch: int, cycle: int, rank: int,
              world_size: int) -> list[ShardPart]:
    """The rank's share of pass `cycle` of `epoch` (disjoint from the other ranks' shares)."""
    return split_parts(shard_order(parts, seed, epoch, cycle), world_size, rank)


def plan_rank(parts: Sequence[ShardPart], seed: int, epoch: int, rank: int, world_size: int,
              budget: int) -> list[list[ShardPart]]:
    """Per pass, the parts a rank reads in an epoch to get exactly `budget` samples (by dataset.json's
    counts): whole passes in order, the last part cut short. More than one pass means the rank's
    share of the split is smaller than its budget, and it sees some samples twice."""
    passes: list[list[ShardPart]] = []
    remaining = budget
    for cycle in itertools.count():
        if remaining <= 0:
            return passes
        taken = []
        for part in rank_pass(parts, seed, epoch, cycle, rank, world_size):
            n = min(part.count, remaining)
            if n > 0:
                taken.append(part if n == part.count else part.head(n))
                remaining -= n
        if not taken:
            raise DataError(f"rank {rank} of {world_size} has no samples to read "
                            f"(shards: {', '.join(p.url for p in parts) or 'none'})")
        passes.append(taken)
    raise AssertionError("unreachable")


def worker_plan(rank_plan: Sequence[Sequence[ShardPart]], worker: int, num_workers: int) -> list[ShardPart]:
    """The parts one worker reads: its share of each pass, passes in order."""
    return [p for parts in rank_plan for p in split_parts(parts, num_workers, worker)]


def worker_budget(rank_plan: Sequence[Sequence[ShardPart]], worker: int, num_workers: int) -> int:
    """Samples the worker yields; over all workers these add up to the rank's budget."""
    return sum(p.count for p in worker_plan(rank_plan, worker, num_workers))


# ------------------------------------------------------------------------------------ bad data


class SkipCounter:
    """Bad samples of one stream (one worker process): count, first reasons, rate-limited
    warnings, and the bound on failures in a row."""

    FIRST_LOGGED = 5  # skips logged one by one; after that one summary line per LOG_EVERY_S
    LOG_EVERY_S = 30.0
    KEEP_REASONS = 100  # reasons kept for the report

    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0
        self.reasons: list[str] = []
        self._last_log = -math.inf

    def ok(self) -> None:
        self.consecutive = 0

    def skip(self, url: str, key: str, error: BaseException) -> None:
        """Record a bad sample (or the unreadable rest of a shard); raise DataError past the bound."""
        detail = error.args[0] if error.args else ""  # webdataset appends streams/urls to args
        reason = f"{url}: {key}: {type(error).__name__}: {detail}"
        self.skipped += 1
        self.consecutive += 1
        if len(self.reasons) < self.KEEP_REASONS:
            self.reasons.append(reason)
        now = time.monotonic()
        if self.skipped <= self.FIRST_LOGGED:
            log.warning("skipped a bad sample: %s", reason)
        elif now - self._last_log >= self.LOG_EVERY_S:
            log.warning("%d bad samples skipped so far in this worker (latest: %s)", self.skipped, reason)
            self._last_log = now
        if self.consecutive > self.max_consecutive:
            raise DataError(f"{self.consecutive} bad samples in a row (more than max_consecutive_errors="
                            f"{self.max_consecutive}); the last in shard {url}, sample {key}: "
                            f"{type(error).__name__}: {detail}")

    def stats(self, worker: int) -> dict:
        return {STATS: {"worker": worker, "skipped": self.skipped, "reasons": list(self.reasons)}}


# --------------------------------------------------------------------------------------- stages


def read_parts(parts: Iterable[ShardPart], errors: SkipCounter, on_error: str = "skip") -> Iterator[dict]:
    """ShardParts -> their raw samples, {"__key__", "__url__", extension: bytes}, in shard order.

    A shard that cannot be opened or read to the end (truncated, not a tar, its server gone after
    storage's retries) loses the rest of its samples, counted as one skip; with on_error="stop" it
    raises DataError naming the shard instead.
    """
    for part in parts:
        i = 0
        try:
            with storage.open_read(part.url, part.nbytes) as stream:
                files = tar_file_expander([{"url": part.url, "stream": stream}])
                for sample in group_by_keys(files):
                    if part.keeps(i):
                        yield sample
                    i += 1
                    if part.stop is not None and i >= part.stop:
                        break  # the rest of the shard is not in this part: stop reading
        except Exception as e:  # noqa: BLE001 - any read failure is the shard's, reported with its name
            if on_error == "stop":
                raise DataError(f"shard {part.url} failed at sample #{i} ({type(e).__name__}: {e}); "
                                f"shard_errors='skip' would skip the rest of it and go on") from None
            errors.skip(part.url, f"sample #{i} onwards", e)


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
            errors.skip(sample.get("__url__", "?"), sample.get("__key__", "?"), e)
            continue
        errors.ok()
        yield out


# ------------------------------------------------------------------------------ one sample


def _member(sample: dict, ext: str) -> bytes:
    if ext not in sample:
        raise ValueError(f"missing member .{ext}")
    return sample[ext]


def parse_sample(sample: dict, num_classes: int) -> tuple[dict, int]:
    """(metadata, label) of a raw sample, checked enough that decoding can only fail on the frames."""
    meta = json.loads(_member(sample, shards.EXT_META))
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), dict):
        raise ValueError("metadata has no 'frames' object")
    fmeta = meta["frames"]
    if fmeta.get("codec") not in shards.CODECS:
        raise ValueError(f"unknown frame codec {fmeta.get('codec')!r}")
    if not isinstance(fmeta.get("count"), int) or fmeta["count"] < 1:
        raise ValueError(f"frame count {fmeta.get('count')!r} is not a positive integer")
    _member(sample, shards.EXT_FRAMES[fmeta["codec"]])
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
    mirrored if `mirror`; each distinct frame decoded once (padding repeats frames)."""
    unique, inverse = np.unique(indices, return_inverse=True)
    ext = shards.EXT_FRAMES[meta["frames"]["codec"]]
    frames = shards.decode_frames({shards.EXT_META: meta, ext: sample[ext]}, unique.tolist(), box,
                                  channels="BGR" if mirror else "RGB")
    clip = torch.from_numpy(frames if len(unique) == len(indices) else frames[inverse.reshape(-1)])
    if mirror:
        # A BGR row read backwards byte by byte is the mirrored row in RGB. Reversing contiguous bytes
        # is vectorised; torch's flip of 3-byte pixels takes 2.5x as long, numpy's reversed view 4x.
        n, h, w, _ = clip.shape
        clip = clip.view(n, h, w * 3).flip(-1).view(n, h, w, 3)
    return clip


def train_example(sample: dict, cfg: LoaderConfig, num_classes: int, rng: np.random.Generator) -> dict:
    """Raw sample -> {"clip": (clip_len, crop, crop, 3) uint8 tensor, "label", "video_id"}: a random
    window (only its frames decoded), random crop, random flip — `transforms.train_crop` with the same
    rng draws, but cropping while decoding and mirroring as part of it (see `_frames`)."""
    meta, label = parse_sample(sample, num_classes)
    indices = transforms.train_window(shards.frame_count(meta), cfg.clip_len, rng)
    y, x = transforms.random_crop_params(meta["frames"]["height"], meta["frames"]["width"], cfg.crop_size, rng)
    mirror = cfg.flip and rng.random() < 0.5
    clip = _frames(sample, meta, indices, (y, x, cfg.crop_size), mirror)
    return {"clip": clip, "label": label, "video_id": str(meta.get("video_id", ""))}


def eval_example(sample: dict, cfg: LoaderConfig, num_classes: int) -> dict:
    """Raw sample -> {"clip": (max(T, eval_min_frames), crop, crop, 3) uint8 tensor, "label",
    "video_id"}: every frame, center crop."""
    meta, label = parse_sample(sample, num_classes)
    indices = transforms.eval_indices(shards.frame_count(meta), cfg.eval_min_frames)
    y, x = transforms.center_crop_params(meta["frames"]["height"], meta["frames"]["width"], cfg.crop_size)
    clip = _frames(sample, meta, indices, (y, x, cfg.crop_size))
    return {"clip": clip, "label": label, "video_id": str(meta.get("video_id", ""))}


# ------------------------------------------------------------------------------- worker streams


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class TrainStream(IterableDataset):
    """One rank's training samples for one epoch; in each DataLoader worker, that worker's share."""

    def __init__(self, parts: list[ShardPart], cfg: LoaderConfig, num_classes: int, epoch: int,
                 rank: int, world_size: int, budget: int):
        self.parts, self.cfg, self.num_classes = parts, cfg, num_classes
        self.epoch, self.rank, self.world_size, self.budget = epoch, rank, world_size, budget

    def __iter__(self) -> Iterator[dict]:
        return self.worker_stream(*_worker())

    def worker_stream(self, worker: int, num_workers: int) -> Iterator[dict]:
        """Worker `worker` of `num_workers`' share, ending with its stats record."""
        cfg = self.cfg
        plan = plan_rank(self.parts, cfg.seed, self.epoch, self.rank, self.world_size, self.budget)
        planned = worker_plan(plan, worker, num_workers)
        budget = sum(p.count for p in planned)
        errors = SkipCounter(cfg.max_consecutive_errors)
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

        def examples() -> Iterator[dict]:
            for parts in chunks():
                got = 0
                stream = read_parts(parts, errors, self.cfg.shard_errors)  # raw samples, shard by shard
                stream = shuffle_buffer(stream, cfg.shuffle_buffer, order_rng)  # raw, random order
                stream = map_samples(stream, lambda s: train_example(s, cfg, self.num_classes, aug_rng),
                                     errors)  # decoded, cropped clips
                for example in stream:
                    got += 1
                    yield example
                if not got:
                    raise DataError("no usable sample in " + (", ".join(p.url for p in parts) or "no shards")
                                    + (f" ({errors.reasons[-1]})" if errors.reasons else ""))

        gen = examples()
        try:
            yield from itertools.islice(gen, budget)
        finally:
            gen.close()  # closes the open shard now, not at garbage collection
        yield errors.stats(worker)


class EvalStream(IterableDataset):
    """One rank's share of a split, every sample once; in each worker, that worker's share."""

    def __init__(self, parts: list[ShardPart], cfg: LoaderConfig, num_classes: int, rank: int, world_size: int):
        self.parts, self.cfg, self.num_classes = parts, cfg, num_classes
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[dict]:
        return self.worker_stream(*_worker())

    def worker_stream(self, worker: int, num_workers: int) -> Iterator[dict]:
        """Worker `worker` of `num_workers`' share, ending with its stats record."""
        parts = split_parts(split_parts(self.parts, self.world_size, self.rank), num_workers, worker)
        errors = SkipCounter(self.cfg.max_consecutive_errors)
        stream = read_parts(parts, errors, self.cfg.shard_errors)  # raw samples in shard order
        yield from map_samples(stream, lambda s: eval_example(s, self.cfg, self.num_classes),
                               errors)  # decoded, center-cropped clips
        yield errors.stats(worker)


# ------------------------------------------------------------------------------ main process


_DONE = object()  # a worker thread's stream has ended


def round_robin_threads(streams: Sequence[Callable[[], Iterable[T]]], ahead: int) -> Iterator[T]:
    """Runs each stream in a thread of its own, up to `ahead` items in advance, and yields their items
    round robin, passing over streams that have ended: the order DataLoader gives for the same streams in
    worker processes. An exception in a stream is raised here; when the caller stops early, the threads
    stop at their next item.

    Why threads: simplejpeg decodes without the GIL, and a clip made in this process needs no trip
    through shared memory (a fresh 9.6 MB segment per clip for a worker process, copied in and
    page-faulted on both sides: 2.8x the CPU per clip of decoding in place, measured by bench_loader).
    """
    stop = threading.Event()
    queues: list[queue.Queue] = [queue.Queue(maxsize=ahead) for _ in streams]

    def put(q: queue.Queue, item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(make: Callable[[], Iterable[T]], q: queue.Queue) -> None:
        items = iter(make())
        try:
            for item in items:
                if not put(q, item):
                    return
        except BaseException as e:  # handed to the consumer, which re-raises it
            put(q, _Raised(e))
            return
        finally:
            getattr(items, "close", lambda: None)()  # a stopped stream closes its shard now
        put(q, _DONE)

    threads = [threading.Thread(target=run, args=(make, q), daemon=True, name=f"wlasl-loader-{i}")
               for i, (make, q) in enumerate(zip(streams, queues))]
    for t in threads:
        t.start()
    try:
        live = list(queues)
        while live:
            for q in list(live):
                item = q.get()
                if item is _DONE:
                    live.remove(q)
                elif isinstance(item, _Raised):
                    raise item.error
                else:
                    yield item
    finally:
        stop.set()
        for t in threads:
            t.join()


@dataclass(frozen=True)
class _Raised:
    error: BaseException


class BufferPool:
    """Reuses the memory of big uint8 CPU tensors once nothing references them any more.

    A batch of 8 training clips is 77 MB; malloc maps so big a block fresh from the kernel every time and
    unmaps it on free, so each batch page-faults its whole size in again: reusing the memory saved 15%
    of the loader's CPU per clip here (A/B, bench_loader's data). CUDA's pinned batches avoid it through torch's caching host
    allocator; this is the same for unpinned ones. A tensor from `empty` keeps its buffer alive through
    numpy (torch.from_numpy holds the array); when the tensor and every view of it are gone, the buffer
    comes back here. At most `keep` free buffers are held (by size, the most recent first).
    """

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._free: list[np.ndarray] = []  # flat uint8 buffers, no tensor refers to them
        self._lock = threading.Lock()  # buffers come back from whichever thread drops the last reference

    def empty(self, shape: Sequence[int]) -> torch.Tensor:
        """An uninitialised uint8 tensor of `shape`, in recycled memory when a buffer of that size is free."""
        size = math.prod(shape)
        with self._lock:
            hit = next((i for i, b in enumerate(self._free) if b.size == size), None)
            flat = self._free.pop(hit) if hit is not None else None
        if flat is None:
            flat = np.empty(size, np.uint8)
        view = flat.reshape(shape)  # a new array object: its death says the tensor's storage is gone
        weakref.finalize(view, self._release, flat)
        return torch.from_numpy(view)

    def _release(self, flat: np.ndarray) -> None:
        with self._lock:
            self._free.insert(0, flat)
            del self._free[self.keep:]


_batches = BufferPool()


def collate(examples: Sequence[dict], pin: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Examples -> (clips (B, T, C, C, 3) uint8, labels (B,) int64, video ids); clips shorter than the
    longest are padded with their last frame (only eval batches of > 1 video have different T)."""
    length = max(e["clip"].shape[0] for e in examples)
    shape = (len(examples), length, *examples[0]["clip"].shape[1:])
    # Pinned: one copy, straight in (torch caches pinned blocks); unpinned: recycled memory, see BufferPool.
    clips = torch.empty(shape, dtype=torch.uint8, pin_memory=True) if pin else _batches.empty(shape)
    for b, e in enumerate(examples):
        t = e["clip"].shape[0]
        clips[b, :t] = e["clip"]
        clips[b, t:] = e["clip"][-1]
    labels = torch.tensor([e["label"] for e in examples], dtype=torch.int64)
    if pin:  # else the labels' non_blocking copy to the GPU would be synchronous
        labels = labels.pin_memory()
    return clips, labels, [e["video_id"] for e in examples]


class ClipLoader:
    """Eval batches of one rank: iterate for `(clips, labels, video_ids)`. No `len()`: skipped
    samples would make it wrong; `num_samples` is this rank's count per dataset.json.

    Each iteration starts fresh DataLoader workers and replays the same epoch (same seeds). After
    (or during) an iteration, `skipped` and `skip_reasons` hold the bad samples the workers
    skipped, as far as they have reported them: each worker reports once, when its stream ends
    (workers are processes; this is how their counts reach the trainer).
    """

    num_batches: int | None = None  # exact batch count (training only)
    with_ids = True

    def __init__(self, stream: IterableDataset, cfg: LoaderConfig, batch_size: int, num_samples: int):
        self.stream, self.cfg, self.batch_size = stream, cfg, batch_size
        self.num_samples = num_samples
        self.skipped = 0
        self.skip_reasons: list[str] = []

    def _examples(self) -> Iterator[dict]:
        """Worker output minus the stats records, which go into `skipped` / `skip_reasons`."""
        workers = self.cfg.num_workers
        # Samples, not batches, come from the workers: enough per worker to keep `prefetch_batches` ahead.
        ahead = max(2, math.ceil(self.cfg.prefetch_batches * self.batch_size / workers)) if workers else 0
        if workers and self.cfg.worker_mode == "thread":
            # A DataLoader iterator draws its base seed from torch's global generator; draw it too, so
            # that what else uses that generator (dropout) sees the same numbers in either mode.
            torch.empty((), dtype=torch.int64).random_()
            items = round_robin_threads([functools.partial(self.stream.worker_stream, w, workers)
                                         for w in range(workers)], ahead)
        else:
            items = DataLoader(self.stream, batch_size=None, num_workers=workers,
                               prefetch_factor=ahead if workers else None)
        for item in items:
            if STATS in item:
                self.skipped += item[STATS]["skipped"]
                self.skip_reasons += item[STATS]["reasons"]
                continue
            yield item

    def __iter__(self) -> Iterator[tuple]:
        self.skipped, self.skip_reasons = 0, []
        pin = self.cfg.pin_memory and torch.cuda.is_available()
        batches = 0
        batch: list[dict] = []
        for example in self._examples():
            batch.append(example)
            if len(batch) == self.batch_size:
                yield self._out(collate(batch, pin))
                batches += 1
                batch = []
        if batch and self.num_batches is None:
            yield self._out(collate(batch, pin))
        elif self.num_batches is not None and (batch or batches != self.num_batches):
            # The plan makes this impossible with a truthful dataset.json; stop loudly rather
            # than let this rank leave DDP's collectives early (a hang on the other ranks).
            raise DataError(f"got {batches} batches and {len(batch)} samples, planned exactly "
                            f"{self.num_batches} batches of {self.batch_size}")

    def _out(self, collated: tuple) -> tuple:
        return collated if self.with_ids else collated[:2]


class TrainLoader(ClipLoader):
    """Training batches of one rank for one epoch: iterate for `(clips, labels)`; `len()` is exact
    and the same on every rank."""

    with_ids = False

    def __init__(self, stream: TrainStream, cfg: LoaderConfig, num_batches: int):
        super().__init__(stream, cfg, cfg.batch_size, num_batches * cfg.batch_size)
        self.num_batches = num_batches

    def __len__(self) -> int:
        return self.num_batches


def dist_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): the arguments, else torch.distributed's when initialised, else (0, 1)."""
    initialised = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..world_size-1, got rank {rank} of world_size {world_size}")
    return rank, world_size


def _check_crop(index: dict, cfg: LoaderConfig, where: str) -> None:
    size = index["params"].get("size")
    if isinstance(size, int) and cfg.crop_size > size:
        raise ValueError(f"crop_size {cfg.crop_size} is larger than the frames of {where} (size {size})")


def make_train_loader(dataset: str | os.PathLike, cfg: LoaderConfig, epoch: int, rank: int | None = None,
                      world_size: int | None = None, split: str = "train") -> TrainLoader:
    """Training batches `(clips (B, clip_len, crop, crop, 3) uint8, labels (B,) int64)` of `epoch` for
    one rank: exactly `batches_per_epoch(samples in split, world_size, batch_size)` of them."""
    cfg.check()
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    rank, world_size = dist_info(rank, world_size)
    index = load_index(dataset)
    _check_crop(index, cfg, dataset_url(dataset))
    parts = shard_parts(dataset, split, index)
    total = sum(p.count for p in parts)
    if total == 0:
        raise ValueError(f"split {split!r} of {dataset_url(dataset)} has no samples")
    n = batches_per_epoch(total, world_size, cfg.batch_size)
    stream = TrainStream(parts, cfg, len(index["classes"]), epoch, rank, world_size, n * cfg.batch_size)
    log.info("rank %d/%d epoch %d: %d batches of %d from %d %s samples in %d shards", rank, world_size,
             epoch, n, cfg.batch_size, total, split, len(parts))
    return TrainLoader(stream, cfg, n)


def make_eval_loader(dataset: str | os.PathLike, cfg: LoaderConfig, split: str = "val", rank: int | None = None,
                     world_size: int | None = None) -> ClipLoader:
    """Eval batches `(clips (B, T, crop, crop, 3) uint8, labels (B,) int64, video_ids)` of this rank's
    share of `split`: over all ranks every sample once, all frames, center crop."""
    cfg.check()
    rank, world_size = dist_info(rank, world_size)
    index = load_index(dataset)
    _check_crop(index, cfg, dataset_url(dataset))
    parts = shard_parts(dataset, split, index)
    stream = EvalStream(parts, cfg, len(index["classes"]), rank, world_size)
    mine = sum(p.count for p in split_parts(parts, world_size, rank))
    return ClipLoader(stream, cfg, cfg.eval_batch_size, mine)


__all__ = ["BufferPool", "ClipLoader", "DataError", "EvalStream", "LoaderConfig", "ShardPart", "SkipCounter",
           "TrainLoader", "TrainStream",
           "batches_per_epoch", "collate", "dataset_url", "dist_info", "eval_example", "load_index",
           "make_eval_loader", "make_train_loader", "map_samples", "parse_sample", "plan_rank", "rank_pass",
           "read_parts", "round_robin_threads", "shard_order", "shard_parts", "shard_urls", "shuffle_buffer",
           "split_parts", "train_example", "worker_budget", "worker_plan"]
