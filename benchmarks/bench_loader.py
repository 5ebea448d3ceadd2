"""Training-loader throughput per core against the WLASL-style loader, and the data-wait share of a
CPU training run, on synthetic 720p videos made and sharded in this same run.

Prints a table, then where each loader's time goes; every ratio compares figures measured in this run
on this machine, one process, one thread (OpenMP, torch, OpenCV and the video decoder all pinned to 1):
- (a) the WLASL-style loader (pytorch_i3d's nslt_dataset.py): per sample cv2.VideoCapture, seek to a
  random start, read 64 frames (padded with the first or last one if short), resize each to 256x256,
  BGR -> RGB, (x / 255.) * 2 - 1 per frame in float64 as the original does, then float32, random 224
  crop, random flip -> (3, 64, 224, 224) float32; (a') the same with the scaling done in float32, a
  faster variant the original does not have, shown for reference;
- (b) `make_train_loader` (num_workers 0): uint8 (B, 64, 224, 224, 3) batches, as training gets them
  (the float conversion runs on the GPU there), and the same plus `to_model_input` on the CPU; then
  what `train` runs by default: its 4 worker processes, started once (`WorkerPool`), their CPU counted
  (the copy into shared-memory slots and the hand-over included), goal >= 0.8x (b) in the same repeat,
  and the same pool with 1 worker (no more processes than cores: the crossing's own cost); and (b) run
  in as many processes at once as there are cores, each on its own epochs: what keeping every core
  busy costs per CPU-second on this machine, the most any parallel loader can reach here;
  4 worker threads (`worker_mode="thread"`); and 2 fresh DataLoader worker processes per epoch, what a
  `make_train_loader` without a pool starts (worker start-up and a fresh shared-memory segment per clip);
- (c) the JPEG-decode floor: PIL decoding the 64 stored 256x256 JPEG frames of a window, nothing else;
- where (a)'s and (b)'s time goes, stage by stage, on data held in memory, with a few alternatives;
- the share of step time a CPU training run of InceptionI3d spends blocked on the loader.
Rates are clips per CPU-second of the process (= per core; robust on a shared, noisy machine) and
clips per wall-second, medians of the repeats; a ratio is the median over repeats of the row's CPU rate
over (a)'s in the same repeat (paired: they ran back to back). Goal: (b) >= 14x (a) per core.

The videos are encoded with x264's default preset (medium: CABAC, deblocking, B-frames), as ffmpeg
writes them by default and as WLASL's own conversion script and its web sources did, not with `synth`'s
fast default (ultrafast: CAVLC, no deblocking); row (a'') shows what that choice is worth.

    python benchmarks/bench_loader.py            # about 8 minutes on 2 cores
    python benchmarks/bench_loader.py --quick    # fewer videos, clips and steps: a smoke run (< 1 min)

Needs opencv-python-headless (the `bench` extra) for the WLASL-style loader.
"""

from __future__ import annotations

import os

# One thread everywhere; set before numpy / torch / cv2 start their thread pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from wlasl_shards import shards  # noqa: E402
from wlasl_shards.preprocess.build import BuildConfig, build  # noqa: E402
from wlasl_shards.preprocess.synth import SynthConfig, synth  # noqa: E402
from wlasl_shards.train import data, loader, transforms  # noqa: E402
from wlasl_shards.train.loop import TrainConfig  # noqa: E402
from wlasl_shards.train.models import InceptionI3d  # noqa: E402

try:
    import cv2
except ImportError:  # a user mistake, not a bug: say what to install
    raise SystemExit("bench_loader needs OpenCV: pip install opencv-python-headless "
                     "(or the project's `bench` extra)") from None

CLIP_LEN = 64  # WLASL's I3D recipe, both loaders
CROP = 224
RESIZE = 256  # the WLASL-style loader's frame size, and the shards' (build's default --size)


