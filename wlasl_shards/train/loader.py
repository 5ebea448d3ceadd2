"""The loader machinery of one rank: worker processes or threads, batch buffers, collate, and the loaders.

The workers run `data.TrainStream` / `data.EvalStream` (each worker its share, per `plan`), and the main
process (`ClipLoader`) collates B samples into `(clips (B, T, C, C, 3) uint8, labels (B,) int64[,
video_ids])`, pinned when CUDA is there; floats are made on the device (`transforms.to_model_input`).
A training loader ends after exactly `plan.batches_per_epoch` batches on every rank.

`load_split` is the one set-up path before any reading (checks, index, crop, parts, this rank's place),
shared by `make_train_loader`, `make_eval_loader` and `api.clip_dataset`.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
import pickle
import queue
import signal
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from wlasl_shards import cache, storage
from wlasl_shards.train.data import AT, STATS, DataError, EvalStream, LoaderConfig, TrainStream, check_crop, shard_parts
from wlasl_shards.train.distributed import dist_info
from wlasl_shards.train.plan import ShardPart, batches_per_epoch, split_parts

log = logging.getLogger(__name__)

T = TypeVar("T")


_DONE = object()  # a worker thread's stream has ended
RAISED = "__raised__"  # key of the record a worker process sends instead of raising (`ReportErrors`)


class ReportErrors(IterableDataset):
    """`stream` for DataLoader worker processes: an exception in the worker ends the stream with a
    record {RAISED: the exception} instead of propagating, and `ClipLoader` raises that very
    exception in the main process. DataLoader would re-raise it as the worker's whole traceback in
    the message (16 lines for a missing shard); this way it is the one line it is in-process."""

    def __init__(self, stream: IterableDataset):
        self.stream = stream

    def __iter__(self) -> Iterator[dict]:
        return report_errors(self.stream)


def report_errors(items: Iterable[dict]) -> Iterator[dict]:
    """`items`, ended by {RAISED: the exception} instead of an exception (one that pickles: else a
    DataError with its type and text): how a worker process hands its error to the main process."""
    try:
        yield from items
    except Exception as e:  # noqa: BLE001 - handed to the main process, which raises it
        try:
            pickle.dumps(e)
        except Exception:  # noqa: BLE001 - an exception that cannot travel: its type and text can
            e = DataError(f"{type(e).__name__}: {e}")
        yield {RAISED: e}


def round_robin_threads(streams: Sequence[Callable[[], Iterable[T]]], ahead: int) -> Iterator[T]:
    """Runs each stream in a thread of its own, up to `ahead` items in advance, and yields their items
    round robin, passing over streams that have ended: the order DataLoader gives for the same streams in
    worker processes. An exception in a stream is raised here; when the caller stops early, the threads
    stop at their next item.

    Why threads: simplejpeg decodes without the GIL, and a clip made in this process needs no trip
    through shared memory (a copy into a `WorkerPool` slot, or a fresh segment from DataLoader's
    workers); but the rest of the loader holds the GIL, which the threads share with the trainer
    (bench_loader measures all three).
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


# issue 14 section 2: loader worker processes that live across epochs
_ENDED = "__ended__"  # key of the record a pool worker sends after each stream (its last item)


