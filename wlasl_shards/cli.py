"""The `wlasl-shards` command: a thin click layer over `wlasl_shards.api`.

Each command parses its options into the api function's config (the options' defaults are the config
dataclasses' own, read by `_ConfigOption`), makes one api call, and prints the result.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from wlasl_shards import __version__

log = logging.getLogger("wlasl_shards")

# Where each command's config dataclass lives. The modules are imported only when an option's default is
# needed (that command's parsing or --help), so `wlasl-shards build` does not import the trainer (torch).
CONFIGS = {
    "synth": "wlasl_shards.preprocess.synth:SynthConfig",
    "build": "wlasl_shards.preprocess.build:BuildConfig",
    "inspect": "wlasl_shards.api:InspectConfig",
    "train": "wlasl_shards.train.loop:TrainConfig",
    "evaluate": "wlasl_shards.train.evaluate:EvaluateConfig",
    "predict": "wlasl_shards.train.predict:PredictConfig",
    "features": "wlasl_shards.train.features:FeaturesConfig",
}

WORKERS_HELP = "0 = none: the work runs in this process (the same in every command)."


def config_default(command: str, field: str) -> Any:
    """The default of `field` in `command`'s config dataclass."""
    module, name = CONFIGS[command].split(":")
    cls = getattr(importlib.import_module(module), name)
    for f in dataclasses.fields(cls):
        if f.name == field:
            if f.default is dataclasses.MISSING:
                raise ValueError(f"{name}.{field} has no default")
            return f.default
    raise ValueError(f"{name} has no field {field!r}")


