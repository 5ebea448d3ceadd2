"""The Python API: what the `wlasl-shards` commands do, as functions that return their results.

    synth(output, **options)                 -> summary dict          (`wlasl-shards synth`)
    build(source, output, **options)         -> the index (dataset.json's dict)   (`build`)
    merge(output)                            -> the index of a partitioned build  (`merge`)
    inspect_shards(shards, **options)        -> an Inspection (summary, pictures, mismatches)  (`inspect`)
    fit(shards, run_dir, **options)          -> report.json's dict + "history" (metrics.jsonl)  (`train`)
    evaluate(checkpoint, shards, **options)  -> metrics dict          (`evaluate`)
    predict(checkpoint, videos, **options)   -> one dict per video    (`predict`)
    features(checkpoint, shards, out, **options) -> features.json's dict  (`features`)
    contact_sheet(shards, samples=...)       -> PIL image             (`inspect --sheet`)
    archs()                                  -> one dict per model arch (`archs`)
    build_model(arch, num_classes, ...)      -> a freshly initialised model of the registry (`train --arch`)

Options are the fields of the commands' config dataclasses (`SynthConfig`, `BuildConfig`,
`InspectConfig`, `TrainConfig`, `EvaluateConfig`, `PredictConfig`, `FeaturesConfig`), as keyword
arguments or as a ready config; an unknown keyword is a TypeError naming it, a bad value the config's
ValueError. The defaults are the dataclasses' own, which the commands' options show too. The functions
write what the commands write (videos, shards, checkpoints, report.json, ...): the files are the record,
the return values are for the caller. The CLI is a layer of option parsing and printing over these.

For a training loop of one's own: `clip_dataset` (a torch IterableDataset of `(clip, label)` with
the trainer's train or eval transform), `to_model_input` (uint8 clips -> I3D's float input) and
`InceptionI3d` (+ `load_init` for Kinetics-400 weights, or any arch's published weights); `build_model`
for any arch of `wlasl_shards.train.models` (its `model_input` normalises uint8 clips for it).

This module sits beside the CLI, above both stages: it may import `preprocess`, `train` and
`inspect`; nothing in the package imports it but the CLI. `import wlasl_shards` exposes its names
lazily, so importing the package does not import torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from PIL import Image

from wlasl_shards import inspect as insp
from wlasl_shards import storage
from wlasl_shards.preprocess import build as build_mod
from wlasl_shards.preprocess import synth as synth_mod
from wlasl_shards.preprocess.build import BuildConfig
from wlasl_shards.preprocess.synth import SynthConfig

if TYPE_CHECKING:
    from wlasl_shards.train.evaluate import EvaluateConfig
    from wlasl_shards.train.features import FeaturesConfig
    from wlasl_shards.train.loader import ClipDataset
    from wlasl_shards.train.loop import TrainConfig
    from wlasl_shards.train.predict import PredictConfig

# Stage 2 imports torch (seconds): its modules are imported when a stage-2 function or name is first
# used, so that `wlasl-shards build`, `synth` and `inspect`, which call this module, do not pay for it.
_STAGE2 = {
    "TrainConfig": "loop", "EvaluateConfig": "evaluate", "PredictConfig": "predict", "FeaturesConfig": "features",
    "ClipDataset": "loader", "InceptionI3d": "models", "load_init": "models", "to_model_input": "transforms",
}


def _stage2(module: str) -> Any:
    return importlib.import_module(f"wlasl_shards.train.{module}")


def __getattr__(name: str) -> Any:
    if name in _STAGE2:
        return getattr(_stage2(_STAGE2[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def _config_or_args(cls: type[C], caller: str, args: tuple, fields: tuple[str, ...], options: dict[str, Any]) -> C:
    """`cls` for a call `caller(*args, **options)` whose positional arguments fill `fields` (paths), or
    `caller(config, **options)` with a whole `cls` first (then the other arguments belong in the config)."""
    first, rest = args[0], dict(zip(fields[1:], args[1:]))
    if isinstance(first, cls):
        extra = [name for name, value in rest.items() if value is not None]
        if extra:
            raise TypeError(f"{caller}() got a {cls.__name__} and {extra[0]}: set {extra[0]} in the config "
                            f"(or as an option)")
        return _config(cls, caller, first, {}, options)
    missing = [name for name, value in rest.items() if value is None]
    if missing:
        raise TypeError(f"{caller}() needs {missing[0]}: {caller}({', '.join(fields)}, **options)")
    given = {fields[0]: first, **rest}
    return _config(cls, caller, None, {k: os.fspath(v) if isinstance(v, (str, os.PathLike)) else v
                                       for k, v in given.items()}, options)


# ------------------------------------------------------------------------------------- stage 1


def synth(output: PathLike, config: SynthConfig | None = None, *, progress: bool = True,
          **options: Any) -> dict[str, Any]:
    """Write a synthetic dataset in the WLASL layout into `output` (`wlasl-shards synth`).

    Args:
        output: directory to write (created; files of the same names are replaced).
        config: a SynthConfig to start from (default: SynthConfig()).
        progress: tqdm bar on stderr.
        **options: SynthConfig fields, e.g. classes, videos_per_class, sizes=((320, 240),), min_frames,
            max_frames, seed, workers.

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
        output: directory (or s3:// URL) for the shards and dataset.json (required unless `source` is a
            BuildConfig).
        **options: BuildConfig fields, e.g. subset="100", size, fps, crop, codec, shard_size (bytes),
            workers, overwrite, partition and partitions, progress.

    Returns:
        The index, equal to the dataset.json written to `output`: format, params, classes (index ->
        gloss), per split the shards with sample/frame/byte counts and sha256, totals, failed, missing.
        With partitions > 1, the partial index of this partition unless it finished the build
        (format `build.PART_FORMAT`).

    Raises:
        TypeError: an unknown option. ValueError: a bad option value. SourceError: unusable source
        metadata (nothing written). BuildError: `output` holds another build, or too many videos in
        a row failed.
    """
    cfg = _config_or_args(BuildConfig, "build", (source, output), ("source", "output"), options)
    return build_mod.build(cfg)


def merge(output: PathLike) -> dict[str, Any]:
    """Write `output`/dataset.json from the partial indexes of `build(..., partitions=N)` runs
    (`wlasl-shards merge`); returns the index. BuildError names the partitions still missing
    (nothing is written then)."""
    return build_mod.merge(os.fspath(output))


@dataclasses.dataclass(frozen=True)
class InspectConfig:
    """Options of `wlasl-shards inspect`."""

    shards: str  # dataset directory or its dataset.json, a path or URL
    verify: bool = False  # re-hash every shard against dataset.json
    sheet: str | None = None  # write a contact sheet PNG here
    gif: str | None = None  # write an animated GIF of the samples, tiled, with their glosses here
    samples: int = 8  # samples on the sheet / in the GIF (of each split with split "all")
    split: str | None = None  # train | val | test | all for the sheet / GIF; None: the first non-empty split
    gif_fps: float = 10.0  # GIF frame rate (at most 50); clips play at their real speed
    gif_size: int = 128  # GIF tile side in pixels, 16..512

    def check(self) -> None:
        """Raise ValueError naming the first bad option."""
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if not 16 <= self.gif_size <= 512:
            raise ValueError(f"gif_size must be in 16..512, got {self.gif_size}")
        insp.gif_delay(self.gif_fps)  # its ValueError names a bad rate


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What `inspect_shards` found and wrote."""

    index: dict  # dataset.json
    summary: str  # a table of the dataset per split
    shards: int  # shards listed in dataset.json
    samples: int  # samples drawn on the sheet / in the GIF (0 without either)
    skipped: insp.Skipped  # bad samples passed over while picking and drawing them (count, first reasons)
    gif_frames: int  # frames of the GIF (0 without one)
    gif_fps: float  # the rate the GIF's 1/100 s frame delays give (0 without one)
    mismatches: list  # verify's insp.Mismatch list ([] without verify)