class WorkerPool:
    """`num_workers` loader worker processes started once, for every loader of a run: each runs one
    worker stream at a time (`stream.worker_stream(worker, num_workers)`, the stream pickled to it) and
    sends its items back through a queue of `ahead` items. DataLoader starts fresh processes for every
    iteration instead (each epoch, precise BN, val). `run` merges the streams round robin, passing over
    ended ones, as DataLoader does: the same items in the same order. Errors cross as `report_errors`
    records. Close it (or use it as a context manager) to stop the processes; they are daemons, so they
    also end with this one.

    Clips cross in shared-memory slots that are reused (`_SlotWriter`): up to `slots` per worker, each
    mapped into this process once. Torch's own pickling of a tensor (DataLoader's way) puts every clip
    in a fresh segment, page-faulted in on both sides, which cost more CPU than decoding the clip
    (bench_loader measures both). A slot comes back to its worker when the last tensor viewing it is
    gone here; while all of a worker's slots are held (a consumer keeping clips), its clips take
    torch's way, so holding clips is always correct. `crossings` counts the ways clips took."""

    def __init__(self, num_workers: int, ahead: int = 4, slots: int = 8):
        if num_workers < 1 or slots < 0:
            raise ValueError(f"num_workers must be >= 1 and slots >= 0, got {num_workers} and {slots}")
        ctx = torch.multiprocessing.get_context("fork")  # as DataLoader on Linux: nothing to re-import
        self.num_workers = num_workers
        self._jobs = [ctx.Queue() for _ in range(num_workers)]
        self._items = [ctx.Queue(maxsize=ahead) for _ in range(num_workers)]
        self._cancel = [ctx.Event() for _ in range(num_workers)]
        # busy[w, k]: worker w's slot k holds a clip the trainer has not let go; shared (the children inherit
        # it), set by the worker, cleared here by a finalizer: a plain store, safe wherever a finalizer runs.
        self._busy = torch.zeros((num_workers, max(slots, 1)), dtype=torch.uint8).share_memory_()
        self._free_slot = self._busy.numpy().__setitem__  # ((w, k), 0): slot k of worker w is free again
        self._slots: list[dict[int, np.ndarray]] = [{} for _ in range(num_workers)]  # worker's slots mapped here
        self.crossings: Counter = Counter()  # clips by way: "slot", of which "new_slot" brought a slot; "segment"
        self._procs = [ctx.Process(target=_pool_worker, daemon=True, name=f"wlasl-loader-{w}",
                                   args=(self._jobs[w], self._items[w], self._cancel[w], self._busy[w, :slots]))
                       for w in range(num_workers)]
        for proc in self._procs:
            proc.start()

    @classmethod
    def for_config(cls, cfg: LoaderConfig) -> WorkerPool:
        """The pool for loaders of `cfg`: queues as deep as their prefetch, and slots enough that no
        training clip takes a fresh segment (those queued and being made, the batch in use and the one
        being gathered, those released but not yet back)."""
        batch = max(cfg.batch_size, cfg.eval_batch_size)
        return cls.sized(cfg.num_workers, batch, worker_ahead(cfg, batch))

    @classmethod
    def sized(cls, num_workers: int, batch_size: int, ahead: int) -> WorkerPool:
        """A pool whose consumer gathers `batch_size` clips round robin from `num_workers` streams with
        `ahead` items queued per worker, with the slots that needs (see `for_config`)."""
        return cls(num_workers, ahead, slots=ahead + 2 + 3 * math.ceil(batch_size / num_workers))

    def pids(self) -> list[int | None]:
        return [proc.pid for proc in self._procs]

    def run(self, jobs: Sequence[tuple[IterableDataset, int, int]]) -> Iterator[dict]:
        """Items of `jobs` = [(stream, worker, num_workers)], job w on process w, round robin. Stopped
        early (an error, a break), the processes still running a stream drop its rest before the next."""
        if len(jobs) != self.num_workers:
            raise ValueError(f"{len(jobs)} streams for a pool of {self.num_workers} workers")
        for w, job in enumerate(jobs):
            self._jobs[w].put(job)
        live = list(range(self.num_workers))
        try:
            while live:
                for w in list(live):
                    item = self._get(w)
                    if _ENDED in item:
                        live.remove(w)
                    else:
                        yield item
        finally:
            for w in (w for w in live if self._procs[w].is_alive()):  # their streams are not over: stop them,
                self._cancel[w].set()  # and drain what they sent
                while _ENDED not in self._get(w):
                    pass
                self._cancel[w].clear()

    def _get(self, w: int) -> dict:
        """Worker w's next item, its clip (if in a slot) a tensor viewing the slot, the slot w's again
        once that tensor and every view of it are gone."""
        item = self._next(w)
        if _SLOT not in item:
            self.crossings["segment"] += "clip" in item
            return item
        k, shape, new = item.pop(_SLOT)
        if new is not None:  # a slot new (or grown) in the worker, mapped here from now on
            self._slots[w][k] = new.numpy()
            self.crossings["new_slot"] += 1
        self.crossings["slot"] += 1
        view = self._slots[w][k][:math.prod(shape)].reshape(shape)  # a new array: its death frees the slot
        weakref.finalize(view, self._free_slot, (w, k), 0).atexit = False
        item["clip"] = torch.from_numpy(view)
        return item

    def _next(self, w: int) -> dict:
        """Worker w's next record; a DataError if the process has ended (killed, say, by the OOM killer, or
        by SIGBUS when /dev/shm is full) instead of waiting for it forever."""
        proc = self._procs[w]
        while True:
            try:
                return self._items[w].get(timeout=1.0)
            except queue.Empty:
                if proc.is_alive():
                    continue
            except (OSError, EOFError):  # a record whose shared memory a dead worker could not hand over
                proc.join(timeout=5)
                if proc.is_alive():
                    raise
            code = proc.exitcode or 0
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            full = code == -signal.SIGBUS
            hint = " (shared memory full? in Docker, give --shm-size=2g or --ipc=host)" if full else ""
            raise DataError(f"loader worker {w} (pid {proc.pid}) {how}{hint}") from None

    def close(self) -> None:
        for q in self._jobs:
            q.put(None)
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


