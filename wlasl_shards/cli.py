"""The `wlasl-shards` command: a thin click layer; each command builds a config and calls one function."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from wlasl_shards import __version__

log = logging.getLogger("wlasl_shards")


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
    """WLASL videos -> WebDataset shards -> a streaming I3D trainer."""
    _setup_logging(verbose)


# -------------------------------------------------------------------------------------------- synth


@main.command()
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
@click.option("--classes", default=10, type=click.IntRange(min=1), help="Number of glosses.")
@click.option("--videos-per-class", default=12, type=click.IntRange(min=1), help="Videos per gloss (split ~8/2/2).")
@click.option("--seed", default=0, type=int, help="Same seed, same bytes.")
@click.option("--max-size", default=1280, type=click.IntRange(min=64),
              help="Drop resolutions wider than this (the default mix goes from 320x240 to 1280x720).")
@click.option("--frames", "frame_range", default=(40, 80), type=(click.IntRange(min=1), click.IntRange(min=1)),
              help="Min and max frames per video.")
@click.option("--workers", default=0, type=click.IntRange(min=0), help="Processes; 0 = all cores.")
@click.option("--x264-preset", default="ultrafast",
              help="x264 preset, ultrafast..veryslow: ultrafast writes fastest; medium (ffmpeg's default) "
                   "gives streams like web video's (CABAC, deblocking), for loader benchmarks.")
def synth(output: Path, classes: int, videos_per_class: int, seed: int, max_size: int,
          frame_range: tuple[int, int], workers: int, x264_preset: str) -> None:
    """Generate a synthetic dataset in the WLASL layout (WLASL_v0.3.json, videos/, nslt, class list).

    Example: wlasl-shards synth demo/wlasl --classes 10
    """
    import os

    from wlasl_shards.preprocess.synth import SynthConfig
    from wlasl_shards.preprocess.synth import synth as run_synth

    defaults = SynthConfig()
    sizes = tuple(s for s in defaults.sizes if s[0] <= max_size)
    if not sizes:
        _fail(f"--max-size {max_size} excludes every resolution ({defaults.sizes})")
    if frame_range[0] > frame_range[1]:
        _fail(f"--frames min must be <= max, got {frame_range[0]} {frame_range[1]}")
    try:
        cfg = SynthConfig(classes=classes, videos_per_class=videos_per_class, seed=seed, sizes=sizes,
                          min_frames=frame_range[0], max_frames=frame_range[1],
                          workers=workers or os.cpu_count() or 1, x264_preset=x264_preset)
        cfg.check()
        result = run_synth(cfg, output)
    except ValueError as e:
        _fail(str(e))
    click.echo(f"wrote {output}: {result}")


# -------------------------------------------------------------------------------------------- build


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path())  # a str: Path would fold s3:// into s3:/
@click.option("--subset", default="all", type=click.Choice(["100", "300", "1000", "2000", "all"]),
              help="WLASL-N: the first N glosses.")
@click.option("--split-file", type=click.Path(dir_okay=False, path_type=Path),
              help="An nslt_<N>.json deciding membership and splits; wins over SOURCE/splits/WLASL<N>_*.json, "
                   "then SOURCE/nslt_<N>.json, then WLASL_v0.3.json's split fields.")
@click.option("--fps", default=25.0, type=float, help="Output frame rate.")
@click.option("--crop", default="auto", type=click.Choice(["auto", "bbox", "center", "none"]),
              help="auto = bbox when the source has signer boxes, else center.")
@click.option("--size", default=256, type=int, help="Output side (none: shorter side).")
@click.option("--bbox-margin", default=0.1, type=float, help="bbox crop: grow the box by this fraction.")
@click.option("--codec", default="jpeg", type=click.Choice(["jpeg", "npy"]), help="Frame encoding.")
@click.option("--jpeg-qscale", default=3, type=int, help="JPEG quantiser scale, 2 (best) .. 31.")
@click.option("--apply-frame-range", is_flag=True,
              help="Cut [frame_start, frame_end] (raw downloads; the Kaggle copy is already cut).")
@click.option("--min-frames", default=9, type=int, help="Shorter videos are recorded as failed.")
@click.option("--shard-size", default="128MB", help="Shard size bound, e.g. 128MB, 1GB, 500000.")
@click.option("--seed", default=0, type=int, help="Sample shuffle seed.")
@click.option("--timeout", default=300.0, type=float, help="Seconds per video before it is given up.")
@click.option("--workers", default=0, type=click.IntRange(min=0), help="Processes; 0 = all cores.")
@click.option("--overwrite", is_flag=True, help="Replace an OUTPUT built with other options.")
@click.option("--partition", default=None, metavar="I/N",
              help="Build only share I (0-based) of N into OUTPUT, e.g. $SLURM_ARRAY_TASK_ID/8 or "
                   "$JOB_COMPLETION_INDEX/8; the last share to finish writes dataset.json.")
@click.option("--staging", type=click.Path(file_okay=False), default=None,
              help="OUTPUT s3://...: local directory for the shard being written and the journals "
                   "[default: a folder under the temp directory named from OUTPUT].")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def build(source: Path, output: str, shard_size: str, no_progress: bool, split_file: Path | None,
          partition: str | None, **options) -> None:
    """Convert a WLASL-layout dataset or a manifest into per-split WebDataset shards + dataset.json.

    OUTPUT is a directory or s3://bucket/prefix (credentials from the AWS chain; AWS_ENDPOINT_URL for
    S3-compatible stores): each shard is uploaded when complete, dataset.json last. Re-running the same
    command after an interruption finishes only what is missing, from any machine. With
    --partition I/N, N runs (machines, array tasks) share the work and the same OUTPUT.

    Example: wlasl-shards build demo/wlasl demo/shards --subset 100
    """
    from wlasl_shards import storage
    from wlasl_shards.inspect import summary
    from wlasl_shards.preprocess.build import PART_FORMAT, BuildConfig, BuildError, SourceError, parse_partition
    from wlasl_shards.preprocess.build import build as run_build

    try:
        part, parts = parse_partition(partition) if partition is not None else (0, 1)
        cfg = BuildConfig(source=str(source), output=output, shard_size=parse_bytes(shard_size),
                          split_file=str(split_file) if split_file else None, progress=not no_progress,
                          partition=part, partitions=parts, **options)
        index = run_build(cfg)
    except (ValueError, SourceError, BuildError) as e:
        _fail(str(e))
    written = storage.join(output, "dataset.json")
    if index["format"] == PART_FORMAT:
        records = [r for s in index["splits"].values() for r in s["shards"]]
        click.echo(f"partition {part}/{parts}: {sum(r['samples'] for r in records)} samples in {len(records)} "
                   f"shards; the last partition to finish writes {written} "
                   f"(or run: wlasl-shards merge {output})")
        return
    click.echo(summary(index))
    click.echo(f"wrote {written}")


@main.command()
@click.argument("output", type=click.Path(file_okay=False))  # a str: Path would fold s3:// into s3:/
def merge(output: str) -> None:
    """Write OUTPUT/dataset.json (a directory or s3://bucket/prefix) from the partial indexes of
    `build --partition I/N` runs.

    The last partition to finish does this itself; run it when that one could not. When partitions
    are missing it names them and exits 2 without writing anything.

    Example: wlasl-shards merge /shared/wlasl-shards
    """
    from wlasl_shards import storage
    from wlasl_shards.inspect import summary
    from wlasl_shards.preprocess.build import BuildError
    from wlasl_shards.preprocess.build import merge as run_merge

    try:
        index = run_merge(output)
    except (ValueError, BuildError) as e:
        _fail(str(e))
    click.echo(summary(index))
    click.echo(f"wrote {storage.join(output, 'dataset.json')}")


def parse_bytes(text: str) -> int:
    """'128MB' -> 134217728 (binary units: KB = 1024); a bare number is bytes."""
    units = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "M": 2**20, "MB": 2**20, "G": 2**30, "GB": 2**30}
    s = text.strip().upper()
    num = s.rstrip("KMGB")
    unit = s[len(num):]
    try:
        value = float(num) * units[unit]
    except (ValueError, KeyError):
        raise ValueError(f"--shard-size must look like 128MB, 1GB or 500000, got {text!r}") from None
    return int(value)


# ------------------------------------------------------------------------------------------ inspect


@main.command()
@click.argument("shards")
@click.option("--verify", is_flag=True, help="Re-hash every shard; exit 1 on any mismatch.")
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), help="Write a contact sheet PNG.")
@click.option("--gif", type=click.Path(dir_okay=False, path_type=Path),
              help="Write an animated GIF of the samples, tiled, with their glosses.")
@click.option("--samples", default=8, type=click.IntRange(min=1), help="Samples on the sheet / in the GIF.")
@click.option("--split", default=None, type=click.Choice(["train", "val", "test", "all"]),
              help="Split for the sheet / GIF [default: the first non-empty]; all = --samples of each split.")
@click.option("--gif-fps", default=10.0, type=float, help="GIF frame rate; clips play at their real speed.")
@click.option("--gif-size", default=128, type=click.IntRange(16, 512), help="GIF tile side in pixels.")
def inspect(shards: str, verify: bool, sheet: Path | None, gif: Path | None, samples: int, split: str | None,
            gif_fps: float, gif_size: int) -> None:
    """Summarise a built dataset, verify its checksums, or draw a contact sheet or GIF of samples.

    Example: wlasl-shards inspect demo/shards --verify --sheet sheet.png --gif samples.gif
    """
    from wlasl_shards import inspect as insp
    from wlasl_shards import storage

    try:
        index = storage.load_index(shards)
        insp.gif_delay(gif_fps)  # a bad --gif-fps fails before anything is read
    except ValueError as e:
        _fail(str(e))
    root = storage.dataset_root(shards)
    click.echo(insp.summary(index))
    picked = []
    if sheet is not None or gif is not None:
        try:
            picked = list(insp.first_samples(root, index, samples, split))
        except (ValueError, OSError) as e:
            _fail(str(e))
    if sheet is not None:
        insp.contact_sheet(picked).save(sheet)
        click.echo(f"wrote {sheet} ({len(picked)} samples)")
    if gif is not None:
        try:
            frames = insp.gif_frames(picked, float(index["params"]["fps"]), fps=gif_fps, thumb=gif_size)
            insp.save_gif(frames, gif, gif_fps)
        except ValueError as e:
            _fail(str(e))
        shown_fps = 100 / insp.gif_delay(gif_fps)  # what the GIF's 1/100 s delays give
        click.echo(f"wrote {gif} ({len(picked)} samples, {len(frames)} frames at {shown_fps:g} fps)")
    if verify:
        bad = insp.verify(root, index)
        for m in bad:
            click.echo(f"MISMATCH {m.name}: {m.problem}", err=True)
        total = sum(len(s["shards"]) for s in index["splits"].values())
        click.echo(f"verified {total} shards: {len(bad)} mismatches")
        if bad:
            sys.exit(1)


# -------------------------------------------------------------------------------------------- train


@main.command()
@click.argument("shards")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--epochs", default=60, type=int, help="Passes over the train split.")
@click.option("--batch-size", default=4, type=int, help="Clips per forward pass (per GPU).")
@click.option("--accumulate", default=4, type=int, help="Forward passes per optimiser step.")
@click.option("--optimizer", default="sgd", type=click.Choice(["sgd", "adam"]),
              help="sgd: momentum 0.9 + cosine (the seed's recipe, for Kinetics init); adam: + plateau.")
@click.option("--lr", default=None, type=float, help="Learning rate [default: sgd 0.01, adam 1e-3].")
@click.option("--weight-decay", default=None, type=float, help="[default: 1e-7]")
@click.option("--loss", default="ce", type=click.Choice(["ce", "bce"]),
              help="ce: cross-entropy of time-reduced logits; bce: WLASL's per-frame loc + cls.")
@click.option("--label-smoothing", default=0.0, type=float)
@click.option("--frames", "clip_len", default=64, type=int, help="Frames per training clip.")
@click.option("--crop-size", default=224, type=int, help="Random crop (train), centre crop (eval).")
@click.option("--flip/--no-flip", default=True, help="Random horizontal flips.")
@click.option("--workers", "num_workers", default=4, type=int, help="Loader workers per GPU.")
@click.option("--worker-mode", default="process", type=click.Choice(["process", "thread"]),
              help="Loader workers as processes, or as threads of the trainer (same batches, less CPU per clip).")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--seed", default=0, type=int)
@click.option("--init", type=click.Path(dir_okay=False), help="Kinetics-400 I3D weights or a checkpoint of ours.")
@click.option("--dropout", default=0.5, type=float)
@click.option("--eval-reduce", default="max", type=click.Choice(["max", "mean"]), help="Logits over time.")
@click.option("--precise-bn-batches", default=20, type=int,
              help="Train batches to re-estimate BatchNorm statistics before each evaluation; 0 = off.")
@click.option("--tensorboard", is_flag=True, help="Also log to RUN_DIR/tensorboard.")
@click.option("--resume", is_flag=True, help="Continue the run in RUN_DIR from last.pt.")
@click.option("--max-steps", default=None, type=int, help="Stop after this many optimiser steps.")
@click.option("--shard-errors", default="skip", type=click.Choice(["skip", "stop"]),
              help="A shard still unreadable after retries (storage errors): skip its rest and count it, or stop.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train(shards: str, run_dir: Path, compile_: bool, no_progress: bool, **options) -> None:
    """Train I3D on the shards written by `build`; checkpoints, metrics and a report go to RUN_DIR.

    Example: wlasl-shards train demo/shards runs/i3d --init rgb_imagenet.pt
    """
    from wlasl_shards.train.data import DataError
    from wlasl_shards.train.loop import TrainConfig
    from wlasl_shards.train.loop import train as run_train

    try:
        cfg = TrainConfig(shards=str(shards), run_dir=str(run_dir), compile=compile_,
                          progress=not no_progress, **options)
        result = run_train(cfg)
    except (ValueError, DataError) as e:  # bad options or data; RUN_DIR keeps every finished epoch
        _fail(str(e))
    if result:
        click.echo(json.dumps(result.get("test", result), indent=1))


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("shards")
@click.option("--split", default="test", type=click.Choice(["train", "val", "test"]))
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--workers", "num_workers", default=2, type=int, help="Loader workers.")
@click.option("--worker-mode", default="process", type=click.Choice(["process", "thread"]),
              help="Loader workers as processes, or as threads of this process (same results).")
@click.option("--reduce", default=None, type=click.Choice(["max", "mean"]),
              help="Logits over time [default: the checkpoint's].")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the metrics here [default: eval_<split>.json beside the checkpoint].")
def evaluate(checkpoint: Path, shards: str, split: str, device: str, num_workers: int, worker_mode: str,
             reduce: str | None, output: Path | None) -> None:
    """Top-1/5/10 and per-class accuracy of a checkpoint on one split, as JSON.

    Beside the JSON file: eval_<split>_confusions.png and eval_<split>_per_class.csv.

    Example: wlasl-shards evaluate runs/i3d/best.pt demo/shards --split test
    """
    from wlasl_shards.train.data import DataError
    from wlasl_shards.train.evaluate import evaluate as run_eval

    output = output or checkpoint.parent / f"eval_{split}.json"
    try:
        metrics = run_eval(checkpoint, shards, split=split, device=device, num_workers=num_workers,
                           worker_mode=worker_mode, reduce=reduce, progress=True, pictures=output.parent)
    except (ValueError, DataError) as e:
        _fail(str(e))
    text = json.dumps(metrics, indent=1)
    output.write_text(text + "\n")
    click.echo(text)


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", default=5, type=click.IntRange(min=1))
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--bbox", default=None, type=(float, float, float, float),
              help="Signer box x1 y1 x2 y2 in the videos' pixels [default: centre crop].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def predict(checkpoint: Path, videos: tuple[Path, ...], top_k: int, device: str, bbox, as_json: bool) -> None:
    """Top glosses of each video, preprocessed as the checkpoint's training shards were.

    Example: wlasl-shards predict runs/i3d/best.pt demo/wlasl/videos/00001.mp4
    """
    from wlasl_shards.train.predict import predict as run_predict

    try:
        results = run_predict(checkpoint, [str(v) for v in videos], top_k=top_k, device=device, bbox=bbox)
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
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--batch-size", default=1, type=click.IntRange(min=1),
              help="Videos per forward pass; > 1 pads shorter videos, which changes their features (1 is exact).")
@click.option("--workers", "num_workers", default=2, type=click.IntRange(min=0), help="Loader processes.")
@click.option("--crop-size", default=None, type=click.IntRange(min=1),
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
    from wlasl_shards.train.data import DataError
    from wlasl_shards.train.features import INDEX_NAME, FeaturesConfig, extract

    try:
        cfg = FeaturesConfig(checkpoint=str(checkpoint), shards=str(shards), out=str(out), splits=splits,
                             progress=not no_progress, **options)
        index = extract(cfg)
    except (ValueError, DataError) as e:
        _fail(str(e))
    for split, entry in index["splits"].items():
        click.echo(f"{split}: {entry['samples']} videos in {len(entry['shards'])} shards"
                   + (f", {entry['skipped']} bad samples skipped" if entry["skipped"] else ""))
    click.echo(f"wrote {out / INDEX_NAME}")


if __name__ == "__main__":
    main()
