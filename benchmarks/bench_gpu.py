"""The trainer on one CUDA GPU: I3D step rate (eager vs torch.compile, bf16 autocast), the whole
`train()` pipeline's clips/s and data-wait share on real shards, evaluation speed, and the time per
epoch these give for WLASL100/300/1000/2000.

    python benchmarks/bench_gpu.py SHARDS [--workers 12] [--worker-mode both] [--out results.json]

SHARDS: any dataset built at --size 256 (e.g. `wlasl-shards synth` + `build`; the figures in the
README used 24 synthetic classes x 5 videos at 640x480). Every figure comes from this one run.

The whole run (issue 14 section 1), WLASL100-shaped: synthetic shards with WLASL100's split sizes and
per-video frame counts (the frame ranges of nslt_100.json), then `train()` as its defaults run it
(validation and precise BN every epoch, the test at the end), timed by phase; its training rate
against the model-only rate (the same model and batch on a batch already on the device):

    python benchmarks/bench_gpu.py --whole-run [--epochs 3] [--nslt PATH] [--worker-mode both] [--out results.json]
    python benchmarks/bench_gpu.py --quick      # a scaled-down copy on the CPU, a couple of minutes
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import dataclasses
import json
import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wlasl_shards.api import evaluate
from wlasl_shards.preprocess import synth
from wlasl_shards.preprocess.build import BuildConfig, build, worker_processes
from wlasl_shards.preprocess.sources import CLASS_LIST, VIDEO_DIR, WLASL_JSON
from wlasl_shards.train import loop, metrics, models, recipes, transforms
from wlasl_shards.train.device import autocast, resolve_device
from wlasl_shards.train.loop import TrainConfig, train
from wlasl_shards.train.models import InceptionI3d
from wlasl_shards.train.records import read_metrics

# Sample counts of the WLASL splits (nslt_<N>.json in ../shared/reference/wlasl): train, val, test.
WLASL = {100: (1442, 338, 258), 300: (3549, 901, 668), 1000: (8978, 2320, 1876), 2000: (14296, 3920, 2879)}
CLIP, CROP = 64, 224


def step_rate(batch: int, compiled: bool, steps: int = 10, warmup: int = 3) -> dict:
    """Median seconds per SGD step of I3D (100 classes) on (batch, 64, 224, 224, 3) uint8 clips already
    on the GPU, bf16 autocast; clips/s; peak memory."""
    torch.manual_seed(0)
    model = InceptionI3d(100).cuda()
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    clips = torch.randint(0, 256, (batch, CLIP, CROP, CROP, 3), dtype=torch.uint8, device="cuda")
    labels = torch.randint(0, 100, (batch,), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    times = []
    started = time.perf_counter()
    for i in range(warmup + steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        x = transforms.to_model_input(clips)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = forward(x)
        loss = metrics.ce_loss(logits.float(), labels).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i == warmup - 1:
            warm = time.perf_counter() - started
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"batch": batch, "compiled": compiled, "step_s": med, "clips_per_s": batch / med,
            "warmup_s": warm, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def repeated(src: Path, dst: Path, times: int) -> Path:
    """A dataset whose train split lists each of `src`'s train shards `times` times (symlinks);
    val and test as they are."""
    index = json.loads((src / "dataset.json").read_text())
    for split, entry in index["splits"].items():
        (dst / split).mkdir(parents=True, exist_ok=True)
        records = []
        for r in range(times if split == "train" else 1):
            for rec in entry["shards"]:
                name = f"{split}/r{r:03d}-{Path(rec['name']).name}"
                (dst / name).symlink_to((src / rec["name"]).resolve())
                records.append({**rec, "name": name})
        entry["shards"] = records
        entry["samples"] = sum(rec["samples"] for rec in records)
    (dst / "dataset.json").write_text(json.dumps(index))
    return dst


def cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (loader workers end each epoch)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def pipeline(args: argparse.Namespace, dataset: Path, run: Path, mode: str) -> dict:
    """One whole `train()` with loader workers of `mode`: rates from metrics.jsonl, CPU per clip."""
    cfg = TrainConfig(shards=str(dataset), run_dir=str(run), epochs=args.epochs, batch_size=args.batch_size,
                      accumulate=2, optimizer="adam", lr=1e-4, num_workers=args.workers, worker_mode=mode,
                      device="cuda", precise_bn_batches=10, progress=False)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    report = train(cfg)
    total, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    epochs = [r for r in read_metrics(run / "metrics.jsonl") if r.get("kind") == "epoch"]
    steady = epochs[1:] or epochs  # epoch 1 carries cuDNN autotuning and worker start-up
    return {"run": run, "epochs": [{k: r[k] for k in ("epoch", "seconds")} | {"train": r["train"]} for r in epochs],
            "train_clips_per_s": statistics.median(r["train"]["clips_per_s"] for r in steady),
            "data_wait": statistics.median(r["train"]["data_wait"] for r in steady),
            "gpu_busy": statistics.median(r["train"].get("gpu_busy", float("nan")) for r in steady),
            "total_s": total, "cpu_s_per_clip": cpu / sum(r["train"]["clips"] for r in epochs),
            "test_top1": (report.get("test") or {}).get("top1")}


# ------------------------------------------------------------------------- the whole run (issue 14 §1)

NSLT_100 = Path("/work/shared/reference/wlasl/nslt_100.json")  # WLASL's own split file (see shared/reference)


@dataclass(frozen=True)
class Shape:
    """How the WLASL100-shaped dataset and run are scaled: FULL is WLASL100 itself, QUICK a copy that
    runs on the CPU in a couple of minutes."""

    fraction: float  # share of each split's videos kept (evenly spaced in the file's order)
    max_frames: int | None  # frame counts above are cut to this (None: nslt's counts as they are)
    video_size: tuple[int, int]  # (width, height) of the synthetic source videos
    size: int  # shard frame side (build --size)
    clip_len: int  # training clip frames
    crop_size: int  # training and evaluation crop
    epochs: int
    model_passes: int  # timed passes of the model-only rate (after 3 warm-up passes)


FULL = Shape(1.0, None, (320, 240), 256, 64, 224, 3, 16)
QUICK = Shape(0.04, 24, (128, 96), 48, 8, 40, 2, 8)


def read_nslt(path: Path) -> list[tuple[str, str, int, int]]:
    """nslt_<N>.json -> [(video_id, split, label, frames)] in the file's order; frames from the
    inclusive [frame_start, frame_end] range. SystemExit with what to do when the file is missing."""
    if not path.is_file():
        raise SystemExit(f"--nslt {path}: no such file. The whole run takes WLASL100's split sizes and frame "
                         "counts from WLASL's nslt_100.json (in shared/reference/wlasl/ of this project's "
                         "workspace, or the Kaggle WLASL copy): pass --nslt PATH")
    entries = json.loads(path.read_text())
    return [(vid, e["subset"], int(e["action"][0]), int(e["action"][2]) - int(e["action"][1]) + 1)
            for vid, e in entries.items()]


def subsample(entries: list, fraction: float) -> list:
    """`fraction` of each split's entries, evenly spaced (at least 1 per split)."""
    out = []
    for split in ("train", "val", "test"):
        rows = [e for e in entries if e[1] == split]
        keep = max(1, round(len(rows) * fraction))
        out += [rows[int(i * len(rows) / keep)] for i in range(keep)]
    return out