@dataclass(frozen=True)
class Settings:
    """What one run measures; --quick shrinks everything."""

    classes: int  # synthetic glosses
    videos_per_class: int  # 6 -> 4 train, 1 val, 1 test (3 -> 1/1/1); every loader reads only train
    min_frames: int  # >= 65: the WLASL loader's start is randint(0, frames - 65)
    max_frames: int  # WLASL videos average 60-70 frames at 25 fps; here every one has a 64-frame window
    repeats: int  # timed repeats of each loader; the table shows medians
    epochs: int  # passes over the train split per timed repeat (clips = epochs x train videos)
    batch_size: int  # our loader's batch size
    train_clip_len: int  # the CPU training run (one loader worker): frames per clip,
    train_crop: int  # crop side,
    train_batch: int  # clips per step,
    train_epochs: int  # and epochs (steps 1-2 are warm-up, left out of the median, when there are > 4)


DEFAULT = Settings(classes=3, videos_per_class=6, min_frames=65, max_frames=100, repeats=7, epochs=2,
                   batch_size=4, train_clip_len=32, train_crop=112, train_batch=2, train_epochs=2)
QUICK = Settings(classes=2, videos_per_class=3, min_frames=65, max_frames=72, repeats=1, epochs=1,
                 batch_size=1, train_clip_len=16, train_crop=112, train_batch=1, train_epochs=2)


@dataclass(frozen=True)
class Timing:
    """One timed run: clips made, CPU seconds of this process (all its threads), wall seconds."""

    clips: int
    cpu: float
    wall: float


def timed(fn: Callable[[], int]) -> Timing:
    cpu, wall = time.process_time(), time.perf_counter()
    clips = fn()
    return Timing(clips, time.process_time() - cpu, time.perf_counter() - wall)


def children_cpu() -> float:
    """CPU seconds of this process's finished (and reaped) child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed_with_workers(fn: Callable[[], int]) -> Timing:
    """`timed`, adding the CPU of the DataLoader workers `fn` started (they are joined at each epoch's
    end, so their time is in RUSAGE_CHILDREN when `fn` returns)."""
    before = children_cpu()
    t = timed(fn)
    return Timing(t.clips, t.cpu + children_cpu() - before, t.wall)


def process_cpu(pids: list[int | None]) -> float:
    """CPU seconds (user + system) the live processes `pids` have used so far, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15 of stat)
    return total


def timed_with_pool(fn: Callable[[], int], pool: loader.WorkerPool) -> Timing:
    """`timed`, adding the CPU the pool's worker processes used meanwhile (they live on: read from /proc)."""
    before = process_cpu(pool.pids())
    t = timed(fn)
    return Timing(t.clips, t.cpu + process_cpu(pool.pids()) - before, t.wall)


# --------------------------------------------------------------------------- (a) WLASL-style loader


def scale_original(img: np.ndarray) -> np.ndarray:
    """nslt_dataset.py's scaling of one frame: float64 maths (the cast to float32 comes later)."""
    return (img / 255.) * 2 - 1


def scale_float32(img: np.ndarray) -> np.ndarray:
    """The same in float32: a faster variant, for reference."""
    return img.astype(np.float32) * np.float32(2 / 255) - np.float32(1)


def wlasl_clip(path: Path, rng: random.Random, scale: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """One training sample the way WLASL's pytorch_i3d loader makes it -> (3, 64, 224, 224) float32.

    Follows nslt_dataset.py (load_rgb_frames_from_video, pad, RandomCrop, RandomHorizontalFlip,
    video_to_tensor + the collate's copy), with the issue's wording where it differs: a plain 256x256
    resize and BGR -> RGB (the original feeds BGR). `scale` maps each resized frame to [-1, 1].
    """
    # One decoder thread (the default is one per core) so that this is a per-core figure.
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    if not cap.isOpened():
        raise RuntimeError(f"OpenCV cannot open {path}")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    try:
        start = rng.randint(0, total - CLIP_LEN - 1)
    except ValueError:
        start = 0
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames = []
    for _ in range(min(CLIP_LEN, total - start)):
        ok, img = cap.read()
        if not ok:
            break
        img = cv2.cvtColor(cv2.resize(img, (RESIZE, RESIZE)), cv2.COLOR_BGR2RGB)
        frames.append(scale(img))
    cap.release()
    clip = np.asarray(frames, dtype=np.float32)
    if len(clip) < CLIP_LEN:  # the original pads with the first or the last frame, at random
        pad = clip[0] if rng.random() > 0.5 else clip[-1]
        clip = np.concatenate([clip, np.repeat(pad[None], CLIP_LEN - len(clip), axis=0)])
    y, x = rng.randint(0, RESIZE - CROP), rng.randint(0, RESIZE - CROP)
    clip = clip[:, y:y + CROP, x:x + CROP]
    if rng.random() < 0.5:
        clip = np.flip(clip, axis=2)
    return torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2)))


