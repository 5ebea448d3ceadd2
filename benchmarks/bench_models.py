"""The archs of `train --arch`, side by side, in one run.

Per arch: parameters (with a 100-class head), GFLOPs per clip at its native input (the published
weights' frames x crop; multiply-adds, as torchvision's docs and the papers count them, by torch's
FlopCounterMode on the meta device: nothing is allocated), and CPU forward+backward milliseconds per
clip at a small input (`--frames` x `--crop`, batches of 2; the archs that take exactly 16 x 224 at
that size),
with its ratio to I3D's in the same repeat (medians over `--repeats`, the archs interleaved in each
repeat so that a drifting machine moves every column alike).

On a GPU (CUDA) it adds, at native input and batch `--gpu-batch`, bf16 autocast: training clips/s
(forward, backward, AdamW step) eager and `torch.compile`d, and, with `--shards`, the full `train()`
rate on those shards (the median clips/s of metrics.jsonl's step records) against that model-only rate.
`--shards` works on the CPU too (the `--quick` test uses it), at the small input.

    python benchmarks/bench_models.py --quick                      # CPU, a few archs, tiny input
    python benchmarks/bench_models.py                              # every arch
    python benchmarks/bench_models.py --shards shards/wlasl100     # + train() against model-only
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from wlasl_shards.train import models
from wlasl_shards.train.device import autocast

CLASSES = 100
CPU_BATCH = 2  # clips per CPU forward + backward


def gflops(name: str) -> float:
    """Multiply-adds (G) of one clip at the arch's native input, counted on the meta device."""
    arch = models.get(name)
    with torch.device("meta"):
        model = models.build(name, CLASSES).eval()
        x = torch.empty(1, 3, arch.native_frames, arch.native_crop, arch.native_crop)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 2e9


def small_input(name: str, frames: int, crop: int) -> tuple[int, int]:
    """(frames, crop) the CPU row runs `name` at: the small input, or the exact size the arch takes."""
    arch = models.get(name)
    return (arch.frames or max(frames, arch.min_frames), arch.crop or max(crop, arch.min_crop))


def cpu_step_ms(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Milliseconds per clip of one forward + backward of the batch `x` (training-mode BatchNorm needs
    two clips when a small input leaves one value per channel)."""
    started = time.perf_counter()
    model(x).float().mean().backward()
    return 1000 * (time.perf_counter() - started) / len(x)


def gpu_rate(name: str, batch: int, steps: int, compiled: bool) -> float:
    """Training clips/s at native input, bf16 autocast, on a resident batch (the model-only rate)."""
    arch = models.get(name)
    device = torch.device("cuda")
    model = models.build(name, CLASSES).to(device).train()
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, arch.native_frames, arch.native_crop, arch.native_crop, device=device)
    y = torch.randint(0, CLASSES, (batch,), device=device)

    def step() -> None:
        with autocast(device):
            logits = forward(x)
        torch.nn.functional.cross_entropy(logits.float().mean(2), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up (and compilation)
        step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - started)


def train_rate(name: str, shards: str, frames: int, crop: int, batch: int, steps: int, device: str) -> float:
    """The full `train()` clips/s on `shards` (median of metrics.jsonl's step records) over `steps` steps."""
    from wlasl_shards import api

    with tempfile.TemporaryDirectory() as tmp:
        api.fit(shards, str(Path(tmp) / "run"), arch=name, clip_len=frames, crop_size=crop, batch_size=batch,
                accumulate=1, max_steps=steps, epochs=1, log_every=1, precise_bn_batches=0, device=device,
                progress=False, eval_clips=1 if models.get(name).frames else None)
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["clips_per_s"] for r in records if r.get("kind") == "step"][1:]  # the first step holds start-up
    return statistics.median(rates) if rates else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default=",".join(models.NAMES), help="comma-separated [default: every arch]")
    parser.add_argument("--frames", type=int, default=8, help="CPU row's clip length")
    parser.add_argument("--crop", type=int, default=64, help="CPU row's crop")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gpu-batch", type=int, default=8)
    parser.add_argument("--gpu-steps", type=int, default=20)
    parser.add_argument("--shards", help="also time train() on these shards against the model-only rate")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="i3d, r3d_18, s3d and swin3d_t at 4 x 32, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.archs, args.frames, args.crop, args.repeats = "i3d,r3d_18,s3d,swin3d_t", 4, 32, 2
        args.train_steps = min(args.train_steps, 4)
    names = [n.strip() for n in args.archs.split(",") if n.strip()]
    for name in names:
        models.get(name)  # an unknown name: the list, before anything runs
    if "i3d" not in names:
        names.insert(0, "i3d")  # the ratios' reference
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if cuda else ", no GPU: the GPU columns are not measured"))

    nets, inputs = {}, {}
    for name in names:
        frames, crop = small_input(name, args.frames, args.crop)
        nets[name] = models.build(name, CLASSES).train()
        inputs[name] = torch.randn(CPU_BATCH, 3, frames, crop, crop)
        cpu_step_ms(nets[name], inputs[name])  # warm-up
    times: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeats):
        repeat = {name: cpu_step_ms(nets[name], inputs[name]) for name in names}
        for name in names:
            times[name].append(repeat[name])
            ratios[name].append(repeat[name] / repeat["i3d"])
    del nets

    header = (f"{'arch':<15} {'native':>8} {'params':>8} {'GFLOPs':>7}  {'CPU input':>9} {'fwd+bwd ms':>10} "
              f"{'x i3d':>6}")
    if cuda:
        header += f"  {'GPU eager':>9} {'compiled':>9}"
    if args.shards:
        header += f"  {'train()':>8} {'/model':>7}"
    print(header)
    for name in names:
        arch = models.get(name)
        frames, crop = small_input(name, args.frames, args.crop)
        params = models.param_count(name, CLASSES) / 1e6
        row = (f"{name:<15} {arch.native_frames:>3}x{arch.native_crop:<4} {params:>7.1f}M "
               f"{gflops(name):>7.1f}  {frames:>3}x{crop:<5} {statistics.median(times[name]):>10.1f} "
               f"{statistics.median(ratios[name]):>6.2f}")
        model_only = None
        if cuda:
            eager = gpu_rate(name, args.gpu_batch, args.gpu_steps, compiled=False)
            compiled = gpu_rate(name, args.gpu_batch, args.gpu_steps, compiled=True)
            row += f"  {eager:>9.1f} {compiled:>9.1f}"
            model_only = eager
        if args.shards:
            t_frames, t_crop = (arch.native_frames, arch.native_crop) if cuda else (frames, crop)
            rate = train_rate(name, args.shards, t_frames, t_crop, args.gpu_batch if cuda else CPU_BATCH,
                              args.train_steps, "cuda" if cuda else "cpu")
            if model_only is None:  # CPU: the model-only rate of the same input and batch
                model_only = 1000 / statistics.median(times[name])
            row += f"  {rate:>8.2f} {rate / model_only:>7.2f}"
        print(row)
    print("GPU columns: training clips/s at native input, batch", args.gpu_batch, "bf16" if cuda else "(not measured)")


if __name__ == "__main__":
    main()