def wlasl_like(entries: list, root: Path, shape: Shape, workers: int | None = None) -> Path:
    """Synthetic videos (synth's signer, 25 fps) with these ids, splits, labels and frame counts in the
    WLASL layout under root/src, built into JPEG shards (build's defaults, --size shape.size) in
    root/shards, which is returned."""
    src = root / "src"
    (src / VIDEO_DIR).mkdir(parents=True, exist_ok=True)
    classes = max(e[2] for e in entries) + 1
    signers = synth.draw_signers(np.random.default_rng(0), 6)
    per_class: dict[int, int] = {}
    specs = []
    for n, (vid, split, label, frames) in enumerate(entries):
        rng = np.random.default_rng([1, n])
        frames = min(frames, shape.max_frames) if shape.max_frames else frames
        specs.append(synth.draw_spec(rng, label, size=shape.video_size, fps="25", frames=frames,
                                     signer=signers[n % len(signers)], video_id=vid, split=split,
                                     instance_id=per_class.get(label, 0)))
        per_class[label] = per_class.get(label, 0) + 1
    jobs = [(spec, src / VIDEO_DIR / f"{spec.video_id}.mp4") for spec in specs]
    with cf.ProcessPoolExecutor(worker_processes(workers)) as pool:
        for fut in [pool.submit(synth.write_spec_video, spec, path) for spec, path in jobs]:
            fut.result()
    (src / WLASL_JSON).write_text(json.dumps(synth.wlasl_entries(specs, synth.glosses(classes))))
    (src / f"nslt_{classes}.json").write_text(json.dumps(synth.nslt_entries(specs)))
    (src / CLASS_LIST).write_text(synth.class_list_text(synth.glosses(classes)))
    out = root / "shards"
    build(BuildConfig(source=str(src), output=str(out), size=shape.size, workers=workers, progress=False))
    return out