def run_wlasl(videos: list[Path], epochs: int, seed: int,
              scale: Callable[[np.ndarray], np.ndarray] = scale_original) -> int:
    rng = random.Random(seed)
    clips = 0
    for _ in range(epochs):
        order = list(videos)
        rng.shuffle(order)  # DataLoader(shuffle=True)
        for path in order:
            wlasl_clip(path, rng, scale)
            clips += 1
    return clips


# ------------------------------------------------------------------------------- (b) our loader


def run_ours(dataset: Path, cfg: data.LoaderConfig, epochs: int, first_epoch: int, to_float: bool,
             pool: loader.WorkerPool | None = None) -> int:
    clips = 0
    for epoch in range(first_epoch, first_epoch + epochs):
        for batch, _ in loader.make_train_loader(dataset, cfg, epoch, rank=0, world_size=1, pool=pool):
            if to_float:
                transforms.to_model_input(batch)
            clips += len(batch)
    return clips


def run_ours_at_once(dataset: Path, cfg: data.LoaderConfig, epochs: int, first_epoch: int, copies: int) -> int:
    """`run_ours` (in-process, uint8) in `copies` forked processes at once, each on epochs of its own; the
    clips they made together (their CPU is in RUSAGE_CHILDREN once they are reaped: `timed_with_workers`)."""
    pids = []
    for c in range(copies):
        pid = os.fork()
        if pid == 0:  # the child: its epochs, then out without the parent's clean-up
            try:
                run_ours(dataset, cfg, epochs, first_epoch + 1000 * (c + 1), to_float=False)
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if status:
            raise SystemExit(f"a parallel copy of (b) failed (wait status {status})")
    return copies * epochs * len(loader.make_train_loader(dataset, cfg, 0, rank=0, world_size=1)) * cfg.batch_size


# ------------------------------------------------------------------------------- (c) JPEG floor


def raw_samples(dataset: Path, split: str = "train") -> list[dict]:
    """The split's raw samples (extension -> bytes), read once into memory."""
    out = []
    for url in data.shard_urls(dataset, split):
        with open(url, "rb") as f:
            out.extend(shards.read_samples(f))
    return out


