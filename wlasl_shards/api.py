"""The Python API: what the `wlasl-shards` commands do, as functions that return their results.

    synth(output, **options)                 -> summary dict          (`wlasl-shards synth`)
    build(source, output, **options)         -> the index (dataset.json's dict)   (`build`)
    train(shards, run_dir, **options)        -> report.json's dict + "history" (metrics.jsonl)  (`train`)
    evaluate(checkpoint, shards, split=...)  -> metrics dict          (`evaluate`)
    predict(checkpoint, videos, top_k=...)   -> one dict per video    (`predict`)
    contact_sheet(shards, samples=...)       -> PIL image             (`inspect --sheet`)

Options are the fields of the commands' config dataclasses (`SynthConfig`, `BuildConfig`,
`TrainConfig`), as keyword arguments or as a ready config; an unknown keyword is a TypeError naming
it, a bad value the config's ValueError. `synth`, `build` and `train` still write what the commands
write (videos, shards, checkpoints, report.json, ...): the files are the record, the return values
are for the caller.

For a training loop of one's own: `clip_dataset` (a torch IterableDataset of `(clip, label)` with
the trainer's train or eval transform), `to_model_input` (uint8 clips -> I3D's float input) and
`InceptionI3d` (+ `load_init` for Kinetics-400 weights).

This module sits beside the CLI, above both stages: it may import `preprocess`, `train` and
`inspect`; nothing in the package imports it. `import wlasl_shards` exposes its names lazily, so
importing the package does not import torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image
from torch.utils.data import IterableDataset

from wlasl_shards import inspect as insp
from wlasl_shards import storage
from wlasl_shards.preprocess import build as build_mod
from wlasl_shards.preprocess import synth as synth_mod
from wlasl_shards.preprocess.build import BuildConfig
from wlasl_shards.preprocess.synth import SynthConfig
from wlasl_shards.train import data, loader, loop
from wlasl_shards.train import evaluate as evaluate_mod
from wlasl_shards.train import predict as predict_mod
from wlasl_shards.train.loop import TrainConfig
from wlasl_shards.train.model import InceptionI3d, load_init
from wlasl_shards.train.plan import ShardPart
from wlasl_shards.train.transforms import I3D_MIN_FRAMES, to_model_input

log = logging.getLogger(__name__)

C = TypeVar("C")
PathLike = str | os.PathLike


def _config(cls: type[C], caller: str, base: C | None, given: dict[str, Any], options: dict[str, Any]) -> C:
    """`cls` from `base` (or the defaults) with `given` (the caller's positional arguments) and
    `options` (its keywords) applied. A keyword that is no field of `cls`, or that repeats a
    positional argument, is a TypeError naming it (a typo must not silently become a default)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"{caller}() got unknown option(s) {', '.join(map(repr, unknown))}; "
                        f"options: {', '.join(sorted(names - set(given)))}")
    repeated = sorted(set(options) & set(given))
    if repeated:
        raise TypeError(f"{caller}() got {', '.join(map(repr, repeated))} both as an argument and as an option")
    if base is None:
        return cls(**given, **options)
    return dataclasses.replace(base, **given, **options)


def _config_or_paths(cls: type[C], caller: str, first: Any, second: PathLike | None, fields: tuple[str, str],
                     options: dict[str, Any]) -> C:
    """`cls` for a call `caller(first, second, **options)` whose two positional arguments fill `fields`,
    or `caller(config, **options)` with a whole `cls` first (then `second` belongs in the config)."""
    one, two = fields
    if isinstance(first, cls):
        if second is not None:
            raise TypeError(f"{caller}() got a {cls.__name__} and {two}: set {two} in the config "
                            f"(or as an option)")
        return _config(cls, caller, first, {}, options)
    if second is None:
        raise TypeError(f"{caller}() needs {two}: {caller}({one}, {two}, **options)")
    return _config(cls, caller, None, {one: os.fspath(first), two: os.fspath(second)}, options)


# ------------------------------------------------------------------------------------- stage 1