class _ConfigOption(click.Option):
    """A click option whose default is a config dataclass field's (optionally converted for display and
    parsing, e.g. bytes -> "128MB"): the dataclass is the one place a default is written."""

    def __init__(self, *args: Any, config: str, field: str | tuple[str, ...] | None = None,
                 convert: Callable[[Any], Any] | None = None, help_from: Callable[[], str] | None = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.config, self.field, self.convert = config, field or self.name, convert
        self.help_from = help_from

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        if self.help_from is not None:  # read when help is shown, so the module is imported only then
            self.help = self.help_from()
        return super().get_help_record(ctx)

    def get_default(self, ctx: click.Context, call: bool = True) -> Any:
        if isinstance(self.field, tuple):  # one option for several fields, e.g. --frames MIN MAX
            value: Any = tuple(config_default(self.config, f) for f in self.field)
        else:
            value = config_default(self.config, self.field)
        return self.convert(value) if self.convert else value


def option(*decls: str, config: str, field: str | tuple[str, ...] | None = None,
           convert: Callable[[Any], Any] | None = None, help_from: Callable[[], str] | None = None,
           **kwargs: Any) -> Callable:
    """click.option with its default from `config`'s dataclass field (the option's name by default);
    `help_from` makes the help text when it is shown (for defaults that live elsewhere)."""
    return click.option(*decls, cls=_ConfigOption, config=config, field=field, convert=convert,
                        help_from=help_from, **kwargs)


def _arch_help() -> str:
    """--arch's help: the registry's names (imported only when help is shown)."""
    from wlasl_shards.train.models import NAMES

    return f"Model: {', '.join(NAMES)} (`wlasl-shards archs` lists their input)."


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("botocore", "aiobotocore", "s3fs", "fsspec"):  # "Found credentials in ...", request chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(message: str) -> None:
    """A user error: one line on stderr, exit status 2, no traceback."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="wlasl-shards")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """WLASL videos -> WebDataset shards -> a streaming I3D trainer.

    New here? `wlasl-shards demo demo` runs every step on a small synthetic dataset, printing each
    step's command as it goes.
    """
    _setup_logging(verbose)


# -------------------------------------------------------------------------------------------- synth


def _max_width(sizes: tuple[tuple[int, int], ...]) -> int:
    return max(w for w, _ in sizes)


@main.command()
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
@option("--classes", config="synth", type=click.IntRange(min=1), help="Number of glosses.")
@option("--videos-per-class", config="synth", type=click.IntRange(min=1), help="Videos per gloss (split ~8/2/2).")
@option("--seed", config="synth", type=int, help="Same seed, same bytes.")
@option("--max-size", config="synth", field="sizes", convert=_max_width, type=click.IntRange(min=64),
        help="Drop resolutions wider than this (the default mix goes from 320x240 to 1280x720).")
@option("--frames", "frame_range", config="synth", field=("min_frames", "max_frames"),
        type=(click.IntRange(min=1), click.IntRange(min=1)), help="Min and max frames per video.")
@option("--workers", config="synth", type=click.IntRange(min=0), show_default="all cores",
        help=f"Processes writing videos; {WORKERS_HELP}")
@option("--x264-preset", config="synth", type=str,
        help="x264 preset, ultrafast..veryslow: ultrafast writes fastest; medium (ffmpeg's default) "
             "gives streams like web video's (CABAC, deblocking), for loader benchmarks.")
def synth(output: Path, classes: int, videos_per_class: int, seed: int, max_size: int,
          frame_range: tuple[int, int], workers: int | None, x264_preset: str) -> None:
    """Generate a synthetic dataset in the WLASL layout (WLASL_v0.3.json, videos/, nslt, class list).

    Example: wlasl-shards synth demo/wlasl --classes 10
    """
    from wlasl_shards import api

    all_sizes = config_default("synth", "sizes")
    sizes = tuple(s for s in all_sizes if s[0] <= max_size)
    if not sizes:
        _fail(f"--max-size {max_size} excludes every resolution ({all_sizes})")
    if frame_range[0] > frame_range[1]:
        _fail(f"--frames min must be <= max, got {frame_range[0]} {frame_range[1]}")
    try:
        cfg = api.SynthConfig(classes=classes, videos_per_class=videos_per_class, seed=seed, sizes=sizes,
                              min_frames=frame_range[0], max_frames=frame_range[1], x264_preset=x264_preset,
                              workers=workers)
        cfg.check()
        result = api.synth(output, cfg)
    except ValueError as e:
        _fail(str(e))
    click.echo(f"wrote {output}: {result}")


# -------------------------------------------------------------------------------------------- build


def format_bytes(n: int) -> str:
    """134217728 -> '128MB', the inverse of `parse_bytes` for whole binary units."""
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path())  # a str: Path would fold s3:// into s3:/
@option("--subset", config="build", type=click.Choice(["100", "300", "1000", "2000", "all"]),
        help="WLASL-N: the first N glosses.")
@click.option("--split-file", type=click.Path(dir_okay=False, path_type=Path),
              help="An nslt_<N>.json deciding membership and splits; wins over SOURCE/splits/WLASL<N>_*.json, "
                   "then SOURCE/nslt_<N>.json, then WLASL_v0.3.json's split fields.")
@option("--fps", config="build", type=float, help="Output frame rate.")
@option("--crop", config="build", type=click.Choice(["auto", "bbox", "center", "none"]),
        help="auto = bbox when the source has signer boxes, else center.")
@option("--size", config="build", type=int, help="Output side (none: shorter side).")
@option("--bbox-margin", config="build", type=float, help="bbox crop: grow the box by this fraction.")
@option("--codec", config="build", type=click.Choice(["jpeg", "npy"]), help="Frame encoding.")
@option("--jpeg-qscale", config="build", type=int, help="JPEG quantiser scale, 2 (best) .. 31.")
@click.option("--apply-frame-range", is_flag=True,
              help="Cut [frame_start, frame_end] (raw downloads; the Kaggle copy is already cut).")
@option("--min-frames", config="build", type=int, help="Shorter videos are recorded as failed.")
@option("--max-frames", config="build", type=int,
        help="Longer videos (after resampling) are recorded as failed ('too long'): no unbounded samples.")
@option("--shard-size", config="build", convert=format_bytes, type=str,
        help="Shard size bound, e.g. 128MB, 1GB, 500000.")
@option("--seed", config="build", type=int, help="Sample shuffle seed.")
@option("--timeout", config="build", type=float, help="Seconds per video before it is given up.")
@option("--workers", config="build", type=click.IntRange(min=0), show_default="all cores",
        help=f"Processes converting videos; {WORKERS_HELP}")
@click.option("--overwrite", is_flag=True, help="Replace an OUTPUT built with other options.")
@click.option("--partition", default=None, metavar="I/N",
              help="Build only share I (0-based) of N into OUTPUT, e.g. $SLURM_ARRAY_TASK_ID/8 or "
                   "$JOB_COMPLETION_INDEX/8; the last share to finish writes dataset.json.")
@click.option("--staging", type=click.Path(file_okay=False), default=None,
              help="OUTPUT s3://...: local directory for the shard being written and the journals "
                   "[default: a folder under the temp directory named from OUTPUT].")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def build(source: Path, output: str, shard_size: str, no_progress: bool, split_file: Path | None,
          partition: str | None, workers: int | None, **options) -> None:
    """Convert a WLASL-layout dataset or a manifest into per-split WebDataset shards + dataset.json.

    OUTPUT is a directory or s3://bucket/prefix (credentials from the AWS chain; AWS_ENDPOINT_URL for
    S3-compatible stores): each shard is uploaded when complete, dataset.json last. Re-running the same
    command after an interruption finishes only what is missing, from any machine. With
    --partition I/N, N runs (machines, array tasks) share the work and the same OUTPUT.

    Example: wlasl-shards build demo/wlasl demo/shards --subset 100
    """
    from wlasl_shards import api, storage
    from wlasl_shards.preprocess.build import PART_FORMAT, BuildError, SourceError, parse_partition

    try:
        part, parts = parse_partition(partition) if partition is not None else (0, 1)
        index = api.build(str(source), output, shard_size=parse_bytes(shard_size),
                          split_file=str(split_file) if split_file else None, progress=not no_progress,
                          partition=part, partitions=parts, workers=workers, **options)
    except (ValueError, SourceError, BuildError) as e:
        _fail(str(e))
    written = storage.join(output, "dataset.json")
    if index["format"] == PART_FORMAT:
        records = [r for s in index["splits"].values() for r in s["shards"]]
        click.echo(f"partition {part}/{parts}: {sum(r['samples'] for r in records)} samples in {len(records)} "
                   f"shards; the last partition to finish writes {written} "
                   f"(or run: wlasl-shards merge {output})")
        return
    click.echo(_summary(index))
    click.echo(f"wrote {written}")


def _summary(index: dict) -> str:
    from wlasl_shards.inspect import summary

    return summary(index)


@main.command()
@click.argument("output", type=click.Path(file_okay=False))  # a str: Path would fold s3:// into s3:/
def merge(output: str) -> None:
    """Write OUTPUT/dataset.json (a directory or s3://bucket/prefix) from the partial indexes of
    `build --partition I/N` runs.

    The last partition to finish does this itself; run it when that one could not. When partitions
    are missing it names them and exits 2 without writing anything.

    Example: wlasl-shards merge /shared/wlasl-shards
    """
    from wlasl_shards import api, storage
    from wlasl_shards.preprocess.build import BuildError

    try:
        index = api.merge(output)
    except (ValueError, BuildError) as e:
        _fail(str(e))
    click.echo(_summary(index))
    click.echo(f"wrote {storage.join(output, 'dataset.json')}")


def parse_bytes(text: str, option: str = "--shard-size") -> int:
    """'128MB' -> 134217728 (binary units: KB = 1024); a bare number is bytes. `option` names it in errors."""
    units = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "M": 2**20, "MB": 2**20, "G": 2**30, "GB": 2**30}
    s = text.strip().upper()
    num = s.rstrip("KMGB")
    unit = s[len(num):]
    try:
        value = float(num) * units[unit]
    except (ValueError, KeyError):
        raise ValueError(f"{option} must look like 128MB, 1GB or 500000, got {text!r}") from None
    return int(value)


# ------------------------------------------------------------------------------------------ inspect


@main.command()
@click.argument("shards")
@click.option("--verify", is_flag=True, help="Re-hash every shard; exit 1 on any mismatch.")
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), help="Write a contact sheet PNG.")
@click.option("--gif", type=click.Path(dir_okay=False, path_type=Path),
              help="Write an animated GIF of the samples, tiled, with their glosses.")
@option("--samples", config="inspect", type=click.IntRange(min=1), help="Samples on the sheet / in the GIF.")
@click.option("--split", default=None, type=click.Choice(["train", "val", "test", "all"]),
              help="Split for the sheet / GIF [default: the first non-empty]; all = --samples of each split.")
@option("--gif-fps", config="inspect", type=float, help="GIF frame rate; clips play at their real speed.")
@option("--gif-size", config="inspect", type=click.IntRange(16, 512), help="GIF tile side in pixels.")
def inspect(shards: str, verify: bool, sheet: Path | None, gif: Path | None, samples: int, split: str | None,
            gif_fps: float, gif_size: int) -> None:
    """Summarise a built dataset, verify its checksums, or draw a contact sheet or GIF of samples.

    Example: wlasl-shards inspect demo/shards --verify --sheet sheet.png --gif samples.gif
    """
    from wlasl_shards import api

    try:
        found = api.inspect_shards(shards, verify=verify, sheet=str(sheet) if sheet else None,
                                   gif=str(gif) if gif else None, samples=samples, split=split, gif_fps=gif_fps,
                                   gif_size=gif_size)
    except (ValueError, OSError) as e:
        _fail(str(e))
    click.echo(found.summary)
    if found.skipped.count:
        click.echo(found.skipped.line(), err=True)
    if sheet is not None:
        click.echo(f"wrote {sheet} ({found.samples} samples)")
    if gif is not None:
        click.echo(f"wrote {gif} ({found.samples} samples, {found.gif_frames} frames at {found.gif_fps:g} fps)")
    if verify:
        for m in found.mismatches:
            click.echo(f"MISMATCH {m.name}: {m.problem}", err=True)
        click.echo(f"verified {found.shards} shards: {len(found.mismatches)} mismatches")
        if found.mismatches:
            sys.exit(1)


# -------------------------------------------------------------------------------------------- train


DEVICE = click.Choice(["auto", "cpu", "cuda"])
CACHE_DIR_HELP = "Remote SHARDS: keep each shard (sha256-checked) and dataset.json here; later epochs read it."
CACHE_LIMIT_HELP = "Bytes --cache-dir may hold, e.g. 20GB (least recently used shards go) [default: no limit]."


def _cache_limit(options: dict) -> dict:
    """`options` with --cache-limit's text as bytes (ValueError naming the option for bad text)."""
    text = options.get("cache_limit")
    return {**options, "cache_limit": None if text is None else parse_bytes(text, "--cache-limit")}
WORKER_MODE = click.Choice(["process", "thread"])
EVAL_STRIDE_HELP = "Every S-th frame [default: the checkpoint's]."
EVAL_CLIPS_HELP = "0: every (S-th) frame; K: K windows of the checkpoint's --frames, averaged [default: its own]."


def _split_names(ctx: click.Context, param: click.Parameter, text: str) -> tuple[str, ...]:
    """--train-splits' comma-separated text -> split names (the dataset's are checked by `train`)."""
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise click.BadParameter(f"empty split name in {text!r}: give names separated by commas, e.g. train,val")
    return names
RECIPE_HELP = "[default: the arch's recipe: `wlasl-shards archs`]"


@main.command()
@click.argument("shards")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@option("--epochs", config="train", type=int, help="Passes over the train split.")
@option("--batch-size", config="train", type=int, help="Clips per forward pass (per GPU).")
@option("--accumulate", config="train", type=int, help="Forward passes per optimiser step.")
@option("--optimizer", config="train", type=click.Choice(["sgd", "adam", "adamw"]),
        help="sgd: momentum 0.9 + cosine; adam: + plateau (WLASL's); adamw: + cosine. " + RECIPE_HELP)
@option("--lr", config="train", type=float, help="Learning rate. " + RECIPE_HELP)
@option("--weight-decay", config="train", type=float, help="Weight decay (not on biases and norms, except "
        "I3D's). " + RECIPE_HELP)
@option("--warmup-epochs", config="train", type=float, help="Linear lr warm-up (sgd, adamw). " + RECIPE_HELP)
@option("--layer-decay", config="train", type=float, help="Layer-wise lr decay (ViTs). " + RECIPE_HELP)
@option("--drop-path", config="train", type=float, help="Stochastic depth (MViT, Swin3D, VideoMAE). " + RECIPE_HELP)
@option("--loss", config="train", type=click.Choice(["ce", "bce"]),
        help="ce: cross-entropy of time-reduced logits; bce: WLASL's per-frame loc + cls.")
@option("--label-smoothing", config="train", type=float, help=RECIPE_HELP)
@option("--frames", "clip_len", config="train", type=int, help="Frames per training clip. " + RECIPE_HELP)
@option("--frame-stride", config="train", type=click.IntRange(min=1),
        help="Every S-th frame: training windows span (frames - 1) x S + 1 frames; evaluation uses the same S. "
             + RECIPE_HELP)
@option("--eval-clips", config="train", type=click.IntRange(min=0),
        help="0: evaluate on every (S-th) frame, WLASL's; K: K uniformly spaced windows of --frames, logits averaged. "
             + RECIPE_HELP)
@option("--pad", config="train", type=click.Choice(["last", "first-or-last"]),
        help="Short training clips: pad with the last frame, or first-or-last at random (WLASL's). Eval pads with "
             "the last frame.")
@option("--train-splits", config="train", type=str, convert=",".join, callback=_split_names,
        help="Comma-separated splits to train on; train,val is WLASL's (val then is not held out). Selection: val.")
@option("--crop-size", config="train", type=int, help="Random crop (train), centre crop (eval).")
@option("--flip/--no-flip", config="train", help="Random horizontal flips.")
@option("--workers", "num_workers", config="train", type=click.IntRange(min=0),
        help=f"Loader workers per GPU; {WORKERS_HELP}")
@option("--worker-mode", config="train", type=WORKER_MODE,
        help="Loader workers as processes, or as threads of the trainer (same batches, less CPU per clip).")
@option("--device", config="train", type=DEVICE)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@option("--seed", config="train", type=int)
@option("--arch", config="train", type=str, help_from=lambda: _arch_help())
@option("--channels", config="train", type=click.Choice(["rgb", "bgr"]),
        help="Channel order the model sees; bgr for WLASL's released I3D weights (OpenCV frames). Stored in the "
             "checkpoint: evaluate, predict and features follow it.")
@click.option("--init", type=click.Path(), help="The arch's published weights (a .pth / .pt / .safetensors file, a "
              "save_pretrained dir) or a checkpoint of ours.")
@option("--dropout", config="train", type=float, help="Before the head [default: the arch's].")
@option("--eval-reduce", config="train", type=click.Choice(["max", "mean"]),
        help="Logits over time [default: the arch's: I3D max, S3D mean].")
@option("--eval-batch-size", config="train", type=click.IntRange(min=1),
        help="Val/test videos per forward pass, all of one frame count (exact, as 1).")
@option("--eval-every", config="train", type=click.IntRange(min=1),
        help="Validate every N epochs and after the last; best.pt is chosen among validated epochs.")
@option("--precise-bn-batches", config="train", type=int,
        help="Train batches to re-estimate BatchNorm statistics before each evaluation; 0 = off.")
@click.option("--tensorboard", is_flag=True, help="Also log to RUN_DIR/tensorboard.")
@click.option("--resume", is_flag=True, help="Continue the run in RUN_DIR from last.pt.")
@option("--checkpoint-every", config="train", type=click.IntRange(min=1),
        help="Also save last.pt every N optimiser steps inside an epoch (--resume continues there).")
@option("--max-steps", config="train", type=int, help="Stop after this many optimiser steps.")
@option("--shard-errors", config="train", type=click.Choice(["skip", "stop"]),
        help="A shard still unreadable after retries (storage errors): skip its rest and count it, or stop.")
@option("--cache-dir", config="train", type=click.Path(file_okay=False), help=CACHE_DIR_HELP)
@option("--cache-limit", config="train", type=str, help=CACHE_LIMIT_HELP)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train(shards: str, run_dir: Path, compile_: bool, no_progress: bool, **options) -> None:
    """Train a model (I3D by default, --arch) on the shards written by `build`; checkpoints, metrics and a
    report go to RUN_DIR.

    Example: wlasl-shards train demo/shards runs/i3d --init rgb_imagenet.pt

    Another arch: wlasl-shards train demo/shards runs/r3d --arch r3d_18 --frames 16 --crop-size 112
    """
    from wlasl_shards import api, storage
    from wlasl_shards.train.data import DataError

    try:
        result = api.fit(str(shards), str(run_dir), compile=compile_, progress=not no_progress,
                         **_cache_limit(options))
    except (ValueError, DataError, storage.StorageError) as e:  # bad options, data, a full disk: RUN_DIR keeps
        _fail(str(e))  # every finished epoch
    except KeyboardInterrupt:  # checkpoints are written atomically: the last one is whole
        click.echo(f"interrupted; resume with: wlasl-shards train {shards} {run_dir} --resume (and the same "
                   f"options)", err=True)
        sys.exit(130)
    if result:
        click.echo(json.dumps(result.get("test", result), indent=1))


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("shards")
@option("--split", config="evaluate", type=click.Choice(["train", "val", "test"]))
@option("--device", config="evaluate", type=DEVICE)
@option("--batch-size", config="evaluate", type=click.IntRange(min=1),
        help="Videos per forward pass, all of one frame count (no padding: the same results as 1, faster).")
@option("--workers", "num_workers", config="evaluate", type=click.IntRange(min=0),
        help=f"Loader workers; {WORKERS_HELP}")
@option("--worker-mode", config="evaluate", type=WORKER_MODE,
        help="Loader workers as processes, or as threads of this process (same results).")
@option("--cache-dir", config="evaluate", type=click.Path(file_okay=False), help=CACHE_DIR_HELP)
@option("--cache-limit", config="evaluate", type=str, help=CACHE_LIMIT_HELP)
@option("--reduce", config="evaluate", type=click.Choice(["max", "mean"]),
        help="Logits over time [default: the checkpoint's].")
@option("--frame-stride", config="evaluate", type=click.IntRange(min=1), help=EVAL_STRIDE_HELP)
@option("--eval-clips", config="evaluate", type=click.IntRange(min=0), help=EVAL_CLIPS_HELP)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (dynamic shapes; same results).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the metrics here [default: eval_<split>.json beside the checkpoint].")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def evaluate(checkpoint: Path, shards: str, split: str, output: Path | None, compile_: bool, no_progress: bool,
             **options) -> None:
    """Top-1/5/10 and per-class accuracy of a checkpoint on one split, as JSON.

    Beside the JSON file: eval_<split>_confusions.png and eval_<split>_per_class.csv.

    Example: wlasl-shards evaluate runs/i3d/best.pt demo/shards --split test
    """
    from wlasl_shards import api, storage
    from wlasl_shards.train.data import DataError

    output = output or checkpoint.parent / f"eval_{split}.json"
    try:
        metrics = api.evaluate(str(checkpoint), shards, split=split, output=str(output), progress=not no_progress,
                               compile=compile_, **_cache_limit(options))
    except (ValueError, DataError, storage.StorageError) as e:
        _fail(str(e))
    click.echo(json.dumps(metrics, indent=1))


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@option("--top-k", config="predict", type=click.IntRange(min=1))
@option("--device", config="predict", type=DEVICE)
@option("--bbox", config="predict", type=(float, float, float, float),
        help="Signer box x1 y1 x2 y2 in the videos' pixels [default: centre crop].")