SLOT_BYTES = 512 * 2**20  # the most shared memory a pool worker keeps in slots (clips beyond it take segments)
_SLOT = "__slot__"  # key of a pool item whose clip lies in a slot: (slot id, clip shape, the slot if new here)


class _SlotWriter:
    """A pool worker's side of the shared-memory slots (see `WorkerPool`): flat uint8 buffers shared
    with the trainer, at most `len(busy)`, slot k free while busy[k] is 0. `pack` copies an item's uint8
    clip into the smallest free slot it fits, else into a new one (or, when all are made, into the
    largest free one, grown), and the item carries the slot's id instead; with every slot in use, or
    past SLOT_BYTES (long eval clips), the item goes as it is."""

    def __init__(self, busy: torch.Tensor):
        self.busy = busy.numpy()
        self.buffers: list[torch.Tensor] = []
        self.mapped: set[int] = set()  # slots the trainer has at their present size

    def pack(self, item: dict) -> dict:
        clip = item.get("clip")
        if not isinstance(clip, torch.Tensor) or clip.dtype != torch.uint8:
            return item
        n = clip.numel()
        free = [k for k in range(len(self.buffers)) if not self.busy[k]]
        fits = [k for k in free if self.buffers[k].numel() >= n]
        if fits:
            k = min(fits, key=lambda k: self.buffers[k].numel())
        elif len(self.buffers) < len(self.busy):
            k = len(self.buffers)
            self.buffers.append(torch.empty(0, dtype=torch.uint8))
        elif free:
            k = max(free, key=lambda k: self.buffers[k].numel())
        else:
            return item
        if sum(b.numel() for b in self.buffers) - self.buffers[k].numel() + n > SLOT_BYTES:
            return item
        if self.buffers[k].numel() < n:
            self.buffers[k] = torch.empty(n, dtype=torch.uint8).share_memory_()
            self.mapped.discard(k)
        self.busy[k] = 1
        self.buffers[k][:n].view(clip.shape).copy_(clip)
        packed = {key: value for key, value in item.items() if key != "clip"}
        packed[_SLOT] = (k, tuple(clip.shape), None if k in self.mapped else self.buffers[k])
        return packed

    def sent(self, item: dict, delivered: bool) -> None:
        """After `items.put(pack(...))`, or after giving it up (a cancelled stream): the slot is the
        trainer's until it comes back, or free again."""
        if _SLOT in item:
            k = item[_SLOT][0]
            if delivered:
                self.mapped.add(k)
            else:
                self.busy[k] = 0