def synth(output: PathLike, config: SynthConfig | None = None, *, progress: bool = True,
          **options: Any) -> dict[str, Any]:
    """Write a synthetic dataset in the WLASL layout into `output` (`wlasl-shards synth`).

    Args:
        output: directory to write (created; files of the same names are replaced).
        config: a SynthConfig to start from (default: SynthConfig()).
        progress: tqdm bar on stderr.
        **options: SynthConfig fields, e.g. classes=10, videos_per_class=12, sizes=((320, 240),),
            min_frames=40, max_frames=80, seed=0, workers=1.

    Returns:
        {"output", "classes", "videos", "splits": {split: count}, "frames", "seconds"}.

    Raises:
        TypeError: an unknown option. ValueError: a bad option value.
    """
    cfg = _config(SynthConfig, "synth", config, {}, options)
    return synth_mod.synth(cfg, Path(output), progress=progress)


def build(source: PathLike | BuildConfig, output: PathLike | None = None, **options: Any) -> dict[str, Any]:
    """Convert a WLASL-layout dataset or a manifest into per-split WebDataset shards (`wlasl-shards build`).

    Args:
        source: dataset root (WLASL layout: WLASL_v0.3.json, nslt_*.json, videos/) or a manifest
            (.csv / .jsonl); or a whole BuildConfig (then `options` override its fields).
        output: directory for the shards and dataset.json (required unless `source` is a BuildConfig).
        **options: BuildConfig fields, e.g. subset="100", size=256, fps=25.0, crop="auto",
            codec="jpeg", shard_size=128 * 2**20 (bytes), workers=0 (all cores), overwrite=False,
            progress=True.

    Returns:
        The index, equal to the dataset.json written to `output`: format, params, classes (index ->
        gloss), per split the shards with sample/frame/byte counts and sha256, totals, failed, missing.

    Raises:
        TypeError: an unknown option. ValueError: a bad option value. SourceError: unusable source
        metadata (nothing written). BuildError: `output` holds another build, or too many videos in
        a row failed.
    """
    cfg = _config_or_paths(BuildConfig, "build", source, output, ("source", "output"), options)
    return build_mod.build(cfg)


# ------------------------------------------------------------------------------------- stage 2


def train(shards: PathLike | TrainConfig, run_dir: PathLike | None = None, **options: Any) -> dict[str, Any]:
    """Train I3D on built shards: validation every epoch, the test split once with the best
    checkpoint (`wlasl-shards train`). Exposed as `wlasl_shards.train(...)` (the trainer package is
    callable) and as `wlasl_shards.fit`.

    Args:
        shards: dataset directory (or its dataset.json; a path or an s3:// / gs:// / https:// URL)
            written by `build`; or a whole TrainConfig (then `options` override its fields).
        run_dir: where config.json, metrics.jsonl, best.pt, last.pt, report.json and curves.png go
            (required unless `shards` is a TrainConfig); a new run needs an empty or missing directory.
        **options: TrainConfig fields, e.g. epochs=60, batch_size=4, accumulate=4, optimizer="sgd",
            lr=None, clip_len=64, crop_size=224, num_workers=4, worker_mode="process" (or "thread"),
            device="auto", init="rgb_imagenet.pt", resume=False, max_steps=None, progress=True.

    Returns:
        report.json's dict ("test": top-1/5/10, per-class accuracy and confusions of best.pt on the
        test split, or None without test samples; "best_epoch", "best_val", "epochs", "steps",
        "config", ...) plus "history": the records of metrics.jsonl in order, {"kind": "step"}
        (loss, lr, clips_per_s, data_wait), {"kind": "epoch"} ("train" and "val" figures, "best")
        and {"kind": "test"}.

    Raises:
        TypeError: an unknown option. ValueError: a bad option, an unusable run_dir or shards
        (before any training).
    """
    cfg = _config_or_paths(TrainConfig, "train", shards, run_dir, ("shards", "run_dir"), options)
    report = loop.train(cfg)
    # The loop returns the report only; the per-step and per-epoch figures are in metrics.jsonl.
    return {**report, "history": loop.read_metrics(Path(cfg.run_dir) / loop.METRICS_FILE)}