@option("--frame-stride", config="predict", type=click.IntRange(min=1), help=EVAL_STRIDE_HELP)
@option("--eval-clips", config="predict", type=click.IntRange(min=0), help=EVAL_CLIPS_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def predict(checkpoint: Path, videos: tuple[Path, ...], as_json: bool, no_progress: bool, **options) -> None:
    """Top glosses of each video, preprocessed as the checkpoint's training shards were.

    Example: wlasl-shards predict runs/i3d/best.pt demo/wlasl/videos/00001.mp4
    """
    from wlasl_shards import api

    try:
        results = api.predict(str(checkpoint), [str(v) for v in videos], progress=not no_progress, **options)
    except ValueError as e:
        _fail(str(e))
    if as_json:
        click.echo(json.dumps(results, indent=1))
        return
    for r in results:
        click.echo(f"{r['video']} ({r['frames']} frames)")
        for t in r["top"]:
            click.echo(f"  {t['probability']:6.1%}  {t['gloss']}")


# ----------------------------------------------------------------------------------------- features


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("shards")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", "splits", multiple=True, type=click.Choice(["train", "val", "test"]),
              help="Split to extract, repeatable [default: every split of SHARDS].")
@option("--device", config="features", type=DEVICE)
@option("--batch-size", config="features", type=click.IntRange(min=1),
        help="Videos per forward pass; > 1 pads shorter videos, which changes their features (1 is exact).")