def model_rate(cfg: TrainConfig, classes: int, passes: int, warmup: int = 3) -> dict:
    """Clips/s of the training step alone: the run's model (compiled if cfg.compile), batch, clip,
    crop, optimiser, loss and accumulation, on one uint8 batch already on the device, bf16 on CUDA."""
    cfg = cfg.resolve()  # the arch's recipe, as train() runs it
    device = resolve_device(cfg.device)
    torch.manual_seed(0)
    model = models.build(cfg.arch, classes, dropout=cfg.dropout, drop_path=cfg.drop_path).to(device).train()
    forward = torch.compile(model) if cfg.compile else model
    groups = models.param_groups(model, cfg.arch, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
    opt = recipes.make_optimizer(recipes.OPTIMIZERS[cfg.optimizer], groups, cfg.lr, cfg.weight_decay)
    spec = cfg.input_spec  # as setup() takes it
    clips = torch.randint(0, 256, (cfg.batch_size, cfg.clip_len, cfg.crop_size, cfg.crop_size, 3),
                          dtype=torch.uint8, device=device)
    labels = torch.randint(0, classes, (cfg.batch_size,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = 0.0
    for i in range(warmup + passes):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        x = models.model_input(clips, spec, cfg.channels)
        with autocast(device):
            logits = forward(x)
        losses = metrics.clip_loss(cfg.loss, logits.float(), labels, x.shape[2], cfg.eval_reduce,
                                   cfg.label_smoothing)
        (losses.mean() / cfg.accumulate).backward()
        if (i + 1) % cfg.accumulate == 0:
            opt.step()
            opt.zero_grad(set_to_none=True)
    sync()
    seconds = time.perf_counter() - t0
    return {"passes": passes, "seconds": seconds, "clips_per_s": passes * cfg.batch_size / seconds}


@contextlib.contextmanager
def phase_timer():
    """Times train()'s phases (loop.train_epoch, loop.validate, loop.finish: module globals that
    train() looks up at each call) and keeps every GpuClock it makes; restored on exit."""
    seconds = {"train": 0.0, "validate": 0.0, "finish": 0.0}
    clocks: list = []

    def timed(fn, key):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[key] += time.perf_counter() - t0
        return call

    class Clock(loop.GpuClock):
        def __init__(self, device):
            super().__init__(device)
            clocks.append(self)

    saved = {name: getattr(loop, name) for name in ("train_epoch", "validate", "finish", "GpuClock")}
    loop.train_epoch = timed(saved["train_epoch"], "train")
    loop.validate = timed(saved["validate"], "validate")
    loop.finish = timed(saved["finish"], "finish")
    loop.GpuClock = Clock
    try:
        yield seconds, clocks
    finally:
        for name, fn in saved.items():
            setattr(loop, name, fn)


def whole_run(dataset: Path, run: Path, cfg: TrainConfig, model_passes: int) -> dict:
    """One `train(cfg)` on `dataset`, timed by phase, and the model-only rate of its step."""
    index = json.loads((dataset / "dataset.json").read_text())
    model = model_rate(cfg, len(index["classes"]), model_passes)
    with phase_timer() as (seconds, clocks):
        t0 = time.perf_counter()
        train(dataclasses.replace(cfg, shards=str(dataset), run_dir=str(run)))
        wall = time.perf_counter() - t0
    epochs = [r for r in read_metrics(run / "metrics.jsonl") if r.get("kind") == "epoch"]
    steady = epochs[1:] or epochs  # epoch 1 carries cuDNN autotuning and the first reads
    busy_ms = sum(c.total_busy for c in clocks) if any(c.on for c in clocks) else None
    return {"splits": {k: v["samples"] for k, v in index["splits"].items()}, "epochs": len(epochs),
            "device": str(resolve_device(cfg.device)), "wall_s": wall,
            "train_s": seconds["train"], "validate_s": seconds["validate"], "finish_s": seconds["finish"],
            "gpu_busy_whole": None if busy_ms is None else busy_ms / 1000 / wall,
            "train_clips_per_s": statistics.median(r["train"]["clips_per_s"] for r in steady),
            "model_clips_per_s": model["clips_per_s"],
            "config": {k: getattr(cfg, k) for k in ("batch_size", "accumulate", "num_workers", "worker_mode",
                                                      "clip_len", "crop_size", "precise_bn_batches",
                                                      "eval_batch_size", "compile")}}



def clip_frames(entries: list, shape: Shape) -> list[int]:
    """The frame counts the synthetic videos get (nslt's, cut at shape.max_frames)."""
    return [min(e[3], shape.max_frames) if shape.max_frames else e[3] for e in entries]


def whole_run_table(r: dict) -> list[str]:
    """The whole run's figures as printed lines: a header, then one `name  value  note` row each."""
    wall = r["wall_s"]
    other = wall - r["train_s"] - r["validate_s"] - r["finish_s"]
    busy = "-" if r["gpu_busy_whole"] is None else f"{100 * r['gpu_busy_whole']:.1f}%"
    busy_note = "not measured on the CPU (no CUDA events)" if r["gpu_busy_whole"] is None else ""
    ratio = r["train_clips_per_s"] / r["model_clips_per_s"]
    c = r["config"]
    rows = [
        ("wall clock, whole train() (s)", f"{wall:.1f}", f"{r['epochs']} epochs"),
        ("  training epochs (s)", f"{r['train_s']:.1f}", f"{100 * r['train_s'] / wall:.1f}%"),
        ("  val + precise BN (s)", f"{r['validate_s']:.1f}", f"{100 * r['validate_s'] / wall:.1f}%"),
        ("  test + report (s)", f"{r['finish_s']:.1f}", f"{100 * r['finish_s'] / wall:.1f}%"),
        ("  other: set-up, checkpoints (s)", f"{other:.1f}", f"{100 * other / wall:.1f}%"),
        ("GPU busy, share of the whole wall clock", busy,
         busy_note or "training passes' CUDA time over the wall clock; goal >= 90%"),
        ("training clips/s (metrics, epochs 2+)", f"{r['train_clips_per_s']:.2f}", ""),
        ("model-only clips/s (resident batch)", f"{r['model_clips_per_s']:.2f}", ""),
        ("training / model-only", f"{ratio:.2f}x", "goal >= 0.95x"),
    ]
    s = r["splits"]
    head = (f"WLASL100-shaped whole run on {r['device']}: {s.get('train', 0)}/{s.get('val', 0)}/{s.get('test', 0)} "
            f"videos (train/val/test), frames {r['frames'][0]}-{r['frames'][2]} (median {r['frames'][1]:g}); "
            f"batch {c['batch_size']} x accumulate {c['accumulate']}, clip {c['clip_len']} x {c['crop_size']}^2, "
            f"{c['num_workers']} loader workers ({c['worker_mode']}), precise BN {c['precise_bn_batches']} "
            f"batches, eval batch {c['eval_batch_size']}{', compiled' if c['compile'] else ''}")
    return [head, f"{'measure':42} {'value':>10}  note"] + [f"{n:42} {v:>10}  {note}".rstrip() for n, v, note in rows]


def run_whole(args: argparse.Namespace) -> dict:
    """--whole-run / --quick: build the dataset in a temporary directory, run, print the table."""
    shape = QUICK if args.quick else FULL
    if args.epochs is not None:
        shape = dataclasses.replace(shape, epochs=args.epochs)
    if args.fraction is not None:
        shape = dataclasses.replace(shape, fraction=args.fraction)
    entries = subsample(read_nslt(Path(args.nslt)), shape.fraction)
    frames = clip_frames(entries, shape)
    overrides = {k: v for k, v in (("num_workers", args.workers), ("batch_size", args.batch_size)) if v is not None}
    cfg = TrainConfig(shards="", run_dir="", epochs=shape.epochs, clip_len=shape.clip_len, crop_size=shape.crop_size,
                      device=args.device, compile=args.compile, progress=False, **overrides)
    modes = ["process", "thread"] if args.worker_mode == "both" else [args.worker_mode or cfg.worker_mode]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        dataset = wlasl_like(entries, Path(tmp), shape, workers=args.build_workers)
        built = time.perf_counter() - t0
        print(f"(dataset built in {built:.0f} s, {os.cpu_count()} CPUs, torch {torch.__version__})", flush=True)
        for mode in modes:  # the same dataset, one run after the other
            r = whole_run(dataset, Path(tmp) / f"run-{mode}", dataclasses.replace(cfg, worker_mode=mode),
                          shape.model_passes)
            r |= {"frames": [min(frames), statistics.median(frames), max(frames)], "build_s": built,
                  "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "cpus": os.cpu_count()}
            print("\n".join(whole_run_table(r)), flush=True)
            runs[mode] = r
    if len(runs) == 1:
        return runs[modes[0]]
    p, t = runs["process"], runs["thread"]
    print(f"\nthreads against processes, the same dataset: {t['train_clips_per_s'] / p['train_clips_per_s']:.2f}x "
          f"the training clips/s, {p['wall_s'] / t['wall_s']:.2f}x the whole run's speed (wall {t['wall_s']:.0f} s "
          f"against {p['wall_s']:.0f} s)")
    return {"runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shards", nargs="?", help="dataset for the step-rate and pipeline figures (not --whole-run)")
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default 12; whole run: train's)")
    ap.add_argument("--epochs", type=int, default=None, help="default 4 (whole run: 3, --quick 2)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 8 (whole run: train's)")
    ap.add_argument("--repeat-train", type=int, default=1,
                    help="List the train shards this many times (symlinks): epochs long enough for steady state")
    ap.add_argument("--no-compile", action="store_true", help="Skip the torch.compile step rate (minutes cold)")
    ap.add_argument("--worker-mode", choices=["process", "thread", "both"], default=None,
                    help="Loader workers for train(); both: one run each, compared (default process; whole run: "
                         "train's)")
    ap.add_argument("--out", default=None)
    # The whole run (issue 14 section 1)
    ap.add_argument("--whole-run", action="store_true", help="the WLASL100-shaped whole run instead of SHARDS")
    ap.add_argument("--quick", action="store_true", help="the whole run scaled down for the CPU (implies --whole-run)")
    ap.add_argument("--nslt", default=str(NSLT_100), help="WLASL's nslt_100.json (split sizes, frame counts)")
    ap.add_argument("--fraction", type=float, default=None, help="share of each split's videos (1.0; --quick 0.04)")
    ap.add_argument("--device", default="auto", help="whole run: auto | cpu | cuda")
    ap.add_argument("--compile", action="store_true", help="whole run: train --compile (and the model-only rate)")
    ap.add_argument("--build-workers", type=int, default=None, help="processes making the synthetic dataset")
    args = ap.parse_args()
    if args.whole_run or args.quick:
        result = run_whole(args)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2, default=str))
        return
    if args.shards is None:
        ap.error("SHARDS is needed (or --whole-run / --quick)")
    args.workers = 12 if args.workers is None else args.workers
    args.epochs = 4 if args.epochs is None else args.epochs
    args.batch_size = 8 if args.batch_size is None else args.batch_size
    args.worker_mode = args.worker_mode or "process"
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu needs a CUDA device")
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}", flush=True)
    results: dict = {"device": props.name, "torch": torch.__version__}

    rates = [step_rate(args.batch_size, False)] + ([] if args.no_compile else [step_rate(args.batch_size, True)])
    results["model"] = rates
    print(f"\nI3D step, batch {args.batch_size} x {CLIP} x {CROP}^2, bf16 autocast, SGD (data already on the GPU):")
    print(f"{'':10} {'s/step':>8} {'clips/s':>8} {'ratio':>6} {'warm-up s':>9} {'peak GiB':>8}")
    for r in rates:
        print(f"{'compiled' if r['compiled'] else 'eager':10} {r['step_s']:>8.3f} {r['clips_per_s']:>8.1f} "
              f"{r['clips_per_s'] / rates[0]['clips_per_s']:>5.2f}x {r['warmup_s']:>9.1f} {r['peak_gib']:>8.1f}",
              flush=True)

    modes = ["process", "thread"] if args.worker_mode == "both" else [args.worker_mode]
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = repeated(Path(args.shards), Path(tmp) / "data", args.repeat_train)
        for mode in modes:
            runs[mode] = pipeline(args, dataset, Path(tmp) / f"run-{mode}", mode)
        first = runs[modes[0]]
        t0 = time.perf_counter()
        ev = evaluate(first["run"] / "best.pt", dataset, split="val", device="cuda",
                      num_workers=min(args.workers, 8))
        eval_rate = ev["count"] / (time.perf_counter() - t0)
    results["train"] = {mode: {k: v for k, v in r.items() if k != "run"} for mode, r in runs.items()}
    results["eval_videos_per_s"] = eval_rate
    for mode, r in runs.items():
        print(f"\ntrain(): batch {args.batch_size} x accumulate 2, {args.workers} loader workers ({mode}), "
              f"eager, bf16; "
              f"{len(r['epochs'])} epochs of {r['epochs'][0]['train']['clips']} clips in {r['total_s']:.0f} s")
        print(f"  training clips/s (median of epochs 2+): {r['train_clips_per_s']:.1f} "
              f"= {r['train_clips_per_s'] / rates[0]['clips_per_s']:.2f}x the eager model-only rate")
        print(f"  GPU busy (CUDA events: time inside training passes / time from first to last): "
              f"{100 * r['gpu_busy']:.1f}%")
        print(f"  share of step time the CPU spent in next(loader): {100 * r['data_wait']:.1f}% (CUDA runs "
              f"asynchronously: the GPU is busy during much of it)")
        print(f"  CPU per training clip, trainer and loader workers, whole run: {1000 * r['cpu_s_per_clip']:.1f} ms")
    if len(runs) == 2:
        p, t = runs["process"], runs["thread"]
        print(f"\nthreads vs processes: {t['train_clips_per_s'] / p['train_clips_per_s']:.2f}x the clips/s, "
              f"{t['cpu_s_per_clip'] / p['cpu_s_per_clip']:.2f}x the CPU per clip")
    print(f"\nevaluation (every frame, centre crop, batch 1): {eval_rate:.1f} videos/s on {ev['count']} videos")
    train_rate = first["train_clips_per_s"]

    print("\nEstimated time per epoch (train at the measured rate, then val at the eval rate; "
          "precise BN adds ~10 batches):")
    print(f"{'subset':>9} {'train':>6} {'val':>5} {'eager min':>9} {'compiled min':>12}")
    compiled_gain = rates[1]["clips_per_s"] / rates[0]["clips_per_s"] if len(rates) > 1 else 1.0
    results["per_epoch_min"] = {}
    for n, (tr, va, _) in WLASL.items():
        eager = (tr / train_rate + va / eval_rate) / 60
        comp = (tr / (train_rate * compiled_gain) + va / eval_rate) / 60
        results["per_epoch_min"][n] = {"eager": eager, "compiled": comp}
        print(f"{'WLASL' + str(n):>9} {tr:>6} {va:>5} {eager:>9.1f} {comp:>12.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