def jpeg_windows(samples: list[dict], epochs: int, seed: int) -> list[list[bytes]]:
    """Per clip, the 64 JPEG blobs of a random window (padded like the loader), epochs x samples."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(epochs):
        for s in samples:
            meta = json.loads(s[shards.EXT_META])
            blob, offsets = s[shards.EXT_FRAMES["jpeg"]], meta["frames"]["offsets"]
            idx = transforms.train_window(shards.frame_count(meta), CLIP_LEN, rng)
            out.append([blob[offsets[i]:offsets[i + 1]] for i in idx])
    return out


def run_jpeg_floor(windows: list[list[bytes]]) -> int:
    for window in windows:
        for jpg in window:
            Image.open(io.BytesIO(jpg)).load()
    return len(windows)


# ------------------------------------------------------------------------------ stage breakdown


def profile_stages(dataset: Path, cfg: data.LoaderConfig, num_classes: int, epochs: int) -> dict[str, float]:
    """CPU ms per clip of each stage of our train pipeline, run by hand on in-memory samples, plus
    reading the shards (tar parsing) and two alternative JPEG decoders for comparison."""
    ms: dict[str, float] = {}

    def per_clip(name: str, fn: Callable[[], int]) -> None:
        t = timed(fn)
        ms[name] = 1000 * t.cpu / t.clips

    parts = data.shard_parts(dataset, "train")
    per_clip("read shards (tar -> raw samples)", lambda: sum(
        sum(1 for _ in data.read_parts(parts, data.SkipCounter(0))) for _ in range(epochs)))
    samples = raw_samples(dataset) * epochs
    rng = np.random.default_rng(0)
    parsed: list[tuple[dict, int]] = []
    per_clip("parse_sample (JSON + checks)", lambda: len(
        [parsed.append(data.parse_sample(s, num_classes)) for s in samples]))
    windows = [transforms.train_window(shards.frame_count(m), cfg.clip_len, rng) for m, _ in parsed]
    side = cfg.crop_size
    decoded: list[torch.Tensor] = []
    # What train_example does: crop while decoding, and for every other clip (the loader's coin) mirror
    # too, by decoding BGR and reversing each row's bytes.
    per_clip("decode 64 JPEGs, crop + mirror (half) inside", lambda: len(
        [decoded.append(data._frames(s, m, w, (5, 5, side), mirror=k % 2 == 1))
         for k, (s, (m, _), w) in enumerate(zip(samples, parsed, windows))]))
    per_clip("  alt: the same, never mirrored", lambda: len(
        [data._frames(s, m, w, (5, 5, side)) for s, (m, _), w in zip(samples, parsed, windows)]))
    per_clip("  alt: the same, always mirrored", lambda: len(
        [data._frames(s, m, w, (5, 5, side), mirror=True) for s, (m, _), w in zip(samples, parsed, windows)]))
    per_clip("  alt: decode full frames, no crop", lambda: len(
        [shards.decode_frames({shards.EXT_META: m, "jpgs": s["jpgs"]}, w.tolist())
         for s, (m, _), w in zip(samples, parsed, windows)]))
    arrays = [c.numpy() for c in decoded]
    per_clip("  alt: mirror decoded clips with torch.flip (3-byte pixels)", lambda: len(
        [c.flip(2) for c in decoded]))
    per_clip("  alt: mirror as a numpy reversed-view copy", lambda: len(
        [np.ascontiguousarray(f[:, :, ::-1]) for f in arrays]))

    def cv2_flip_all() -> int:
        for f in arrays:
            out = np.empty_like(f)
            for j in range(len(f)):
                cv2.flip(f[j], 1, dst=out[j])
        return len(arrays)

    per_clip("  alt: mirror with cv2.flip per frame", cv2_flip_all)
    examples = [{"clip": c, "label": 0, "video_id": ""} for c in decoded]
    b = cfg.batch_size
    starts = range(0, len(examples) - b + 1, b)

    def collate_all() -> int:  # each batch dropped before the next, as in training
        for i in starts:
            loader.collate(examples[i:i + b], pin=False)
        return len(starts) * b

    per_clip(f"collate (batch of {b})", collate_all)
    batches = [loader.collate(examples[i:i + b], pin=False)[0] for i in starts]
    per_clip("to_model_input on CPU", lambda: sum(len(transforms.to_model_input(x)) for x in batches))
    # Alternative decoders, for the record: PIL and OpenCV on the same frames.
    blobs = [[s["jpgs"][m["frames"]["offsets"][i]:m["frames"]["offsets"][i + 1]] for i in w]
             for s, (m, _), w in zip(samples, parsed, windows)]
    per_clip("  alt: PIL decode only (Image.load)", lambda: run_jpeg_floor(blobs))
    if hasattr(cv2, "IMREAD_COLOR_RGB"):  # OpenCV >= 4.10 decodes straight to RGB
        per_clip("  alt: cv2.imdecode(IMREAD_COLOR_RGB)", lambda: len(
            [[cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR_RGB) for j in w] for w in blobs]))
    else:
        per_clip("  alt: cv2.imdecode + BGR->RGB", lambda: len(
            [[cv2.cvtColor(cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
              for j in w] for w in blobs]))
    return ms


def profile_wlasl(videos: list[Path], seed: int) -> dict[str, float]:
    """CPU ms per clip of each stage of `wlasl_clip`, one pass over `videos` (frames kept in memory
    between stages), plus the original's float64 scaling for comparison."""
    rng = random.Random(seed)
    total_s: dict[str, float] = {}

    def clock(name: str, fn: Callable[[], object]) -> object:
        t = time.process_time()
        out = fn()
        total_s[name] = total_s.get(name, 0.0) + time.process_time() - t
        return out

    for path in videos:
        cap = clock("open (VideoCapture + frame count)", lambda: cv2.VideoCapture(
            str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1]))
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        start = rng.randint(0, max(0, total - CLIP_LEN - 1))
        clock("seek (CAP_PROP_POS_FRAMES)", lambda: cap.set(cv2.CAP_PROP_POS_FRAMES, start))
        frames = clock("read (decode) 64 frames of 720p", lambda: [
            cap.read()[1] for _ in range(min(CLIP_LEN, total - start))])
        cap.release()
        small = clock("resize to 256x256", lambda: [cv2.resize(f, (RESIZE, RESIZE)) for f in frames])
        clip = clock("BGR->RGB + scale (float64, as the original)", lambda: np.asarray(
            [scale_original(cv2.cvtColor(f, cv2.COLOR_BGR2RGB)) for f in small], dtype=np.float32))
        clock("crop + flip + (3, T, H, W) copy", lambda: np.ascontiguousarray(
            np.flip(clip[:, 5:5 + CROP, 5:5 + CROP], axis=2).transpose(3, 0, 1, 2)))
        clock("  alt: scale in float32 (a')", lambda: np.asarray(
            [scale_float32(f) for f in small], dtype=np.float32))
    return {k: 1000 * v / len(videos) for k, v in total_s.items()}