@option("--workers", "num_workers", config="features", type=click.IntRange(min=0),
        help=f"Loader processes; {WORKERS_HELP}")
@option("--cache-dir", config="features", type=click.Path(file_okay=False), help=CACHE_DIR_HELP)
@option("--cache-limit", config="features", type=str, help=CACHE_LIMIT_HELP)
@option("--crop-size", config="features", type=click.IntRange(min=1),
        help="Centre crop [default: the checkpoint's; for a state_dict min(224, frame size)].")
@click.option("--overwrite", is_flag=True, help="Replace features in OUT made with other settings.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def features(checkpoint: Path, shards: str, out: Path, splits: tuple[str, ...], no_progress: bool,
             **options) -> None:
    """Per-video I3D features (Mixed_5c averaged over space: (T', 1024) and the clip mean) as shards.

    CHECKPOINT is a checkpoint of `train` or a Kinetics-layout I3D state_dict (e.g. rgb_imagenet.pt).
    OUT gets one shard per input shard (same names and keys) and features.json; re-running the same
    command after an interruption computes only what is missing.

    Example: wlasl-shards features runs/i3d/best.pt demo/shards demo/features --split test
    """
    from wlasl_shards import api, storage
    from wlasl_shards.train.data import DataError
    from wlasl_shards.train.features import FEATURES_INDEX

    try:
        index = api.features(str(checkpoint), str(shards), str(out), splits=splits, progress=not no_progress,
                             **_cache_limit(options))
    except (ValueError, DataError, storage.StorageError) as e:
        _fail(str(e))
    for split, entry in index["splits"].items():
        click.echo(f"{split}: {entry['samples']} videos in {len(entry['shards'])} shards"
                   + (f", {entry['skipped']} bad samples skipped" if entry["skipped"] else ""))
    click.echo(f"wrote {out / FEATURES_INDEX}")