def inspect_shards(shards: PathLike | InspectConfig, **options: Any) -> Inspection:
    """Summarise a built dataset, and with the options draw a contact sheet or GIF and verify the
    shards' checksums (`wlasl-shards inspect`).

    Raises:
        TypeError: an unknown option. ValueError: a bad option, an unreadable dataset.json or samples
        (OSError for some storage failures); nothing is drawn after a bad option.
    """
    cfg = _config_or_args(InspectConfig, "inspect_shards", (shards,), ("shards",), options)
    cfg.check()  # a bad --gif-fps fails before anything is read
    index = storage.load_index(cfg.shards)
    root = storage.dataset_root(cfg.shards)
    skipped = insp.Skipped()
    picked = []
    if cfg.sheet is not None or cfg.gif is not None:
        picked = list(insp.first_samples(root, index, cfg.samples, cfg.split, skipped=skipped))
    picked_skips = skipped.count
    if cfg.sheet is not None:
        insp.save_image(insp.contact_sheet(picked, skipped=skipped), cfg.sheet)
    frames: list = []
    if cfg.gif is not None:
        # Samples whose frames do not decode were counted by the sheet already, when there is one.
        gif_skips = insp.Skipped() if cfg.sheet is not None else skipped
        frames = insp.gif_frames(picked, float(index["params"]["fps"]), fps=cfg.gif_fps, thumb=cfg.gif_size,
                                 skipped=gif_skips)
        insp.save_gif(frames, Path(cfg.gif), cfg.gif_fps)
    drawn = len(picked) - (skipped.count - picked_skips)
    return Inspection(index=index, summary=insp.summary(index),
                      shards=sum(len(s["shards"]) for s in index["splits"].values()), samples=drawn,
                      skipped=skipped,
                      gif_frames=len(frames), gif_fps=100 / insp.gif_delay(cfg.gif_fps) if frames else 0.0,
                      mismatches=insp.verify(root, index) if cfg.verify else [])