def _pool_worker(jobs, items, cancel, busy: torch.Tensor) -> None:
    """A `WorkerPool` process: streams from `jobs` until None, each one's items into `items` (clips in
    slots, `_SlotWriter`), then an _ENDED record; `cancel` drops the rest of the stream being run."""
    torch.set_num_threads(1)  # as DataLoader's workers
    parent = os.getppid()
    writer = _SlotWriter(busy)

    def orphaned() -> bool:  # the trainer was killed (SIGKILL runs no clean-up): end, as DataLoader's workers do
        return os.getppid() != parent

    while True:
        try:
            job = jobs.get(timeout=1.0)
        except queue.Empty:
            if orphaned():
                return
            continue
        if job is None:
            return
        stream, worker, num_workers = job
        gen = report_errors(stream.worker_stream(worker, num_workers))
        try:
            for item in gen:
                item = writer.pack(item)
                delivered = False
                while not cancel.is_set() and not delivered:
                    try:
                        items.put(item, timeout=0.1)
                        delivered = True
                    except queue.Full:
                        if orphaned():
                            return
                writer.sent(item, delivered)
                if not delivered:
                    break
        finally:
            gen.close()
        items.put({_ENDED: True})


def worker_pool(cfg: LoaderConfig) -> WorkerPool | None:
    """The pool of `cfg`'s worker processes for a command's loaders (close it when done); None when it
    reads in threads or in this process, which need none."""
    return WorkerPool.for_config(cfg) if cfg.num_workers and cfg.worker_mode == "process" else None


def worker_ahead(cfg: LoaderConfig, batch_size: int) -> int:
    """Samples, not batches, come from the workers: enough per worker to keep `prefetch_batches` ahead."""
    return max(2, math.ceil(cfg.prefetch_batches * batch_size / cfg.num_workers))


class BufferPool:
    """Reuses the memory of big uint8 CPU tensors once nothing references them any more.

    A training batch is tens of MB; malloc maps so big a block fresh from the kernel every time and unmaps
    it on free, so each batch would page-fault its whole size in again (bench_loader measures what reuse
    saves). CUDA's pinned batches avoid it through torch's caching host allocator; this is the same for
    unpinned ones. A tensor from `empty` keeps its buffer alive through
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
    longest are padded with their last frame (the loaders' batches never need it: training clips have
    clip_len frames, eval batches one frame count, see `group_by_length`; `features` pads)."""
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


def group_by_length(examples: Iterable[dict], batch_size: int, hold: int) -> Iterator[list[dict]]:
    """Eval examples -> lists of up to `batch_size` examples whose clips have the same frame count, so a
    batch needs no padding and each video's logits are those it has alone (the exact protocol, faster).
    At most `hold` examples wait for others of their length; past that, the largest waiting group goes
    out short (the first to arrive among equals), which bounds the memory held. What waits at the end
    goes out largest group first. batch_size 1 passes every example on as it comes."""
    groups: dict[int, list[dict]] = {}  # frame count -> waiting examples; dict order = first arrival
    waiting = 0
    for example in examples:
        length = example["clip"].shape[0]
        group = groups.setdefault(length, [])
        group.append(example)
        waiting += 1
        if len(group) == batch_size:
            waiting -= len(groups.pop(length))
            yield group
        elif waiting > hold:
            group = groups.pop(max(groups, key=lambda k: len(groups[k])))
            waiting -= len(group)
            yield group
    yield from sorted(groups.values(), key=len, reverse=True)  # stable: equals in arrival order


