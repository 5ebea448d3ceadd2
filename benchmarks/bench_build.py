"""Build throughput, scaling, size and memory of `wlasl-shards build` on synthetic 720p videos.

Prints one table; every ratio compares figures measured in this same run on this machine:
- videos per CPU-second ("per core") of `build --workers 1` against bare ffmpeg (probe, then decode +
  resample + crop + resize of the same files to raw RGB frames, one ffmpeg thread, nothing kept) —
  goal >= 0.85x. CPU time is user + sys of the whole process tree, so it counts ffmpeg and Python
  alike and is not flattered by ffmpeg and Python overlapping on two cores. The build's fixed start-up
  (interpreter, imports, process pool) is measured on a one-video build and taken out: it is paid once
  per build, not per video (21k videos for WLASL);
- wall-clock videos/s of `build --workers 2` against `--workers 1`, start-up likewise taken out —
  goal >= 1.7x (needs 2 otherwise idle cores);
- bytes per 64 frames at the default settings (jpeg at --jpeg-qscale 3, 256x256) — goal <= 1.2 MB;
- peak RSS (the build process plus its workers, summed, sampled every 20 ms) of a 1000-video build
  of small videos — goal <= 1 GB.

    python benchmarks/bench_build.py            # about 5 minutes on 2 cores
    python benchmarks/bench_build.py --quick    # fewer videos and repeats, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from wlasl_shards.preprocess.synth import SynthConfig, synth
from wlasl_shards.video import ffmpeg_binary, plan_geometry, probe


def cpu_seconds() -> float:
    """User + sys CPU of this process's finished children (and theirs)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bare_ffmpeg(root: Path) -> tuple[float, float]:
    """(wall s, CPU s) to decode+resample+crop+resize every video to raw frames with plain ffmpeg."""
    entries = json.loads((root / "WLASL_v0.3.json").read_text())
    jobs = [(root / "videos" / f"{i['video_id']}.mp4", i["bbox"]) for e in entries for i in e["instances"]]
    start, cpu = time.perf_counter(), cpu_seconds()
    for path, bbox in jobs:
        info = probe(path)  # the crop needs the frame size, as in build
        x, y, w, h = plan_geometry(info.width, info.height, "bbox", 256, tuple(bbox)).crop
        subprocess.run(
            [ffmpeg_binary(), "-nostdin", "-v", "error", "-threads", "1", "-i", str(path),
             "-vf", f"fps=25,crop={w}:{h}:{x}:{y},scale=256:256:flags=area", "-threads", "1",
             "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"],
            check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, cpu_seconds() - cpu


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    total = 0
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(entry))
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
        stack.extend(children.get(p, []))
    return total


def run_build(src: Path, out: Path, workers: int, measure_rss: bool = False) -> tuple[float, float, int]:
    """(wall s, CPU s, peak tree RSS in bytes or 0) of one `wlasl-shards build` into an empty `out`
    (a finished build with the same options would return at once)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "wlasl_shards", "build", str(src), str(out), "--workers", str(workers),
           "--no-progress"]
    peak = 0
    start, cpu = time.perf_counter(), cpu_seconds()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    if measure_rss:
        sampler.start()
    if proc.wait() != 0:
        raise SystemExit(f"build failed: {' '.join(cmd)}")
    elapsed, used = time.perf_counter() - start, cpu_seconds() - cpu
    done.set()
    if measure_rss:
        sampler.join()
    return elapsed, used, peak


def one_video_source(root: Path) -> Path:
    """A manifest listing one video of `root`: its build costs the start-up and one video."""
    entry = json.loads((root / "WLASL_v0.3.json").read_text())[0]["instances"][0]
    manifest = root.parent / "one.jsonl"
    manifest.write_text(json.dumps({"path": str(root / "videos" / f"{entry['video_id']}.mp4"), "label": 0,
                                    "split": "train", "bbox": entry["bbox"]}) + "\n")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer videos and repeats")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    n_hd, n_rss = (4, 100) if args.quick else (12, 1000)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hd = tmp / "hd"
        synth(SynthConfig(classes=max(1, n_hd // 3), videos_per_class=3, sizes=((1280, 720),), seed=1,
                          min_frames=50, max_frames=75, workers=os.cpu_count() or 1), hd, progress=False)
        one = one_video_source(hd)
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in ("bare", "w1", "w2", "w1_one", "w2_one")}
        for _ in range(repeats):
            runs["bare"].append(bare_ffmpeg(hd))
            runs["w1"].append(run_build(hd, tmp / "w1", 1)[:2])
            runs["w1_one"].append(run_build(one, tmp / "w1_one", 1)[:2])
            runs["w2"].append(run_build(hd, tmp / "w2", 2)[:2])
            runs["w2_one"].append(run_build(one, tmp / "w2_one", 2)[:2])
        index = json.loads((tmp / "w1" / "dataset.json").read_text())
        videos = index["totals"]["samples"]
        per_64 = index["totals"]["bytes"] / index["totals"]["frames"] * 64

        small = tmp / "small"
        synth(SynthConfig(classes=20, videos_per_class=n_rss // 20, sizes=((320, 240),), seed=2,
                          min_frames=30, max_frames=40, workers=os.cpu_count() or 1), small, progress=False)
        rss_time, _, rss = run_build(small, tmp / "small_out", os.cpu_count() or 1, measure_rss=True)

    def med(key: str, i: int) -> float:
        return statistics.median(r[i] for r in runs[key])

    # marginal cost of the other videos-1 videos: start-up and the first video's work taken out
    extra = videos - 1
    core_bare = videos / med("bare", 1)
    core_w1 = extra / (med("w1", 1) - med("w1_one", 1))
    wall_w1 = extra / (med("w1", 0) - med("w1_one", 0))
    wall_w2 = extra / (med("w2", 0) - med("w2_one", 0))
    rows = [
        ("bare ffmpeg (videos per CPU-s)", f"{core_bare:.2f}", "", ""),
        ("build --workers 1 (videos per CPU-s)", f"{core_w1:.2f}", f"{core_w1 / core_bare:.2f}x of bare", ">= 0.85x"),
        ("build --workers 1 (videos/s, wall)", f"{wall_w1:.2f}", "", ""),
        ("build --workers 2 (videos/s, wall)", f"{wall_w2:.2f}", f"{wall_w2 / wall_w1:.2f}x of 1 worker", ">= 1.7x"),
        ("build start-up, 1 worker (s)", f"{med('w1_one', 0):.2f}", "paid once per build", ""),
        ("bytes per 64 frames (MB)", f"{per_64 / 1e6:.3f}", "", "<= 1.2 MB"),
        (f"peak RSS, {n_rss}-video build (MB)", f"{rss / 2**20:.0f}", f"{n_rss / rss_time:.1f} videos/s", "<= 1024 MB"),
    ]
    print(f"{videos} synthetic 1280x720 videos, {index['totals']['frames']} output frames; "
          f"median of {repeats}; {os.cpu_count()} cores")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>8}  {'ratio':<22} goal")
    for name, value, ratio, goal in rows:
        print(f"{name:<{width}}  {value:>8}  {ratio:<22} {goal}")


if __name__ == "__main__":
    main()