def contact_sheet(shards: PathLike, samples: int = 8, split: str | None = None, frames_per_row: int = 8,
                  thumb: int = 96) -> Image.Image:
    """A contact sheet of the first `samples` samples of `split` (`wlasl-shards inspect --sheet`): one
    row per sample, `frames_per_row` frames evenly spaced over time, the gloss on the left. Bad samples
    are skipped, as the trainer skips them (`inspect_shards` counts them).

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


# ------------------------------------------------------------------------------------- stage 2


def fit(shards: PathLike | TrainConfig, run_dir: PathLike | None = None, **options: Any) -> dict[str, Any]:
    """Train a model (I3D by default) on built shards: validation every epoch, the test split once with
    the best checkpoint (`wlasl-shards train`).

    Args:
        shards: dataset directory (or its dataset.json; a path or an s3:// / gs:// / https:// URL)
            written by `build`; or a whole TrainConfig (then `options` override its fields).
        run_dir: where config.json, metrics.jsonl, best.pt, last.pt, report.json and curves.png go
            (required unless `shards` is a TrainConfig); a new run needs an empty or missing directory.
        **options: TrainConfig fields, e.g. epochs, batch_size, accumulate, optimizer, lr, clip_len,
            crop_size, num_workers, worker_mode ("process" or "thread"), device, init="rgb_imagenet.pt",
            resume, max_steps, progress; WLASL's protocol: train_splits=("train", "val"), pad="first-or-last";
            fixed-length models: frame_stride, eval_clips.

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
    loop, records = _stage2("loop"), _stage2("records")
    cfg = _config_or_args(loop.TrainConfig, "fit", (shards, run_dir), ("shards", "run_dir"), options)
    report = loop.train(cfg)
    # The loop returns the report only; the per-step and per-epoch figures are in metrics.jsonl.
    return {**report, "history": records.read_metrics(Path(cfg.run_dir) / records.METRICS_FILE)}


def evaluate(checkpoint: PathLike | EvaluateConfig, shards: PathLike | None = None, **options: Any) -> dict[str, Any]:
    """Top-1/5/10 and per-class accuracy of a checkpoint on one split (`wlasl-shards evaluate`).

    WLASL's protocol: every frame of each video, centre crop at the checkpoint's crop size, logits
    reduced over time (max, or the checkpoint's eval_reduce; `reduce` overrides it); with the
    checkpoint's frame_stride and eval_clips (K windows, logits averaged), which the options override.

    Args:
        checkpoint: a checkpoint written by `train` (RUN_DIR/best.pt or last.pt); or a whole
            EvaluateConfig (then `options` override its fields).
        shards: dataset directory or dataset.json (path or URL) with the checkpoint's class list.
        **options: EvaluateConfig fields: split, device, batch_size, num_workers, worker_mode, reduce,
            frame_stride, eval_clips, output (also write the metrics there as JSON, and eval_<split>_confusions.png and
            eval_<split>_per_class.csv beside it, as the command does), progress.

    Returns:
        {"split", "checkpoint", "shards", "reduce", "frame_stride", "eval_clips", "count", "loss", "top1",
        "top5", "top10", "per_class_mean", "per_class", "confusions", "skipped"}; accuracies are fractions
        in [0, 1]. The same dict the command prints as JSON.

    Raises:
        TypeError: an unknown option. ValueError: a missing or foreign checkpoint, a dataset with other
        classes, a bad option.
    """
    evaluate_mod = _stage2("evaluate")
    cfg = _config_or_args(evaluate_mod.EvaluateConfig, "evaluate", (checkpoint, shards), ("checkpoint", "shards"),
                          options)
    return evaluate_mod.evaluate(cfg)


def predict(checkpoint: PathLike | PredictConfig, videos: PathLike | Sequence[PathLike] | None = None,
            **options: Any) -> list[dict[str, Any]]:
    """The top-k glosses of video files, preprocessed as the checkpoint's shards were (`wlasl-shards predict`).

    Args:
        checkpoint: a checkpoint written by `train`; or a whole PredictConfig (then `options` override
            its fields).
        videos: one video file or a sequence of them (any container and codec ffmpeg reads).
        **options: PredictConfig fields: top_k (at most the class count), device, bbox (the signer's
            box (x1, y1, x2, y2) in the videos' pixels, for checkpoints trained on bbox crops; None crops
            the centre square), frame_stride and eval_clips (None: the checkpoint's), progress.

    Returns:
        One dict per video, in order: {"video", "frames" (T after resampling), "crop",
        "top": [{"gloss", "label", "probability"}] (probabilities descending, softmax over all
        classes of the time-reduced logits)}.

    Raises:
        TypeError: an unknown option. ValueError: a file ffmpeg cannot read, a bad option, a foreign
        checkpoint.
    """
    if videos is not None:
        videos = (videos,) if isinstance(videos, (str, os.PathLike)) else tuple(videos)
        videos = tuple(os.fspath(v) for v in videos)
    if "bbox" in options and options["bbox"] is not None:
        options = {**options, "bbox": tuple(options["bbox"])}
    predict_mod = _stage2("predict")
    cfg = _config_or_args(predict_mod.PredictConfig, "predict", (checkpoint, videos), ("checkpoint", "videos"),
                          options)
    return predict_mod.predict(cfg)


def features(checkpoint: PathLike | FeaturesConfig, shards: PathLike | None = None, out: PathLike | None = None,
             **options: Any) -> dict[str, Any]:
    """Per-video I3D features of the shards, written as shards under `out` (`wlasl-shards features`).

    Args:
        checkpoint: a checkpoint of `train` or a Kinetics-layout I3D state_dict (rgb_imagenet.pt); or a
            whole FeaturesConfig (then `options` override its fields).
        shards: dataset directory or dataset.json (path or URL).
        out: output directory: one shard per input shard (same names and keys) and features.json.
        **options: FeaturesConfig fields: splits, device, batch_size, num_workers, crop_size, overwrite,
            progress.

    Returns:
        features.json's dict: per split the shards written, sample and skipped counts.

    Raises:
        TypeError: an unknown option. ValueError: bad options, files or settings. DataError: reading the
        input failed (finished shards are kept: call again to go on).
    """
    if "splits" in options:
        options = {**options, "splits": tuple(options["splits"])}
    features_mod = _stage2("features")
    cfg = _config_or_args(features_mod.FeaturesConfig, "features", (checkpoint, shards, out),
                          ("checkpoint", "shards", "out"), options)
    return features_mod.extract(cfg)


# ------------------------------------------------------------------------------------- your own loop


def archs() -> list[dict[str, Any]]:
    """The model registry, one dict per arch: name, family, frames / crop (exact, or None with the least
    that works), input (convention name, mean, std), params (400 classes), summary, kinetics_top1."""
    models = _stage2("models")
    rows = []
    for name, arch in models.ARCHS.items():
        rows.append({"name": name, "family": arch.family, "frames": arch.frames, "min_frames": arch.min_frames,
                     "crop": arch.crop, "min_crop": arch.min_crop, "native_frames": arch.native_frames,
                     "native_crop": arch.native_crop, "input": arch.spec.as_config(),
                     "params": models.param_count(name), "summary": arch.summary,
                     "kinetics_top1": arch.kinetics_top1, "extra": arch.extra})
    return rows


def build_model(arch: str, num_classes: int, *, dropout: float | None = None, drop_path: float = 0.0) -> Any:
    """A freshly initialised `arch` model (see `wlasl-shards archs`) with a `num_classes` head; nothing is
    downloaded. It maps (B, 3, T, H, W) float input, normalised by `models.model_input(clips, spec)` with
    the arch's spec, to logits (B, num_classes, T'). `load_init(model, file_or_dir)` loads published weights."""
    return _stage2("models").build(arch, num_classes, dropout=dropout, drop_path=drop_path)


def clip_dataset(shards: PathLike, split: str = "train", *, train: bool | None = None, clip_len: int = 64,
                 crop_size: int = 224, flip: bool = True, seed: int = 0, epoch: int = 0, rank: int | None = None,
                 world_size: int | None = None, shuffle_buffer: int = 100, eval_min_frames: int | None = None,
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
        eval_min_frames: eval clips shorter than this are padded; None: LoaderConfig's (I3D needs 9).
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
    data, loader = _stage2("data"), _stage2("loader")
    eval_min = {} if eval_min_frames is None else {"eval_min_frames": eval_min_frames}
    cfg = data.LoaderConfig(clip_len=clip_len, crop_size=crop_size, flip=flip, seed=seed,
                            shuffle_buffer=shuffle_buffer, **eval_min,
                            max_consecutive_errors=max_consecutive_errors)
    src = loader.load_split(shards, split, cfg, rank, world_size, epoch=epoch, train=train)
    # Training: equal on every rank, the rest of total is dropped.
    num_samples = max(1, src.total // src.world_size) if train else src.rank_samples()
    return loader.ClipDataset(src.parts, cfg, list(src.index["classes"]), train, epoch, src.rank, src.world_size,
                              num_samples)


# The stage-2 names in it come from __getattr__ (ruff cannot see them: F822 is ignored for this file).
__all__ = ["BuildConfig", "ClipDataset", "EvaluateConfig", "FeaturesConfig", "InceptionI3d", "InspectConfig",
           "Inspection", "PredictConfig", "SynthConfig", "TrainConfig", "archs", "build", "build_model", "clip_dataset",
           "contact_sheet", "evaluate", "features", "fit", "inspect_shards", "load_init", "merge", "predict", "synth",
           "to_model_input"]