class ClipLoader:
    """Eval batches of one rank: iterate for `(clips, labels, video_ids)`, up to `batch_size` videos of
    one frame count per batch (`group_by_length`). No `len()`: skipped samples and grouping would
    make it wrong; `num_samples` is this rank's count per dataset.json.

    Each iteration starts fresh DataLoader workers and replays the same epoch (same seeds). After
    (or during) an iteration, `skipped` and `skip_reasons` hold the bad samples the workers
    skipped, as far as they have reported them: each worker reports once, when its stream ends
    (workers are processes; this is how their counts reach the trainer).
    """

    num_batches: int | None = None  # exact batch count (training only)
    with_ids = True

    def __init__(self, stream: IterableDataset, cfg: LoaderConfig, batch_size: int, num_samples: int,
                 pool: WorkerPool | None = None):
        self.stream, self.cfg, self.batch_size = stream, cfg, batch_size
        self.pool = pool  # worker processes that outlive this loader (process mode); None: DataLoader's
        self.num_samples = num_samples
        self.skipped = 0
        self.skip_reasons: list[str] = []
        self.cache_counts: Counter = Counter()  # the workers' shard cache counts (`wlasl_shards.cache.COUNTS`)

    def _examples(self) -> Iterator[dict]:
        """Worker output minus the stats records, which go into `skipped` / `skip_reasons`."""
        workers = self.cfg.num_workers
        ahead = worker_ahead(self.cfg, self.batch_size) if workers else 0
        threads = self.cfg.worker_mode == "thread"
        if workers and (threads or self.pool is not None):  # our own workers: threads, or the pool's processes
            if not threads and self.pool.num_workers != workers:
                raise ValueError(f"a pool of {self.pool.num_workers} workers for a loader of {workers}")
            # A DataLoader iterator draws its base seed from torch's global generator; draw it too, so
            # that what else uses that generator (dropout) sees the same numbers in either mode.
            torch.empty((), dtype=torch.int64).random_()
            logical = getattr(self.stream, "logical_worker", lambda w, n: w)  # TrainStream rotates (a resume)
            shares = [logical(w, workers) for w in range(workers)]
            if threads:
                items = round_robin_threads([functools.partial(self.stream.worker_stream, share, workers)
                                             for share in shares], ahead)
            else:
                items = self.pool.run([(self.stream, share, workers) for share in shares])
        else:
            items = DataLoader(ReportErrors(self.stream) if workers else self.stream, batch_size=None,
                               num_workers=workers, prefetch_factor=ahead if workers else None)
        try:
            for item in items:
                if RAISED in item:
                    raise item[RAISED]
                if STATS in item:
                    self.skipped += item[STATS]["skipped"]
                    self.skip_reasons += item[STATS]["reasons"]
                    self.cache_counts.update(item[STATS].get("cache", {}))
                    continue
                yield item
        finally:  # a pool's or the threads' streams stop now, not when the generator is collected
            getattr(items, "close", lambda: None)()

    def __iter__(self) -> Iterator[tuple]:
        self.skipped, self.skip_reasons, self.cache_counts = 0, [], Counter()
        pin = self.cfg.pin_memory and torch.cuda.is_available()
        if self.num_batches is None:  # evaluation: videos of one frame count per batch, no padding
            for group in group_by_length(self._examples(), self.batch_size, self.cfg.eval_hold):
                yield self._out(collate(group, pin))
            return
        batches = 0
        batch: list[dict] = []
        for example in self._examples():
            self._used(example)
            batch.append(example)
            if len(batch) == self.batch_size:
                yield self._out(collate(batch, pin))
                batches += 1
                batch = []
        if batch or batches != self.num_batches:
            # The plan makes this impossible with a truthful dataset.json; stop loudly rather
            # than let this rank leave DDP's collectives early (a hang on the other ranks).
            raise DataError(f"got {batches} batches and {len(batch)} samples, planned exactly "
                            f"{self.num_batches} batches of {self.batch_size}")

    def _out(self, collated: tuple) -> tuple:
        return collated if self.with_ids else collated[:2]

    def _used(self, example: dict) -> None:
        """An example goes into a batch (TrainLoader keeps the stream's position)."""