def median_dict(runs: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise medians of dicts with the same keys (in the first one's order)."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


# ----------------------------------------------------------------------------- CPU training run


def data_wait(dataset: Path, s: Settings, num_classes: int, threads: int) -> tuple[list[float], list[float]]:
    """(seconds blocked on next(loader), seconds per whole step) for every training step of
    `s.train_epochs` epochs of InceptionI3d on the CPU with one loader worker."""
    cfg = data.LoaderConfig(clip_len=s.train_clip_len, crop_size=s.train_crop, batch_size=s.train_batch,
                            num_workers=1, pin_memory=False, seed=1)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = InceptionI3d(num_classes=num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    waits, steps = [], []
    for epoch in range(s.train_epochs):
        it = iter(loader.make_train_loader(dataset, cfg, epoch, rank=0, world_size=1))
        while True:
            t0 = time.perf_counter()
            try:
                clips, labels = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            logits = model(transforms.to_model_input(clips))  # (B, classes, T')
            loss = F.cross_entropy(logits.mean(dim=2), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            waits.append(t1 - t0)
            steps.append(time.perf_counter() - t0)
    torch.set_num_threads(1)
    return waits, steps


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer videos, clips and steps (a smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per loader (default 7, quick 1)")
    args = ap.parse_args()
    s = QUICK if args.quick else DEFAULT
    repeats = args.repeats if args.repeats is not None else s.repeats
    if repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {repeats}")
    cores = os.cpu_count() or 1
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src, dataset = tmp / "wlasl", tmp / "shards"
        t0 = time.perf_counter()
        # 25 fps only: build resamples to 25 fps, so both loaders then see the same frames.
        synth_cfg = SynthConfig(classes=s.classes, videos_per_class=s.videos_per_class, seed=3,
                                sizes=((1280, 720),), fps_choices=("25",), x264_preset="medium",
                                min_frames=s.min_frames, max_frames=s.max_frames, workers=cores)
        synth(synth_cfg, src, progress=False)
        # The same frames encoded with synth's fast default, for the (a'') row.
        synth(replace(synth_cfg, x264_preset="ultrafast"), tmp / "ultrafast", progress=False)
        index = build(BuildConfig(source=str(src), output=str(dataset), workers=cores, progress=False))
        prep_s = time.perf_counter() - t0
        train = index["splits"]["train"]
        num_classes = len(index["classes"])
        nslt = json.loads(next(src.glob("nslt_*.json")).read_text())
        videos = sorted(src / "videos" / f"{vid}.mp4" for vid, e in nslt.items() if e["subset"] == "train")
        fast_videos = [tmp / "ultrafast" / "videos" / v.name for v in videos]
        counts = sorted(e["action"][2] for e in nslt.values() if e["subset"] == "train")
        if len(videos) != train["samples"]:
            raise SystemExit(f"build kept {train['samples']} of {len(videos)} train videos: {index['failed']}")

        cfg = data.LoaderConfig(clip_len=CLIP_LEN, crop_size=CROP, batch_size=s.batch_size, num_workers=0,
                                pin_memory=False, seed=0)
        samples = raw_samples(dataset)
        workers = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "num_workers")  # train's
        cfg_p = replace(cfg, num_workers=workers)
        cfg_t = replace(cfg_p, worker_mode="thread")
        cfg_w = replace(cfg, num_workers=2)
        cfg_1 = replace(cfg, num_workers=1)
        pool = loader.WorkerPool.for_config(cfg_p)  # as train starts it, once
        pool_1 = loader.WorkerPool.for_config(cfg_1)
        # Warm-up (page cache, codec and allocator start-up, the pool's slots), untimed.
        run_wlasl(videos[:2], 1, seed=99)
        run_ours(dataset, cfg, 1, first_epoch=99, to_float=True)
        run_ours(dataset, cfg_p, 1, first_epoch=98, to_float=False, pool=pool)
        run_ours(dataset, cfg_1, 1, first_epoch=98, to_float=False, pool=pool_1)

        wlasl, wlasl32, wlasl_fast, floor = [], [], [], []
        ours, ours_f, ours_p, ours_1, ours_t, ours_w, ours_n = ([] for _ in range(7))
        for r in range(repeats):  # interleaved, so that noise from other tenants hits all alike
            wlasl.append(timed(lambda: run_wlasl(videos, s.epochs, seed=r)))
            wlasl32.append(timed(lambda: run_wlasl(videos, s.epochs, seed=r, scale=scale_float32)))
            wlasl_fast.append(timed(lambda: run_wlasl(fast_videos, s.epochs, seed=r)))
            ours.append(timed(lambda: run_ours(dataset, cfg, s.epochs, first_epoch=r * s.epochs,
                                               to_float=False)))
            ours_f.append(timed(lambda: run_ours(dataset, cfg, s.epochs, first_epoch=r * s.epochs,
                                                 to_float=True)))
            ours_p.append(timed_with_pool(lambda: run_ours(dataset, cfg_p, s.epochs, first_epoch=r * s.epochs,
                                                           to_float=False, pool=pool), pool))
            ours_1.append(timed_with_pool(lambda: run_ours(dataset, cfg_1, s.epochs, first_epoch=r * s.epochs,
                                                           to_float=False, pool=pool_1), pool_1))
            ours_t.append(timed(lambda: run_ours(dataset, cfg_t, s.epochs, first_epoch=r * s.epochs,
                                                 to_float=False)))
            ours_w.append(timed_with_workers(lambda: run_ours(dataset, cfg_w, s.epochs,
                                                              first_epoch=r * s.epochs, to_float=False)))
            ours_n.append(timed_with_workers(lambda: run_ours_at_once(dataset, cfg, s.epochs, r * s.epochs, cores)))
            windows = jpeg_windows(samples, s.epochs, seed=r)
            floor.append(timed(lambda: run_jpeg_floor(windows)))
        slots = dict(pool.crossings)
        pool.close()
        pool_1.close()
        # Stage timings are single shots, so take medians of a few (fewer than the loaders: they are slow).
        profiles = min(repeats, 3)
        stages = median_dict([profile_stages(dataset, cfg, num_classes, s.epochs) for _ in range(profiles)])
        wlasl_stages = median_dict([profile_wlasl(videos, seed=7 + r) for r in range(profiles)])

        train_threads = max(1, cores - 1)  # one core for the loader worker
        waits, steps = data_wait(dataset, s, num_classes, train_threads)

    def rate(ts: list[Timing], wall: bool = False) -> float:
        return statistics.median(t.clips / (t.wall if wall else t.cpu) for t in ts)

    def ratio(ts: list[Timing]) -> str:
        """Median over repeats of this loader's CPU rate over (a)'s in the same repeat: the two ran back
        to back, so a slow spell of the shared machine cancels out instead of landing on one side."""
        return f"{statistics.median((t.clips / t.cpu) / (w.clips / w.cpu) for t, w in zip(ts, wlasl)):.2f}x"

    def of_b(ts: list[Timing]) -> str:
        """As `ratio`, against (b) (in-process, the same repeat) instead of (a)."""
        return f"{statistics.median((t.clips / t.cpu) / (b.clips / b.cpu) for t, b in zip(ts, ours)):.2f}x (b)"

    a = rate(wlasl)
    named = [
        ("(a) WLASL-style: cv2 seek+read 64, resize, float", wlasl, ""),
        ("(a') the same, scaling in float32 (not the original)", wlasl32, ""),
        ("(a'') (a) on the videos encoded ultrafast (synth's default)", wlasl_fast, ""),
        ("(b) ours: make_train_loader, uint8 batches", ours, ">= 14x"),
        ("(b') ours + to_model_input on CPU (float)", ours_f, "(GPU does this)"),
        (f"(b'') train's default: {workers} worker processes (pool), their CPU", ours_p,
         f">= 0.8x (b): {of_b(ours_p)}"),
        ("  the same pool with 1 worker process, its CPU counted", ours_1, of_b(ours_1)),
        (f"(b''') (b) with {workers} worker threads", ours_t, of_b(ours_t)),
        ("(b'''') (b) with 2 fresh DataLoader worker processes per epoch", ours_w, of_b(ours_w)),
        (f"(b) in {cores} processes at once: every core busy, no hand-over", ours_n, of_b(ours_n)),
        ("(c) JPEG-decode floor: PIL, 64 frames 256^2", floor, "issue: ~17x"),
    ]
    rows = [(name, rate(ts), rate(ts, True), ratio(ts), goal) for name, ts, goal in named]
    warm = 2 if len(steps) > 4 else 0
    share = statistics.median(w / t for w, t in zip(waits[warm:], steps[warm:]))
    overall = sum(waits) / sum(steps)

    clips = wlasl[0].clips
    print(f"{cores} cores (1 thread per measure); {index['totals']['samples']} synthetic 1280x720 25 fps "
          f"H.264 videos, {len(videos)} in train (read by all loaders), {counts[0]}-{counts[-1]} frames "
          f"(mean {statistics.mean(counts):.0f}); {clips} clips of {CLIP_LEN}x{CROP}^2 per repeat, "
          f"median of {repeats}; synth+build {prep_s:.0f} s")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'clips/CPU-s':>11}  {'clips/wall-s':>12}  {'ratio (CPU)':>11}  goal")
    for name, cpu, wall, ratio, goal in rows:
        print(f"{name:<{width}}  {cpu:>11.2f}  {wall:>12.2f}  {ratio:>11}  {goal}")
    print(f"the pool's clips crossed: {slots.get('slot', 0)} in shared-memory slots ({slots.get('new_slot', 0)} "
          f"slots made), {slots.get('segment', 0)} in fresh segments")
    print(f"\ndata wait, CPU training of InceptionI3d (clip {s.train_clip_len}, crop {s.train_crop}, "
          f"batch {s.train_batch}, 1 loader worker, {train_threads} torch thread(s), {s.train_epochs} epochs):")
    print(f"  {100 * share:.1f}% of the median step blocked on next(loader) (steps {warm + 1}-{len(steps)}, "
          f"median step {statistics.median(steps):.2f} s); {100 * overall:.1f}% over all {len(steps)} steps, "
          f"epoch starts included")

    def breakdown(title: str, measured_ms: float, ms: dict[str, float], exclude: tuple[str, ...] = ()) -> None:
        print(f"\n{title}, CPU ms per clip (stages run one by one, median of {profiles}; "
              f"the whole loader measured {measured_ms:.1f} ms/clip above)")
        for name, value in ms.items():
            print(f"  {name:<{width}}  {value:>8.1f}")
        counted = [k for k in ms if not k.startswith("  ") and k not in exclude]
        print(f"  {'sum of the stages (no alt:)':<{width}}  {sum(ms[k] for k in counted):>8.1f}")

    breakdown("where (a) spends its time", 1000 / a, wlasl_stages)
    breakdown("where (b) spends its time", 1000 / rate(ours), stages, exclude=("to_model_input on CPU",))


if __name__ == "__main__":
    main()