# --------------------------------------------------------------------------------------------- demo


# The demo's settings: small enough for a CPU in minutes (the README's quick start); "tiny" is for its test.
DEMO_SETTINGS = {
    "small": {
        "synth": ["--max-size", "640"],
        "build": ["--size", "64"],
        "train": ["--epochs", "12", "--frames", "16", "--crop-size", "56", "--batch-size", "4", "--accumulate", "1",
                  "--optimizer", "adam", "--lr", "1e-4", "--dropout", "0", "--workers", "1",
                  "--precise-bn-batches", "5"],
        "evaluate": [],
    },
    "tiny": {
        "synth": ["--classes", "4", "--videos-per-class", "3", "--max-size", "320", "--frames", "12", "20"],
        "build": ["--size", "48"],
        "train": ["--epochs", "2", "--frames", "8", "--crop-size", "40", "--batch-size", "2", "--accumulate", "1",
                  "--optimizer", "adam", "--lr", "1e-4", "--dropout", "0", "--workers", "0",
                  "--precise-bn-batches", "1", "--max-steps", "2"],
        "evaluate": ["--workers", "0"],
    },
}


@main.command()
def archs() -> None:
    """List the model archs `train --arch` builds: input (frames, crop, convention), params, summary.

    Example: wlasl-shards archs
    """
    from wlasl_shards import api

    def size(exact: int | None, least: int) -> str:
        return str(exact) if exact is not None else f">={least}"

    rows = api.archs()
    click.echo(f"{'arch':<15} {'frames':>6} {'crop':>5}  {'input':<42} {'params':>7}  summary")
    for row in rows:
        spec = row["input"]
        convention = spec["name"].removesuffix(".KINETICS400_V1.transforms()")
        if spec["name"] != "[-1, 1]":
            convention += f" mean {', '.join(f'{v:g}' for v in spec['mean'])}"
        frames, crop = size(row["frames"], row["min_frames"]), size(row["crop"], row["min_crop"])
        params = f"{row['params'] / 1e6:.1f}M"
        click.echo(f"{row['name']:<15} {frames:>6} {crop:>5}  {convention:<42} {params:>7}  {row['summary']}")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--settings", default="small", type=click.Choice(sorted(DEMO_SETTINGS)), hidden=True,
              help="tiny: the demo's test.")