def evaluate(checkpoint: PathLike, shards: PathLike, split: str = "test", *, device: str = "auto",
             batch_size: int = 1, num_workers: int = 2, worker_mode: str = "process", reduce: str | None = None,
             progress: bool = False, output: PathLike | None = None) -> dict[str, Any]:
    """Top-1/5/10 and per-class accuracy of a checkpoint on one split (`wlasl-shards evaluate`).

    WLASL's protocol: every frame of each video, centre crop at the checkpoint's crop size, logits
    reduced over time (max, or the checkpoint's eval_reduce; `reduce` overrides it).

    Args:
        checkpoint: a checkpoint written by `train` (RUN_DIR/best.pt or last.pt).
        shards: dataset directory or dataset.json (path or URL) with the checkpoint's class list.
        split: "train" | "val" | "test".
        device: "auto" (cuda when available) | "cpu" | "cuda".
        batch_size: videos per forward pass; > 1 pads shorter videos, 1 is the exact protocol.
        num_workers: loader workers (0 reads in this process).
        worker_mode: "process" | "thread": loader workers as processes or threads (same results).
        reduce: "max" | "mean" | None (the checkpoint's).
        progress: tqdm bar.
        output: also write the metrics there as JSON (the command's --output); None writes nothing.

    Returns:
        {"split", "checkpoint", "shards", "reduce", "count", "loss", "top1", "top5", "top10",
        "per_class_mean", "per_class", "confusions", "skipped"}; accuracies are fractions in [0, 1].
        The same dict the command prints as JSON.

    Raises:
        ValueError: a missing or foreign checkpoint, a dataset with other classes, a bad option.
    """
    metrics = evaluate_mod.evaluate(checkpoint, shards, split=split, device=device, batch_size=batch_size,
                                    num_workers=num_workers, worker_mode=worker_mode, reduce=reduce,
                                    progress=progress)
    if output is not None:
        Path(output).write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def predict(checkpoint: PathLike, videos: PathLike | Sequence[PathLike], *, top_k: int = 5, device: str = "auto",
            bbox: Sequence[float] | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """The top-k glosses of video files, preprocessed as the checkpoint's shards were (`wlasl-shards predict`).

    Args:
        checkpoint: a checkpoint written by `train`.
        videos: one video file or a sequence of them (any container and codec ffmpeg reads).
        top_k: glosses per video (at most the class count).
        device: "auto" | "cpu" | "cuda".
        bbox: the signer's box (x1, y1, x2, y2) in the videos' pixels, for checkpoints trained on
            bbox crops; None crops the centre square.
        progress: tqdm bar.

    Returns:
        One dict per video, in order: {"video", "frames" (T after resampling), "crop",
        "top": [{"gloss", "label", "probability"}] (probabilities descending, softmax over all
        classes of the time-reduced logits)}.

    Raises:
        ValueError: a file ffmpeg cannot read, a bad option, a foreign checkpoint.
    """
    paths = [videos] if isinstance(videos, (str, os.PathLike)) else list(videos)
    return predict_mod.predict(checkpoint, paths, top_k=top_k, device=device, bbox=bbox, progress=progress)


def contact_sheet(shards: PathLike, samples: int = 8, split: str | None = None, frames_per_row: int = 8,
                  thumb: int = 96) -> Image.Image:
    """A contact sheet of the first `samples` samples of `split` (`wlasl-shards inspect --sheet`): one
    row per sample, `frames_per_row` frames evenly spaced over time, the gloss on the left.

    Args:
        shards: a local dataset directory (or its dataset.json) written by `build`.
        samples: rows.
        split: "train" | "val" | "test" | None (the first non-empty split).
        frames_per_row: frames per sample; thumb: thumbnail side in pixels.

    Returns:
        An RGB PIL image; Jupyter shows it as the value of a cell, `.save(path)` writes it.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    path = Path(shards)
    index = storage.load_index(path)
    root = path if path.is_dir() else path.parent
    return insp.contact_sheet(list(insp.first_samples(root, index, samples, split)), frames_per_row, thumb)


# ------------------------------------------------------------------------------------- your own loop


class ClipDataset(IterableDataset):
    """`(clip, label)` pairs of one split for one rank: clip (T, C, C, 3) uint8 tensor, label int.

    Made by `clip_dataset`. Training mode: `num_samples` clips per epoch, each a random window of
    `clip_len` frames, random crop, random flip; the order and the draws follow (seed, epoch, rank,
    loader worker), so the same arguments give the same clips. Eval mode: every sample of this
    rank's share once, all frames (at least `eval_min_frames`), centre crop; T differs between
    videos, so batch with batch_size=1 or `wlasl_shards.train.loader.collate`.

    In a DataLoader with workers, each worker reads its own share of the shards (nothing is read
    twice) and, as with any IterableDataset, batches its own clips: an epoch can end with a short
    batch per worker. There is no `len()`: the DataLoader would take it for the batch count. Where
    every rank must run the same number of steps (DDP), use DataLoader(batch_size=None) and group
    the clips in the main process, as `wlasl_shards.train` does. Corrupt samples are skipped, with a
    warning from the process that read them, and replaced in training (the epoch keeps its
    length); more than `max_consecutive_errors` in a row raise DataError naming the shard.
    """

    def __init__(self, parts: list[ShardPart], cfg: data.LoaderConfig, classes: list[str], train: bool,
                 epoch: int, rank: int, world_size: int, num_samples: int):
        self.parts, self.cfg, self.train = parts, cfg, train
        self.classes = classes  # index -> gloss, from dataset.json
        self.epoch, self.rank, self.world_size = epoch, rank, world_size
        # Training: the exact clips per epoch, the same on every rank. Eval: this rank's samples per
        # dataset.json (fewer come when samples are corrupt).
        self.num_samples = num_samples

    def set_epoch(self, epoch: int) -> None:
        """Use the shard order, windows, crops and flips of `epoch` from the next iteration on."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        stream: IterableDataset
        if self.train:
            stream = data.TrainStream(self.parts, self.cfg, len(self.classes), self.epoch, self.rank,
                                      self.world_size, self.num_samples)
        else:
            stream = data.EvalStream(self.parts, self.cfg, len(self.classes), self.rank, self.world_size)
        for example in stream:
            if data.STATS in example:  # the trainer's skip report; the skips were logged where they happened
                continue
            yield example["clip"], example["label"]


def clip_dataset(shards: PathLike, split: str = "train", *, train: bool | None = None, clip_len: int = 64,
                 crop_size: int = 224, flip: bool = True, seed: int = 0, epoch: int = 0, rank: int | None = None,
                 world_size: int | None = None, shuffle_buffer: int = 100, eval_min_frames: int = I3D_MIN_FRAMES,
                 max_consecutive_errors: int = 20) -> ClipDataset:
    """A streaming torch IterableDataset of `(clip, label)` for `split`, with the trainer's transforms.

    Args:
        shards: dataset directory or dataset.json, a path or URL (s3://, gs://, https://).
        split: "train" | "val" | "test".
        train: the training transform (random window, crop, flip; shuffled) or the evaluation one
            (all frames, centre crop, shard order); None: training for split "train" only.
        clip_len: frames per training clip (shorter videos padded with their last frame).
        crop_size: side of the square crop; at most the shards' frame size.
        flip: random left-right flips of training clips.
        seed, epoch: with rank and loader worker, they fix the order and the random draws;
            `set_epoch` changes the epoch between passes.
        rank, world_size: this process's share of the data (default: torch.distributed's, else 0 of 1);
            in training every rank gets the same number of clips.
        shuffle_buffer: raw samples each reader holds to shuffle (training).
        eval_min_frames: eval clips shorter than this are padded (I3D needs 9).
        max_consecutive_errors: corrupt samples in a row before DataError.

    Returns:
        A ClipDataset yielding clip (T, crop_size, crop_size, 3) uint8 tensors (T = clip_len in
        training) and int labels; `.classes` is the class list, `.num_samples` the clips per pass,
        `.set_epoch(e)` moves to epoch e. Batch it with a DataLoader (see ClipDataset on workers),
        then `to_model_input(clips)` gives I3D's (B, 3, T, C, C) float32 input in [-1, 1].

    Raises:
        ValueError: a bad option, a missing split, a crop larger than the frames, an empty train split.
    """
    train = split == "train" if train is None else train
    cfg = data.LoaderConfig(clip_len=clip_len, crop_size=crop_size, flip=flip, seed=seed,
                            shuffle_buffer=shuffle_buffer, eval_min_frames=eval_min_frames,
                            max_consecutive_errors=max_consecutive_errors)
    src = loader.load_split(shards, split, cfg, rank, world_size, epoch=epoch, train=train)
    # Training: equal on every rank, the rest of total is dropped.
    num_samples = max(1, src.total // src.world_size) if train else src.rank_samples()
    return ClipDataset(src.parts, cfg, list(src.index["classes"]), train, epoch, src.rank, src.world_size,
                       num_samples)


__all__ = ["BuildConfig", "ClipDataset", "InceptionI3d", "SynthConfig", "TrainConfig", "build", "clip_dataset",
           "contact_sheet", "evaluate", "load_init", "predict", "synth", "to_model_input", "train"]