class TrainLoader(ClipLoader):
    """Training batches of one rank for one epoch: iterate for `(clips, labels)`; `len()` is exact
    and the same on every rank. A loader made with a `position` (a mid-epoch resume) yields the
    epoch's batches from `done` on. While the batch of an iteration is being used, `position()` is
    where the batches so far end: what a checkpoint saves to resume after them."""

    with_ids = False

    def __init__(self, stream: TrainStream, cfg: LoaderConfig, num_batches: int, done: int = 0,
                 pool: WorkerPool | None = None):
        super().__init__(stream, cfg, cfg.batch_size, num_batches * cfg.batch_size, pool)
        self.total, self.done = num_batches, done
        self.num_batches = num_batches - done  # what an iteration yields (checked in ClipLoader.__iter__)
        self._start = stream.start(cfg.num_workers)
        self._workers = copy.deepcopy(self._start["workers"])
        self._last: int | None = None  # logical worker of the last example used

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[tuple]:
        self._workers, self._last = copy.deepcopy(self._start["workers"]), None
        return super().__iter__()

    def _used(self, example: dict) -> None:
        at = example.pop(AT)
        w = self._workers[at["worker"]]
        w["produced"] += 1
        w.update(chunk=at["chunk"], emitted=at["emitted"], skipped=at["skipped"])
        self._last = at["worker"]

    def position(self) -> dict:
        """`TrainStream`'s position after the examples used so far (plain values, for a checkpoint)."""
        n = len(self._workers)
        first = self._start["first_worker"] if self._last is None else (self._last + 1) % n
        return {"first_worker": first, "workers": copy.deepcopy(self._workers)}


# ------------------------------------------------------------------------------------ set-up


@dataclass(frozen=True)
class SplitSource:
    """One split of a dataset as a rank's loader sees it, checked before any shard is read."""

    url: str  # dataset.json's URL, for messages
    index: dict  # dataset.json
    parts: list[ShardPart]  # the split's shards, whole, in dataset.json's order
    rank: int
    world_size: int

    @property
    def num_classes(self) -> int:
        return len(self.index["classes"])

    @property
    def total(self) -> int:
        """Samples in the split, per dataset.json."""
        return sum(p.count for p in self.parts)

    def rank_samples(self) -> int:
        """This rank's samples in evaluation, per dataset.json (over all ranks every sample once)."""
        return sum(p.count for p in split_parts(self.parts, self.world_size, self.rank))


def load_split(dataset: str | os.PathLike, split: str | Sequence[str], cfg: LoaderConfig, rank: int | None = None,
               world_size: int | None = None, epoch: int | None = None, train: bool = False) -> SplitSource:
    """What every loader of `split` checks and reads first: `cfg`, `epoch` (when given), the rank (default:
    torch.distributed's, else 0 of 1), dataset.json, the crop against its frame size, the split's shards;
    for training, that the split has samples. ValueError names what is wrong. Several splits (a training
    on train + val, issue 13 §5) are one source: their shards one after another, in the order given."""
    cfg.check()
    if epoch is not None and epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    rank, world_size = dist_info(rank, world_size)
    index = cache.load_index(dataset, cfg.shard_cache())
    url = storage.dataset_url(dataset)
    check_crop(index, cfg.crop_size, url)
    names = (split,) if isinstance(split, str) else tuple(split)
    parts = [p for name in names for p in shard_parts(dataset, name, index)]
    source = SplitSource(url, index, parts, rank, world_size)
    if train and source.total == 0:
        raise ValueError(f"split {'+'.join(names)!r} of {url} has no samples to train on")
    return source


