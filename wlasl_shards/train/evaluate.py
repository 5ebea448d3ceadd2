"""Evaluation: a model over an eval loader -> counts; `evaluate` for a saved checkpoint.

The evaluation protocol is WLASL's: every frame of each video, centre crop, logits reduced over
time (max by default), top-k per instance and the mean of per-class accuracies. Each rank counts
its share of the split (`loader.make_eval_loader` gives every sample to exactly one rank) and the
integer counts are summed over ranks, so the figures do not depend on the world size.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

import torch
from tqdm import tqdm

from wlasl_shards import storage
from wlasl_shards.train import checkpoint as ckpt_io
from wlasl_shards.train import data, metrics, plots
from wlasl_shards.train.device import autocast, resolve_device, to_device
from wlasl_shards.train.loader import make_eval_loader
from wlasl_shards.train.model import InceptionI3d, load_init

log = logging.getLogger(__name__)


@torch.inference_mode()
def run_eval(model: torch.nn.Module, batches: Iterable[tuple], device: torch.device, num_classes: int,
             reduce: str = "max", loss: str = "ce", progress: bool = False, desc: str = "eval") -> metrics.EvalCounts:
    """Count `batches` of `(clips uint8 (B, T, H, W, 3), labels (B,), ...)`: prediction = logits
    reduced over time (`reduce`), loss = the training loss `loss` without label smoothing. Counts
    are summed over ranks when a process group is initialised. The model is left in eval mode."""
    model.eval()
    counts = metrics.EvalCounts.zeros(num_classes)
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False, dynamic_ncols=True):
        clips, labels = batch[0], batch[1]
        x, y = to_device(clips, labels, device)
        with autocast(device):
            logits = model(x)
        logits = logits.float()
        losses = metrics.clip_loss(loss, logits, y, x.shape[2], reduce)
        counts.add(metrics.reduce_time(logits, reduce), y, losses)
    counts.all_reduce()
    return counts


def model_from_checkpoint(checkpoint: dict, device: torch.device) -> InceptionI3d:
    """The checkpoint's InceptionI3d (its class count), weights loaded, on `device`, in eval mode."""
    model = InceptionI3d(len(checkpoint["classes"]), dropout=float(checkpoint["config"].get("dropout", 0.5)))
    load_init(model, checkpoint)
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


def evaluate(checkpoint: str | os.PathLike, shards: str | os.PathLike, split: str = "test", device: str = "auto",
             batch_size: int = 1, num_workers: int = 2, reduce: str | None = None, progress: bool = False,
             pictures: str | os.PathLike | None = None, worker_mode: str = "process") -> dict:
    """Metrics of a saved checkpoint on `split` of the shards in `shards` (directory or dataset.json).

    Returns {"split", "checkpoint", "shards", "count", "loss", "top1", "top5", "top10",
    "per_class_mean", "per_class", "confusions", "skipped"}; fractions in [0, 1]. Uses the
    checkpoint's crop size and time reduction (`reduce` overrides the latter) and its loss for
    "loss". Raises ValueError when the dataset's classes differ from the checkpoint's.
    `batch_size` > 1 pads shorter videos in a batch with their last frame, which can change
    max-over-time predictions slightly; 1 is the exact protocol. With `pictures` (a directory),
    also writes eval_<split>_confusions.png and eval_<split>_per_class.csv there. `worker_mode`:
    loader workers as processes or threads (data.LoaderConfig).
    """
    ck = ckpt_io.load(checkpoint)
    cfg = ck["config"]
    index = storage.load_index(shards)
    check_classes(ck["classes"], index["classes"], storage.dataset_url(shards))
    ckpt_io.warn_preprocessing_differs(ck["preprocessing"], index, storage.dataset_url(shards))
    reduce = reduce or cfg.get("eval_reduce", "max")
    dev = resolve_device(device)
    model = model_from_checkpoint(ck, dev)
    loader_cfg = data.LoaderConfig(clip_len=int(cfg["clip_len"]), crop_size=int(cfg["crop_size"]),
                                   eval_batch_size=batch_size, num_workers=num_workers, worker_mode=worker_mode)
    loader = make_eval_loader(shards, loader_cfg, split)
    counts = run_eval(model, loader, dev, len(ck["classes"]), reduce, cfg.get("loss", "ce"), progress,
                      desc=f"evaluate {split}")
    out = {"split": split, "checkpoint": os.fspath(checkpoint), "shards": os.fspath(shards), "reduce": reduce,
           **metrics.report(counts, ck["classes"]), "skipped": loader.skipped}
    if pictures is not None:
        plots.write_pictures(counts.confusion, ck["classes"], Path(pictures), prefix=f"eval_{split}_",
                             title=f"{split} split, {Path(checkpoint).name}")
    log.info("%s on %s: top-1 %.4f top-5 %.4f top-10 %.4f per-class %.4f (%d clips)", checkpoint, split,
             out["top1"], out["top5"], out["top10"], out["per_class_mean"], out["count"])
    return out


__all__ = ["check_classes", "evaluate", "model_from_checkpoint", "run_eval"]
