"""The trainer on one CUDA GPU: I3D step rate (eager vs torch.compile, bf16 autocast), the whole
`train()` pipeline's clips/s and data-wait share on real shards, evaluation speed, and the time per
epoch these give for WLASL100/300/1000/2000.

    python benchmarks/bench_gpu.py SHARDS [--workers 12] [--worker-mode both] [--out results.json]

SHARDS: any dataset built at --size 256 (e.g. `wlasl-shards synth` + `build`; the figures in the
README used 24 synthetic classes x 5 videos at 640x480). Every figure comes from this one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from wlasl_shards.api import evaluate
from wlasl_shards.train import metrics, transforms
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shards")
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeat-train", type=int, default=1,
                    help="List the train shards this many times (symlinks): epochs long enough for steady state")
    ap.add_argument("--no-compile", action="store_true", help="Skip the torch.compile step rate (minutes cold)")
    ap.add_argument("--worker-mode", choices=["process", "thread", "both"], default="process",
                    help="Loader workers for train(); both: one run each, compared")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
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