def make_train_loader(dataset: str | os.PathLike, cfg: LoaderConfig, epoch: int, rank: int | None = None,
                      world_size: int | None = None, split: str | Sequence[str] = "train", done: int = 0,
                      position: dict | None = None, pool: WorkerPool | None = None) -> TrainLoader:
    """Training batches `(clips (B, clip_len, crop, crop, 3) uint8, labels (B,) int64)` of `epoch` for
    one rank: exactly `batches_per_epoch(samples in split, world_size, batch_size)` of them, or those
    after the first `done` when resuming at `position` (`TrainLoader.position()` after `done` batches).
    With `pool` (process workers), its processes read instead of fresh DataLoader workers."""
    src = load_split(dataset, split, cfg, rank, world_size, epoch=epoch, train=True)
    n = batches_per_epoch(src.total, src.world_size, cfg.batch_size)
    stream = TrainStream(src.parts, cfg, src.num_classes, epoch, src.rank, src.world_size, n * cfg.batch_size,
                         position)
    log.info("rank %d/%d epoch %d: %d batches of %d from %d %s samples in %d shards", src.rank, src.world_size,
             epoch, n, cfg.batch_size, src.total, split if isinstance(split, str) else "+".join(split), len(src.parts))
    return TrainLoader(stream, cfg, n, done, pool)


def make_eval_loader(dataset: str | os.PathLike, cfg: LoaderConfig, split: str = "val", rank: int | None = None,
                     world_size: int | None = None, pool: WorkerPool | None = None) -> ClipLoader:
    """Eval batches `(clips (B, T, crop, crop, 3) uint8, labels (B,) int64, video_ids)` of this rank's
    share of `split`: over all ranks every sample once, all frames, center crop."""
    src = load_split(dataset, split, cfg, rank, world_size)
    stream = EvalStream(src.parts, cfg, src.num_classes, src.rank, src.world_size)
    return ClipLoader(stream, cfg, cfg.eval_batch_size, src.rank_samples(), pool)


class ClipDataset(IterableDataset):
    """`(clip, label)` pairs of one split for one rank: clip (T, C, C, 3) uint8 tensor, label int.

    Made by `wlasl_shards.api.clip_dataset`. Training mode: `num_samples` clips per epoch, each a random window of
    `clip_len` frames, random crop, random flip; the order and the draws follow (seed, epoch, rank,
    loader worker), so the same arguments give the same clips. Eval mode: every sample of this
    rank's share once, all frames (at least `eval_min_frames`), centre crop; T differs between
    videos, so batch with batch_size=1 or `collate`.

    In a DataLoader with workers, each worker reads its own share of the shards (nothing is read
    twice) and, as with any IterableDataset, batches its own clips: an epoch can end with a short
    batch per worker. There is no `len()`: the DataLoader would take it for the batch count. Where
    every rank must run the same number of steps (DDP), use DataLoader(batch_size=None) and group
    the clips in the main process, as `wlasl_shards.train` does. Corrupt samples are skipped, with a
    warning from the process that read them, and replaced in training (the epoch keeps its
    length); more than `max_consecutive_errors` in a row raise DataError naming the shard.
    """

    def __init__(self, parts: list[ShardPart], cfg: LoaderConfig, classes: list[str], train: bool,
                 epoch: int, rank: int, world_size: int, num_samples: int):
        self.parts, self.cfg, self.train = parts, cfg, train
        self.classes = classes  # index -> gloss, from dataset.json
        self.epoch, self.rank, self.world_size = epoch, rank, world_size
        # Training: the exact clips per epoch, the same on every rank. Eval: this rank's samples per
        # dataset.json (fewer come when samples are corrupt).
        self.num_samples = num_samples

    def set_epoch(self, epoch: int) -> None:
        """Use the shard order, windows, crops and flips of `epoch` from the next iteration on."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        stream: IterableDataset
        if self.train:
            stream = TrainStream(self.parts, self.cfg, len(self.classes), self.epoch, self.rank,
                                      self.world_size, self.num_samples)
        else:
            stream = EvalStream(self.parts, self.cfg, len(self.classes), self.rank, self.world_size)
        for example in stream:
            if STATS in example:  # the trainer's skip report; the skips were logged where they happened
                continue
            yield example["clip"], example["label"]


__all__ = ["RAISED", "BufferPool", "ClipDataset", "ClipLoader", "ReportErrors", "SplitSource", "TrainLoader",
           "WorkerPool", "collate", "group_by_length", "load_split", "make_eval_loader", "make_train_loader",
           "report_errors", "round_robin_threads", "worker_pool"]
