"""Training checkpoints: what they hold, atomic saving, safe loading, RNG state capture.

A checkpoint is a plain dict of tensors and plain Python values only (no numpy arrays, no
dataclasses, no pickled classes), so `torch.load(weights_only=True)` reads all of it:

    format, format_version   CHECKPOINT_FORMAT, CHECKPOINT_VERSION
    model                    the model's state_dict (config["arch"]; unwrapped: no "module." / "_orig_mod.")
    optimizer, scheduler     their state_dicts
    epoch                    the last completed epoch, numbered from 1 as the log numbers them (version 1
                             counted from 0: `load` converts); training resumes at epoch + 1
    step                     optimiser steps taken so far
    best                     {"epoch", "top1"} of the best validation top-1 so far (None before any)
    rng                      `rng_state()`: torch CPU / CUDA, numpy and Python RNG states
    config                   the resolved training config (a dict)
    classes                  the gloss of every class index
    preprocessing            how the shards' frames were made (`preprocessing_params`), for predict
    tool_version             wlasl_shards.__version__
    world_size               ranks that trained it (version 3; absent before)
    mid_epoch                (version 3) None at an epoch's end; a last.pt saved inside an epoch
                             (`checkpoint_every`) has {"epoch": the epoch running, "batches": its batches
                             done, "world_size", "num_workers", "ranks": per rank {"position": the
                             loader's (`data.TrainStream`), "sums": [loss sum, hits, clips],
                             "window": [loss sum, clips] since the last step record, "rng": that rank's
                             `rng_state()`}}; "epoch" above is still the last epoch completed

`models.load_init` reads the "model" entry, so a checkpoint also serves as `--init`.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np
import torch

from wlasl_shards import __version__, storage
from wlasl_shards.train.models import read_checkpoint

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "wlasl-shards-checkpoint"
# 2: epochs numbered from 1 (version 1 counted from 0; `load` converts it). 3: "mid_epoch" and
# "world_size"; a version-2 reader would take a mid-epoch last.pt for an epoch's end (and redo work done).
CHECKPOINT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
LAST, BEST = "last.pt", "best.pt"
REQUIRED = ("model", "config", "classes", "preprocessing")  # what evaluate / predict need

# dataset.json `params` that decide the pixels a model sees; `crop_resolved` is added beside them.
PREPROCESSING_KEYS = ("fps", "size", "crop", "bbox_margin", "codec", "jpeg_qscale", "apply_frame_range")


def preprocessing_params(index: dict) -> dict:
    """The frame-making parameters of a dataset (its parsed dataset.json): fps, size, crop (as
    asked and as resolved: bbox | center | none), bbox margin, codec and JPEG quality."""
    params = index.get("params", {})
    out = {k: params.get(k) for k in PREPROCESSING_KEYS}
    out["crop_resolved"] = index.get("crop_resolved", params.get("crop"))
    return out


def preprocessing_differences(trained: dict, seen: dict) -> dict:
    """{key: (trained value, seen value)} where a dataset's preprocessing (`preprocessing_params`)
    differs from `trained` (a checkpoint's "preprocessing")."""
    return {k: (v, seen.get(k)) for k, v in trained.items() if seen.get(k) != v}


def warn_preprocessing_differs(trained: dict, index: dict, where: str) -> dict:
    """Log one warning when the dataset `index` (its parsed dataset.json, at `where`) was built with
    other preprocessing than `trained` (a checkpoint's "preprocessing"): the model would see other
    pixels than in training. Returns {key: (checkpoint's value, dataset's value)} of the differences."""
    differs = preprocessing_differences(trained, preprocessing_params(index))
    if differs:
        log.warning("%s was built with other preprocessing than the checkpoint's training shards: %s", where,
                    ", ".join(f"{k}: {a!r} (checkpoint) vs {b!r}" for k, (a, b) in differs.items()))
    return differs


# ------------------------------------------------------------------------------------------- RNG


def rng_state() -> dict:
    """Every global RNG state as tensors and plain values (weights_only-loadable)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": str(np_name), "keys": [int(k) for k in np_keys], "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured. CUDA states are restored when the device count matches
    (a checkpoint from another machine still resumes, with a warning)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("checkpoint has CUDA RNG states of %d devices, this machine has %d: not restored",
                        len(cuda), torch.cuda.device_count())
    n = state["numpy"]
    np.random.set_state((n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


# ------------------------------------------------------------------------------------ save / load


def _cause(error: BaseException) -> BaseException:
    """The exception that made torch's zip writer fail: Ctrl-C or a full disk in the middle of
    `torch.save` surfaces as RuntimeError("... unexpected pos ...") from the writer's clean-up, with
    the real cause only as its context."""
    seen = error
    while seen is not None:
        if isinstance(seen, (KeyboardInterrupt, OSError)):
            return seen
        seen = seen.__context__ or seen.__cause__
    return error


def _torch_save(checkpoint: dict, f: Any) -> None:
    try:
        torch.save(checkpoint, f)
    except BaseException as e:
        cause = _cause(e)
        if cause is e:
            raise
        raise cause from None


def save(path: str | os.PathLike, checkpoint: dict) -> None:
    """Write `checkpoint` to `path` atomically (storage.write_atomic), so a kill at any moment leaves
    the old file or the new one. Ctrl-C during the write is a plain KeyboardInterrupt, a full disk
    storage.NoSpace ("no space left on DEVICE writing PATH"); either way the old file stays as it was
    and no temporary is left."""
    storage.write_atomic(path, lambda f: _torch_save(checkpoint, f))


def estimated_size(model: torch.nn.Module, state_per_param: int) -> int:
    """Bytes of a checkpoint of `model` with an optimiser holding `state_per_param` tensors per
    parameter (SGD momentum 1, Adam 2): known before the first step, when the optimiser's state is
    still empty. The RNG states and plain values are small beside the tensors."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return params * (1 + state_per_param) + buffers


def _from_version_1(obj: dict) -> dict:
    """Version 1 numbered epochs from 0; the log, metrics.jsonl and report.json number them from 1."""
    obj = dict(obj, format_version=CHECKPOINT_VERSION)
    if isinstance(obj.get("epoch"), int):
        obj["epoch"] += 1
    if isinstance(obj.get("best"), dict) and isinstance(obj["best"].get("epoch"), int):
        obj["best"] = {**obj["best"], "epoch": obj["best"]["epoch"] + 1}
    return obj


def load(path: str | os.PathLike) -> dict:
    """A checkpoint written by `train`, read with weights_only=True onto the CPU, in this version's
    layout (an older version is converted).

    Raises ValueError naming the file when it is missing, unreadable, or not a training
    checkpoint of this tool (e.g. a bare Kinetics state_dict, which only `--init` takes).
    """
    path = os.fspath(path)
    obj: Any = read_checkpoint(path)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path}: not a wlasl-shards training checkpoint (a file written by "
                         f"`wlasl-shards train`, e.g. RUN_DIR/best.pt); a bare state_dict only works as --init")
    if obj.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(f"checkpoint {path}: format version {obj.get('format_version')!r}, this tool reads "
                         f"versions {', '.join(map(str, READABLE_VERSIONS))}")
    if obj["format_version"] == 1:
        obj = _from_version_1(obj)
    obj.setdefault("mid_epoch", None)  # versions 1 and 2 were saved at epochs' ends only
    obj.setdefault("world_size", None)
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise ValueError(f"checkpoint {path}: missing entries {missing}")
    return obj


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DistributedDataParallel / DataParallel (.module) and torch.compile
    (._orig_mod) wrappers, whose state_dict keys match InceptionI3d's."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def make(*, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int, step: int,
         best: dict | None, config: dict, classes: list[str], preprocessing: dict, world_size: int = 1,
         mid_epoch: dict | None = None) -> dict:
    """A checkpoint dict (see the module docstring) of the current training state."""
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "step": step,
        "best": best,
        "rng": rng_state(),
        "config": config,
        "classes": list(classes),
        "preprocessing": preprocessing,
        "tool_version": __version__,
        "world_size": world_size,
        "mid_epoch": mid_epoch,
    }


__all__ = ["BEST", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "LAST", "PREPROCESSING_KEYS", "READABLE_VERSIONS",
           "estimated_size", "load", "make", "preprocessing_differences", "preprocessing_params", "rng_state", "save",
           "set_rng_state", "unwrap", "warn_preprocessing_differs"]