@click.pass_context
def demo(ctx: click.Context, directory: Path, settings: str) -> None:
    """Every step on a small synthetic dataset in DIRECTORY: synth, build, inspect, train, evaluate,
    predict, with CPU-sized settings (a few minutes). Each step's own `wlasl-shards` command is printed
    before it runs: the same commands work on real data.

    Example: wlasl-shards demo demo
    """
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        _fail(f"DIRECTORY must be empty or missing (the demo writes a new run into it), got {directory}")
    given = DEMO_SETTINGS[settings]
    wlasl, shards, sheet, run = directory / "wlasl", directory / "shards", directory / "sheet.png", directory / "run"
    steps: list[Callable[[], list[str]]] = [
        lambda: ["synth", str(wlasl), *given["synth"]],
        lambda: ["build", str(wlasl), str(shards), *given["build"]],
        lambda: ["inspect", str(shards), "--verify", "--sheet", str(sheet)],
        lambda: ["train", str(shards), str(run), *given["train"]],
        lambda: ["evaluate", str(run / "best.pt"), str(shards), *given["evaluate"]],
        # A video of the test split: the first one synth listed there.
        lambda: ["predict", str(run / "best.pt"), str(_first_test_video(wlasl))],
    ]
    for step in steps:
        args = step()
        click.echo(f"\n$ wlasl-shards {shlex.join(args)}")
        try:
            main.main(args, prog_name="wlasl-shards", standalone_mode=False)
        except click.ClickException as e:  # a usage error in a step's options: the demo's own bug
            e.show()
            sys.exit(e.exit_code)
    click.echo(f"\nDone. In {directory}: the videos (wlasl/), the shards (shards/, dataset.json), the contact "
               f"sheet (sheet.png), the run (run/: best.pt, last.pt, report.json, metrics.jsonl, curves.png, "
               f"confusions.png, per_class.csv) and the test metrics (run/eval_test.json).")


def _first_test_video(wlasl: Path) -> Path:
    nslt = sorted(wlasl.glob("nslt_*.json"))
    entries = json.loads(nslt[0].read_text()) if nslt else {}
    test = sorted(v for v, e in entries.items() if e.get("subset") == "test")
    videos = sorted((wlasl / "videos").glob("*.mp4"))
    return next((p for p in videos if p.stem in test), videos[0])


if __name__ == "__main__":
    main()
