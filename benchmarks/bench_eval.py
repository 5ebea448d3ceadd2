"""Evaluation videos/s: batch 1 against grouped batches (`--eval-batch-size`, videos of one frame count
per batch, so the same logits), on a val split with WLASL100's per-video frame counts.

The split is made in this run: npy shards (no decoding cost, so the rows compare forward passes and the
grouping, not JPEG) of 338 videos whose frame counts are WLASL100's val ranges in
`../shared/reference/wlasl/nslt_100.json` (median 61 frames, 12 to 203, 96 distinct counts). Each row
is one pass of `run_eval` over `make_eval_loader` (InceptionI3d, random init, eval mode) and gives
videos/s, the mean videos per batch, and the largest logit difference from batch 1 over every video.
On the CPU the frames are small (--size) so a run takes minutes; on CUDA, bf16 autocast as in training.

    python benchmarks/bench_eval.py --quick     # 96 videos, 32 px (run from the repository root)
    python benchmarks/bench_eval.py --size 224 --device cuda
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wlasl_shards import shards
from wlasl_shards.train import data
from wlasl_shards.train.device import autocast, resolve_device, to_device
from wlasl_shards.train.loader import make_eval_loader
from wlasl_shards.train.models import InceptionI3d

NSLT = Path("..") / "shared" / "reference" / "wlasl" / "nslt_100.json"  # from the repository root
CLASSES = 100


def val_lengths(nslt: Path, limit: int | None) -> list[int]:
    """WLASL100's val frame counts (action = [class, start, end], inclusive), in the file's order."""
    if not nslt.is_file():
        raise SystemExit(f"--nslt {nslt}: no such file (WLASL's nslt_100.json)")
    entries = json.loads(nslt.read_text())
    lengths = [v["action"][2] - v["action"][1] + 1 for v in entries.values() if v["subset"] == "val"]
    return lengths[:limit] if limit else lengths


def write_split(root: Path, lengths: list[int], size: int, per_shard: int = 64) -> Path:
    """npy shards of a val split with these frame counts, and dataset.json."""
    (root / "val").mkdir(parents=True)
    records = []
    for i in range(0, len(lengths), per_shard):
        name = shards.shard_name("val", i // per_shard)
        with tarfile.open(root / name, "w", format=tarfile.PAX_FORMAT) as tar:
            for n in range(i, min(i + per_shard, len(lengths))):
                t = np.arange(lengths[n])[:, None, None, None]
                clip = np.broadcast_to(((t * 7 + n * 13) % 200).astype(np.uint8), (lengths[n], size, size, 3))
                video_id = f"val{n:04d}"
                meta = {"video_id": video_id, "gloss": f"g{n % CLASSES}", "label": n % CLASSES, "split": "val",
                        "num_frames": lengths[n], "frames": shards.frames_meta("npy", lengths[n], size, size, None)}
                for mname, blob in shards.sample_members(shards.sample_key(video_id), meta, shards.encode_npy(clip)):
                    tar.addfile(shards.tar_member(mname, len(blob)), io.BytesIO(blob))
        raw = (root / name).read_bytes()
        count = min(per_shard, len(lengths) - i)
        records.append(shards.ShardRecord(name, count, sum(lengths[i:i + count]), len(raw),
                                          hashlib.sha256(raw).hexdigest()).to_json())
    index = {"format": shards.FORMAT_NAME, "format_version": shards.FORMAT_VERSION, "tool_version": "bench",
             "classes": [f"g{c}" for c in range(CLASSES)], "crop_resolved": "center",
             "splits": {"val": {"samples": len(lengths), "shards": records}},
             "params": {"fps": 25.0, "size": size, "crop": "center", "codec": "npy"}}
    (root / shards.INDEX_NAME).write_text(json.dumps(index))
    return root


@torch.inference_mode()
def one_pass(model: torch.nn.Module, root: Path, cfg: data.LoaderConfig, device: torch.device) -> dict:
    """One pass over the split: seconds, batches, and each video's logits (max over time)."""
    logits, batches = {}, 0
    t0 = time.perf_counter()
    for clips, labels, vids in make_eval_loader(root, cfg, "val"):
        x, _ = to_device(clips, labels, device)
        with autocast(device):
            out = model(x).float().amax(dim=2)
        logits.update(zip(vids, out.cpu()))
        batches += 1
    return {"seconds": time.perf_counter() - t0, "batches": batches, "logits": logits}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the first 96 val videos at 32 px")
    ap.add_argument("--size", type=int, default=None, help="frame side = centre crop (default 64, quick 32)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", default="4,8", help="grouped eval batch sizes to compare with 1")
    ap.add_argument("--hold", type=int, default=data.LoaderConfig.eval_hold, help="LoaderConfig.eval_hold")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--nslt", type=Path, default=NSLT, help="WLASL's nslt_100.json, for the frame counts")
    args = ap.parse_args()
    size = args.size or (32 if args.quick else 64)
    lengths = val_lengths(args.nslt, 96 if args.quick else None)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = InceptionI3d(CLASSES).to(device).eval()
    print(f"{len(lengths)} val videos (WLASL100 frame counts, {len(set(lengths))} distinct), {size} px, "
          f"device {device}, {torch.get_num_threads()} torch threads, hold {args.hold}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_split(Path(tmp) / "shards", lengths, size)
        rows, base = [], None
        for b in [1, *map(int, args.batch_sizes.split(","))]:
            cfg = data.LoaderConfig(crop_size=size, eval_batch_size=b, num_workers=args.workers,
                                    worker_mode="thread", eval_hold=args.hold)
            one_pass(model, root, cfg, device)  # warm-up: allocator, thread pools, cuDNN
            r = one_pass(model, root, cfg, device)
            base = base or r
            diff = max((r["logits"][v] - base["logits"][v]).abs().max().item() for v in base["logits"])
            rows.append((b, len(lengths) / r["seconds"], len(lengths) / r["batches"], diff))
            print(f"eval batch {b:2d}: {rows[-1][1]:7.1f} videos/s ({rows[-1][1] / rows[0][1]:.2f}x batch 1), "
                  f"{rows[-1][2]:.2f} videos per batch, max |logit - batch-1 logit| {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
