"""Evaluation: a model over an eval loader -> counts; `evaluate` for a saved checkpoint.

The evaluation protocol is WLASL's: every frame of each video, centre crop, logits reduced over
time (max by default), top-k per instance and the mean of per-class accuracies; with a frame stride,
every S-th frame, and with `eval_clips` K, K windows per video whose time-reduced logits are averaged
(for models that take a fixed clip length; README, *The WLASL protocol*). Each rank counts
its share of the split (`loader.make_eval_loader` gives every sample to exactly one rank) and the
integer counts are summed over ranks, so the figures do not depend on the world size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from wlasl_shards import cache, storage
from wlasl_shards.train import checkpoint as ckpt_io
from wlasl_shards.train import data, metrics, models, plots, transforms
from wlasl_shards.train.device import autocast, resolve_device, to_device
from wlasl_shards.train.loader import make_eval_loader, worker_pool
from wlasl_shards.train.models import I3D_INPUT, InputSpec

log = logging.getLogger(__name__)


@torch.inference_mode()
def run_eval(model: torch.nn.Module, batches: Iterable[tuple], device: torch.device, num_classes: int,
             reduce: str = "max", loss: str = "ce", progress: bool = False, desc: str = "eval",
             windows: int = 0, spec: InputSpec = I3D_INPUT, channels: str = "rgb") -> metrics.EvalCounts:
    """Count `batches` of `(clips uint8 (B, T, H, W, 3), labels (B,), ...)`: prediction = logits
    reduced over time (`reduce`), loss = the training loss `loss` without label smoothing. Counts
    are summed over ranks when a process group is initialised. The model is left in eval mode; the clips
    become its input per `spec` and `channels` (`models.model_input`).

    `windows` K > 0 (`LoaderConfig.eval_clips`): each clip is K windows one after another; the model
    sees them as B * K clips, and a video's scores are its K windows' time-reduced logits averaged
    (`metrics.average_windows`), on which loss and top-k are counted."""
    model.eval()
    counts = metrics.EvalCounts.zeros(num_classes)
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False, dynamic_ncols=True):
        clips, labels = batch[0], batch[1]
        if windows:
            clips = transforms.split_windows(clips, windows)  # (B * K, L, H, W, 3)
        x, y = to_device(clips, labels, device, spec, channels)
        with autocast(device):
            logits = model(x)
        logits = logits.float()
        if windows:  # (B, C, 1): the averaged scores, as logits of one time step
            logits = metrics.average_windows(metrics.reduce_time(logits, reduce), windows)[:, :, None]
        losses = metrics.clip_loss(loss, logits, y, x.shape[2], reduce)
        counts.add(metrics.reduce_time(logits, reduce), y, losses)
    counts.all_reduce()
    return counts


def nothing_read(count: int, listed: int, skip_reasons: list[str], split: str, where: str) -> str | None:
    """Why the `split` split of `where` gave no sample at all though dataset.json lists `listed`
    (e.g. its shards are gone); None when something was read (`count`, over all ranks) or nothing is
    listed. One line naming the split and the first shard that failed."""
    if count or not listed:
        return None
    why = skip_reasons[0] if skip_reasons else "every sample was skipped"
    return f"the {split} split of {where} could not be read at all: {listed} samples listed, none read ({why})"


def eval_model(model: torch.nn.Module, compile: bool) -> torch.nn.Module:
    """What evaluation calls: `model` itself, or with `compile` torch.compile(model, dynamic=True),
    which shares its weights. Eval batches come in many frame counts (96 in WLASL100's val): a static
    compile would be specialised for each in turn; a dynamic one recompiles only where the model
    branches on a size (SAME padding is symmetric or not with the parity of each strided size), and
    past dynamo's recompile limit a shape runs eagerly, with the same logits."""
    return torch.compile(model, dynamic=True) if compile else model


def model_from_checkpoint(checkpoint: dict, device: torch.device) -> torch.nn.Module:
    """The checkpoint's model (its config's arch, "i3d" for older checkpoints; its class count), weights
    loaded, on `device`, in eval mode. Its input: `models.input_from_config(checkpoint["config"])`."""
    cfg = checkpoint["config"]
    arch = cfg.get("arch", "i3d")
    dropout = cfg.get("dropout", models.default_dropout(arch))
    model = models.build(arch, len(checkpoint["classes"]), dropout=None if dropout is None else float(dropout))
    models.load_init(model, checkpoint, arch=arch)
    return model.to(device).eval()


def check_classes(checkpoint_classes: list[str], dataset_classes: list[str], where: str) -> None:
    """ValueError when the dataset's class list is not the checkpoint's (indices would mean other glosses)."""
    if list(checkpoint_classes) == list(dataset_classes):
        return
    diff = next((i for i, (a, b) in enumerate(zip(checkpoint_classes, dataset_classes)) if a != b),
                min(len(checkpoint_classes), len(dataset_classes)))
    raise ValueError(f"{where}: class list differs from the checkpoint's ({len(dataset_classes)} vs "
                     f"{len(checkpoint_classes)} classes; first difference at index {diff}: "
                     f"{dataset_classes[diff] if diff < len(dataset_classes) else None!r} vs "
                     f"{checkpoint_classes[diff] if diff < len(checkpoint_classes) else None!r})")


def check_sampling(frame_stride: int | None, eval_clips: int | None) -> None:
    """ValueError for a bad `--frame-stride` / `--eval-clips` of evaluate or predict (None: the checkpoint's)."""
    if frame_stride is not None and frame_stride < 1:
        raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
    if eval_clips is not None and eval_clips < 0:
        raise ValueError(f"eval_clips must be >= 0, got {eval_clips}")


def sampling(config: dict, frame_stride: int | None = None, eval_clips: int | None = None) -> tuple[int, int]:
    """(frame stride, eval clips) for evaluating a checkpoint whose config is `config`: the given values,
    else the checkpoint's (1 and 0, every frame, for checkpoints from before issue 13)."""
    stride = int(config.get("frame_stride", 1)) if frame_stride is None else frame_stride
    windows = int(config.get("eval_clips", 0)) if eval_clips is None else eval_clips
    return stride, windows


@dataclass(frozen=True)
class EvaluateConfig:
    """Options of `wlasl-shards evaluate`."""

    checkpoint: str  # a checkpoint written by `train` (RUN_DIR/best.pt or last.pt)
    shards: str  # dataset directory or dataset.json (path or URL) with the checkpoint's class list
    split: str = "test"  # the split of dataset.json to evaluate
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    batch_size: int = 1  # videos per forward pass, all of one frame count (no padding: the same logits as 1)
    num_workers: int = 2  # loader workers; 0 = read in this process
    worker_mode: str = "process"  # loader workers are processes | threads (same results; see LoaderConfig)
    reduce: str | None = None  # logits over time: max | mean; None = the checkpoint's eval_reduce
    # issue 13 §3: sampling; None = the checkpoint's (its config's; 1 and 0 for checkpoints from before them)
    frame_stride: int | None = None  # every S-th frame
    eval_clips: int | None = None  # 0: every (S-th) frame; K: K windows of the checkpoint's clip_len, logits averaged
    output: str | None = None  # also write the metrics here as JSON, and the pictures beside it; None: nothing
    progress: bool = True  # tqdm bar
    cache_dir: str | None = None  # local cache of remote shards (`wlasl_shards.cache`); None: stream them
    cache_limit: int | None = None  # bytes the cache may hold (least recently used shards go); None: no limit
    compile: bool = False  # torch.compile the model, dynamic shapes (`eval_model`); the same metrics

    def check(self) -> None:
        """Raise ValueError naming the first bad option (a bad device is resolve_device's ValueError)."""
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.worker_mode not in data.WORKER_MODES:
            raise ValueError(f"worker_mode must be one of {data.WORKER_MODES}, got {self.worker_mode!r}")
        if self.reduce is not None and self.reduce not in metrics.REDUCTIONS:
            raise ValueError(f"reduce must be one of {metrics.REDUCTIONS} or None, got {self.reduce!r}")
        check_sampling(self.frame_stride, self.eval_clips)
        cache.make(self.cache_dir, self.cache_limit)


def evaluate(config: EvaluateConfig) -> dict:
    """Metrics of a saved checkpoint on one split of the shards (`wlasl-shards evaluate`).

    Returns {"split", "checkpoint", "shards", "reduce", "count", "loss", "top1", "top5", "top10",
    "per_class_mean", "per_class", "confusions", "skipped"}; fractions in [0, 1]. Uses the
    checkpoint's crop size and time reduction (`reduce` overrides the latter) and its loss for
    "loss". Raises ValueError for a bad option, for a split without samples, and when the dataset's
    classes differ from the checkpoint's; DataError when no sample of the split could be read.
    `batch_size` > 1 batches videos of equal frame count only (`loader.group_by_length`), so every
    video's logits are its batch-1 logits up to float rounding. With `output`, the metrics
    are also written there as JSON, with eval_<split>_confusions.png and eval_<split>_per_class.csv
    beside it.
    """
    config.check()
    # The names the protocol below is written in.
    checkpoint, shards, split, device, batch_size = (config.checkpoint, config.shards, config.split, config.device,
                                                     config.batch_size)
    num_workers, worker_mode, reduce, progress = config.num_workers, config.worker_mode, config.reduce, config.progress
    ck = ckpt_io.load(checkpoint)
    cfg = ck["config"]
    index = cache.load_index(shards, cache.make(config.cache_dir, config.cache_limit))
    check_classes(ck["classes"], index["classes"], storage.dataset_url(shards))
    ckpt_io.warn_preprocessing_differs(ck["preprocessing"], index, storage.dataset_url(shards))
    reduce = reduce or cfg.get("eval_reduce", "max")
    dev = resolve_device(device)
    model = model_from_checkpoint(ck, dev)
    stride, windows = sampling(cfg, config.frame_stride, config.eval_clips)
    loader_cfg = data.LoaderConfig(clip_len=int(cfg["clip_len"]), crop_size=int(cfg["crop_size"]),
                                   eval_batch_size=batch_size, num_workers=num_workers, worker_mode=worker_mode,
                                   cache_dir=config.cache_dir, cache_limit=config.cache_limit,
                                   frame_stride=stride, eval_clips=windows)
    spec, channels = models.input_from_config(cfg)
    pool = worker_pool(loader_cfg)  # worker processes whose clips cross in reused slots
    try:
        loader = make_eval_loader(shards, loader_cfg, split, pool=pool)
        counts = run_eval(eval_model(model, config.compile), loader, dev, len(ck["classes"]), reduce,
                          cfg.get("loss", "ce"), progress, desc=f"evaluate {split}", windows=windows, spec=spec,
                          channels=channels)
    finally:
        if pool is not None:
            pool.close()
    listed = int(index["splits"][split].get("samples", 0))
    if not listed:
        raise ValueError(f"{storage.dataset_url(shards)}: the {split} split has no samples to evaluate")
    unreadable = nothing_read(counts.count, listed, loader.skip_reasons, split, storage.dataset_url(shards))
    if unreadable:  # a score of nothing is not a score: count 0 and exit 0 would read as a result
        raise data.DataError(unreadable)
    out = {"split": split, "checkpoint": os.fspath(checkpoint), "shards": os.fspath(shards), "reduce": reduce,
           "frame_stride": stride, "eval_clips": windows, **metrics.report(counts, ck["classes"]),
           "skipped": loader.skipped}
    if config.output is not None:
        storage.write_json(config.output, out)
        plots.write_pictures(counts.confusion, ck["classes"], Path(config.output).parent, prefix=f"eval_{split}_",
                             title=f"{split} split, {Path(checkpoint).name}")
    log.info("%s on %s: top-1 %.4f top-5 %.4f top-10 %.4f per-class %.4f (%d clips)", checkpoint, split,
             out["top1"], out["top5"], out["top10"], out["per_class_mean"], out["count"])
    return out


__all__ = ["EvaluateConfig", "check_classes", "check_sampling", "eval_model", "evaluate", "model_from_checkpoint",
           "nothing_read", "run_eval", "sampling"]
