"""`train(cfg)`: a model (`--arch`, I3D by default) on the shards' train split, validation every epoch,
test once at the end.

Fixed phases, plain functions, explicit arguments (torchvision's video reference, torchtune):

    prepare_run_dir   RUN_DIR checks (an existing run needs resume=True) and config.json
    setup             seeds, model (+ --init), optimiser, scheduler, loader config
    resume_state      last.pt -> model, optimiser, scheduler, RNG states, epoch, step, best
    train_epoch       one epoch of `batch_size` x `accumulate` optimiser steps (grad accumulation)
    validate          precise BN (precise_bn.py) on train batches, then val counts (evaluate.py), summed over ranks
    save_epoch        last.pt every epoch, best.pt when val top-1 improves (atomic writes)
    finish            test split ONCE with best.pt -> report.json, curves.png, confusions.png, per_class.csv

metrics.jsonl is written and read by records.py; the curves are drawn by plots.py.

Epochs are numbered from 1 everywhere a person reads them: the log, metrics.jsonl, report.json's
"best_epoch", checkpoints and so `--resume`. The loader's shard order and augmentation are seeded
with the number counted from 0 (`State.data_epoch`), so epoch 1 sees the data the first epoch
always saw.

Recipes (`recipes.py`: the optimiser kinds, the schedules, and each arch's default recipe with its
source; `TrainConfig.resolve` fills the fields left at None from the arch's):

  * I3D's (the default) is the seed's: SGD momentum 0.9, lr 0.01, weight decay 1e-7, cosine annealing
    of the lr to 0 over every optimiser step of the run. It assumes Kinetics-400 init
    (`init=rgb_imagenet.pt`); a warning says so when there is no init.
  * optimizer="adam": WLASL's own `train_i3d.py` with `configfiles/asl100.ini` (the other asl*.ini
    set other values): Adam lr 1e-3, weight decay 1e-7 (the .ini's ADAM_EPS is never passed to Adam
    there, so eps stays 1e-8), and ReduceLROnPlateau(factor 0.3, patience 5) on the validation loss.
  * optimizer="adamw" (the transformers' recipes): AdamW, linear warm-up then cosine.

  From scratch, use optimizer="adam", lr=1e-4: on the learning test's synthetic data the SGD recipe
  diverged or stayed at chance where Adam learned (README, *Training*).

Loss: "ce" = cross-entropy of the logits reduced over time with `eval_reduce` (max by default,
WLASL's prediction rule), so training optimises exactly what evaluation ranks; "bce" = WLASL's
per-frame localisation + max-over-time classification BCE, 0.5 / 0.5.

Resume: last.pt is written at the end of each epoch with every RNG state, and an epoch's data order
is a function of (seed, epoch), so re-running the interrupted epoch from its start reproduces it and
the run ends as an uninterrupted one would. With `checkpoint_every`, last.pt is also written inside
an epoch (`save_mid_epoch`), with every rank's loader position, RNG states and running sums, and
resume goes on from there (the same ranks and workers needed: `_check_mid_epoch`).

Multi-process (torchrun, see distributed.py): DistributedDataParallel wraps the model for the
training forward only (gradients all-reduced once per optimiser step: the passes in between run
under no_sync); evaluation and precise BN use the plain module on each rank's share of the data and
sum counts / average statistics across ranks. Only rank 0 writes files; every rank reads the same
last.pt to resume (RUN_DIR must be shared between nodes), and the test phase gets best.pt's weights
from rank 0 by broadcast. Each epoch reseeds torch's RNG with (seed, epoch, rank), so dropout differs
between ranks and resume stays exact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from wlasl_shards import __version__, cache, storage
from wlasl_shards.train import checkpoint as ckpt_io
from wlasl_shards.train import data, metrics, models, plots, recipes
from wlasl_shards.train import distributed as ddp
from wlasl_shards.train.data import DataError
from wlasl_shards.train.device import GpuClock, autocast, device_for, resolve_device, to_device
from wlasl_shards.train.evaluate import check_classes, eval_model, nothing_read, run_eval
from wlasl_shards.train.loader import WorkerPool, make_eval_loader, make_train_loader, worker_pool
from wlasl_shards.train.plan import batches_per_epoch
from wlasl_shards.train.precise_bn import precise_bn, slow_batchnorm
from wlasl_shards.train.records import METRICS_FILE, Recorder, check_tensorboard, finite, read_metrics

log = logging.getLogger(__name__)

CONFIG_FILE, REPORT_FILE = "config.json", "report.json"


@dataclass(frozen=True)
class TrainConfig:
    """Options of `wlasl-shards train`; the resolved values are saved as RUN_DIR/config.json."""

    shards: str  # dataset directory (or its dataset.json) written by `wlasl-shards build`
    run_dir: str  # where checkpoints, metrics, report and curves go
    epochs: int = 60  # passes over the train split
    batch_size: int = 4  # clips per forward pass, per rank
    accumulate: int = 4  # forward passes per optimiser step: effective batch = batch_size x accumulate x ranks
    # None in the fields below: the arch's recipe (`recipes.RECIPES`; `resolve` fills them in)
    optimizer: str | None = None  # sgd (cosine; I3D's: the seed's) | adam (+ plateau, WLASL's) | adamw (+ cosine)
    lr: float | None = None  # the recipe's with its optimiser, else the optimiser's default
    weight_decay: float | None = None  # likewise (biases and norms get none, except in I3D's seed recipe)
    loss: str = "ce"  # ce: cross-entropy of time-reduced logits | bce: WLASL's per-frame loc + cls BCE
    label_smoothing: float | None = None  # mass spread over all classes in the targets (ce and bce)
    clip_len: int | None = None  # frames per training clip (a random window; short videos padded at the end)
    crop_size: int = 224  # random crop in training, centre crop in evaluation
    flip: bool = True  # random horizontal flip of training clips
    num_workers: int = 4  # loader workers per rank; 0 = read in the main process
    worker_mode: str = "process"  # loader workers are processes | threads (same batches; see LoaderConfig)
    eval_batch_size: int = 1  # videos per eval forward pass, all of one frame count (no padding: batch-1 logits)
    device: str = "auto"  # auto (cuda if available) | cpu | cuda
    compile: bool = False  # torch.compile the training forward pass, and val/test's (dynamic shapes: `eval_model`)
    seed: int = 0  # model init, data order, augmentation, dropout
    init: str | None = None  # weights to start from: the arch's published file / save_pretrained dir, or our checkpoint
    dropout: float | None = None  # before the head; None: the arch's (I3D 0.5: pytorch-i3d's, which WLASL keeps)
    eval_reduce: str | None = None  # logits over time -> prediction, eval and ce loss: max | mean; None: the arch's
    precise_bn_batches: int = 20  # train batches to re-estimate BN statistics before evaluating; 0 = off
    log_every: int = 10  # optimiser steps between step records in metrics.jsonl
    tensorboard: bool = False  # also log to RUN_DIR/tensorboard (needs the tensorboard package)
    resume: bool = False  # continue the run in run_dir from last.pt
    max_steps: int | None = None  # stop after this many optimiser steps in all (short runs, tests)
    shard_errors: str = "skip"  # a shard unreadable after storage's retries: skip its rest (counted) | stop
    progress: bool = True  # tqdm bar
    # issue 14 section 4: the local cache of remote shards (`wlasl_shards.cache`)
    cache_dir: str | None = None  # keep remote shards (and dataset.json) here; None: stream them every epoch
    cache_limit: int | None = None  # bytes the cache may hold (least recently used shards go); None: no limit
    # issue 14 section 3: resume anywhere
    checkpoint_every: int | None = None  # optimiser steps between last.pt saves inside an epoch; None: epoch ends only
    # issue 14: validate (precise BN + val) every N epochs and after the last; best.pt among validated epochs
    eval_every: int = 1
    # issue 13 §3/§5: sampling and the WLASL protocol options (`data.LoaderConfig` has their meaning)
    frame_stride: int | None = None  # every S-th frame, in training windows and in evaluation (None: the recipe's)
    eval_clips: int | None = None  # 0: eval on every (S-th) frame (WLASL's); K: K windows of clip_len, logits averaged
    pad: str = "last"  # short training clips padded with the last frame | "first-or-last" (WLASL's, at random)
    train_splits: tuple[str, ...] = ("train",)  # splits trained on; ("train", "val") is WLASL's (val then not held out)
    # issue 13 §1: arch
    arch: str = "i3d"  # the model (`wlasl-shards archs`): i3d, torchvision's video models, VideoMAE
    channels: str = "rgb"  # channel order the model sees: rgb | bgr (WLASL's released I3D weights saw OpenCV's BGR)
    # issue 13 §4: recipes (None: the arch's recipe)
    warmup_epochs: float | None = None  # linear lr warm-up before the cosine (sgd, adamw)
    layer_decay: float | None = None  # layer-wise lr decay in (0, 1] (ViTs: the head at lr, each layer below x it)
    drop_path: float | None = None  # stochastic depth rate (MViT, Swin3D, VideoMAE)

    def resolve(self) -> TrainConfig:
        """This config with the fields left at None filled in: from the arch's recipe, or, with another
        optimiser than the recipe's, that optimiser's defaults (and no warm-up or layer decay); dropout
        and eval_reduce from the arch. ValueError for an unknown arch or optimiser.

        A config with nothing left to fill in (one `resolve` returned) is returned itself, so that
        `check`, `loader_config`, `resolved` and `input_spec` on it do not resolve it again."""
        rec = recipes.recipe(self.arch)
        optimizer = self.optimizer or rec.optimizer
        kind = recipes.optimizer_kind(optimizer)
        own = optimizer == rec.optimizer
        arch = models.get(self.arch)
        fill = {"optimizer": optimizer, "lr": rec.lr if own else kind.lr,
                "weight_decay": rec.weight_decay if own else kind.weight_decay,
                # A recipe's warm-up is for its source's long runs: at most a quarter of this run's epochs.
                "warmup_epochs": min(rec.warmup_epochs, self.epochs / 4) if own else 0.0,
                "layer_decay": rec.layer_decay if own else None,
                "clip_len": rec.clip_len, "drop_path": rec.drop_path, "label_smoothing": rec.label_smoothing,
                "frame_stride": rec.frame_stride, "eval_clips": rec.eval_clips,
                "dropout": arch.dropout, "eval_reduce": arch.eval_reduce}
        # Some fields stay None resolved (an arch without dropout, an optimiser without layer decay).
        fill = {k: v for k, v in fill.items() if getattr(self, k) is None and v is not None}
        return dataclasses.replace(self, **fill) if fill else self

    @functools.cached_property
    def input_spec(self) -> models.InputSpec:
        """The input convention of this run (`models.init_input_spec`): config.json's and every
        checkpoint's "input_spec", and what `setup` normalises with. An --init dir's
        preprocessor_config.json is read once per config object (`train` passes one resolved config down)."""
        r = self.resolve()
        return models.init_input_spec(r.arch, r.init)

    def check(self) -> None:
        """Raise ValueError naming the first bad option, of this config as `resolve` fills it in (the
        loader's own through `LoaderConfig.check`)."""
        r = self.resolve()
        for name in ("epochs", "accumulate", "log_every", "eval_every"):
            if getattr(r, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(r, name)}")
        if r.precise_bn_batches < 0:
            raise ValueError(f"precise_bn_batches must be >= 0, got {r.precise_bn_batches}")
        r.loader_config().check()
        if r.loss not in metrics.LOSSES:
            raise ValueError(f"loss must be one of {metrics.LOSSES}, got {r.loss!r}")
        if r.eval_reduce not in metrics.REDUCTIONS:
            raise ValueError(f"eval_reduce must be one of {metrics.REDUCTIONS}, got {r.eval_reduce!r}")
        if not r.lr > 0:
            raise ValueError(f"lr must be > 0, got {r.lr}")
        if r.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {r.weight_decay}")
        if not 0.0 <= r.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {r.label_smoothing}")
        if r.checkpoint_every is not None and r.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {r.checkpoint_every}")
        if r.max_steps is not None and r.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {r.max_steps}")
        if r.init is not None and not os.path.exists(r.init):
            raise ValueError(f"init {r.init}: no such file or directory")
        if r.channels not in models.CHANNELS:
            raise ValueError(f"channels must be one of {models.CHANNELS}, got {r.channels!r}")
        models.check_input(r.arch, r.clip_len, r.crop_size)  # an unknown arch: the names
        if models.get(r.arch).frames is not None and not r.eval_clips:
            raise ValueError(f"arch {r.arch} takes exactly {models.get(r.arch).frames} frames, and eval_clips 0 "
                             "evaluates every frame of a video at once: pass eval_clips K (--eval-clips, e.g. 5)")
        models.check_options(r.arch, dropout=r.dropout, drop_path=r.drop_path, layer_decay=r.layer_decay)
        splits = r.train_splits
        if isinstance(splits, str) or not splits or len(set(splits)) != len(splits):
            raise ValueError(f"train_splits must be split names, each once, e.g. ('train', 'val'), got {splits!r}")
        if "test" in splits:
            raise ValueError("train_splits must not hold 'test': the test split is what report.json scores")
        self._check_recipe(r)

    @staticmethod
    def _check_recipe(r: TrainConfig) -> None:
        if not 0.0 <= r.warmup_epochs <= r.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs={r.epochs}], got {r.warmup_epochs}")
        if r.warmup_epochs and not recipes.OPTIMIZERS[r.optimizer].per_step:
            raise ValueError(f"warmup_epochs {r.warmup_epochs}: optimizer {r.optimizer!r} steps its lr on the val "
                             "loss, not per step; warm-up works with sgd and adamw")

    def loader_config(self) -> data.LoaderConfig:
        """How this run's shards become batches (the same on every rank)."""
        r = self.resolve()
        return data.LoaderConfig(clip_len=r.clip_len, crop_size=r.crop_size, flip=r.flip,
                                 batch_size=r.batch_size, eval_batch_size=r.eval_batch_size,
                                 num_workers=r.num_workers, worker_mode=r.worker_mode, seed=r.seed,
                                 shard_errors=r.shard_errors, cache_dir=r.cache_dir,
                                 cache_limit=r.cache_limit, frame_stride=r.frame_stride, eval_clips=r.eval_clips,
                                 pad=r.pad)

    def resolved(self) -> dict:
        """The config as saved in config.json and checkpoints: every field as `resolve` fills it in, and
        the input convention ("input_spec": evaluate, predict and features apply it)."""
        r = self.resolve()
        out = dataclasses.asdict(r)
        out["train_splits"] = list(r.train_splits)  # as config.json holds it (JSON has no tuples)
        out["input_spec"] = r.input_spec.as_config()  # issue 13 §1
        return out


# Fields that may change between a run and its resumption. None changes the results, except num_workers:
# an epoch then has the same samples in another order, with other augmentation draws.
RESUMABLE = frozenset({"shards", "run_dir", "num_workers", "worker_mode", "device", "compile", "tensorboard",
                       "resume", "progress", "log_every", "shard_errors", "cache_dir", "cache_limit",
                       "checkpoint_every"})


def _differences(old: dict, new: dict) -> list[str]:
    """"key: old -> new" for each field (but RESUMABLE's) where the resolved configs `old` (a run's
    config.json or checkpoint) and `new` differ. A field newer than `old` had there what it resolves
    to for `old`'s other fields (a run from before recipes: the seed's I3D recipe)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    then = TrainConfig(**{k: v for k, v in old.items() if k in names}).resolved()
    # As JSON both ways: config.json holds lists where the dataclass has tuples.
    old, new = (json.loads(json.dumps({**then, **old}, default=str)), json.loads(json.dumps(new, default=str)))
    keys = sorted((set(old) | set(new)) - RESUMABLE)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


# ------------------------------------------------------------------------------------ run dir


def _write_json(path: Path, obj: Any) -> None:
    storage.write_json(path, obj, indent=2, default=str)


def prepare_run_dir(cfg: TrainConfig, is_writer: bool) -> Path:
    """Check RUN_DIR against the config; write config.json (rank 0). Returns the directory.

    A new run needs an empty or missing run_dir; a run_dir holding a run (config.json) needs the
    same config (up to the RESUMABLE fields), and resume=True once an epoch was saved (last.pt).
    ValueError otherwise.
    """
    run = Path(cfg.run_dir)
    new = cfg.resolved()
    if run.exists() and not run.is_dir():
        raise ValueError(f"run_dir {run} is a file, not a directory")
    entries = [p.name for p in run.iterdir()] if run.is_dir() else []
    cfg_file = run / CONFIG_FILE
    if cfg_file.is_file():
        try:
            old = json.loads(cfg_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"run_dir {run}: unreadable {CONFIG_FILE} ({e})") from None
        diff = _differences(old, new)
        if diff:
            raise ValueError(f"run_dir {run} holds a run with a different config ({'; '.join(diff)}): "
                             "choose another run_dir, or empty this one")
        if not cfg.resume and (run / ckpt_io.LAST).exists():
            raise ValueError(f"run_dir {run} already holds this run: pass resume=True (--resume) to continue it, "
                             "or choose another run_dir")
        # Same config and no epoch finished yet (e.g. a crash in set-up): nothing to lose, start again.
    elif entries:
        raise ValueError(f"run_dir {run} is not empty and holds no run ({CONFIG_FILE} missing): "
                         f"use an empty or new directory")
    if is_writer:
        run.mkdir(parents=True, exist_ok=True)
        _write_json(cfg_file, new)
    return run


# ---------------------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class Setup:
    """Everything `setup` builds (`wrap` adds the training forward); mutable state lives in `State`."""

    model: nn.Module  # the plain module (`models.build(cfg.arch)`): state_dict, evaluation, precise BN
    forward: nn.Module  # what the training step calls: `model`, DDP(model), maybe torch.compile'd (`wrap`)
    optimizer: torch.optim.Optimizer
    scheduler: Any  # CosineAnnealingLR (stepped per optimiser step) | ReduceLROnPlateau (per epoch)
    schedule_per_step: bool  # recipes.OPTIMIZERS[kind].per_step: step the scheduler per optimiser step, not per epoch
    loader_cfg: data.LoaderConfig
    device: torch.device
    classes: list[str]
    preprocessing: dict
    batches_per_epoch: int
    steps_per_epoch: int
    has_val: bool
    has_test: bool
    val_samples: int = 0  # per dataset.json
    test_samples: int = 0
    state_per_param: int = 1  # recipes.OPTIMIZERS[kind].state_per_param
    job: ddp.Dist = ddp.Dist(0, 1, 0, False)
    ddp_model: nn.Module | None = None  # DistributedDataParallel(model) in a multi-process job
    spec: models.InputSpec = models.I3D_INPUT  # how uint8 clips become the model's input (issue 13 §1)
    channels: str = "rgb"
    eval_forward: nn.Module | None = None  # what val and test call: `model`, maybe torch.compile'd (`wrap`)
    pool: WorkerPool | None = None  # loader worker processes for every loader of the run (`start_pool`)


def start_pool(s: Setup, cfg: TrainConfig) -> Setup:
    """`s` with the run's loader worker processes (`--workers` N processes, started once: every epoch,
    precise BN, val and test read through them, with the very batches fresh DataLoader workers give);
    threads and in-process reading need none. `_train` closes it."""
    return dataclasses.replace(s, pool=worker_pool(cfg.loader_config()))


def wrap(s: Setup, cfg: TrainConfig) -> Setup:
    """`s` with the training forward: DDP around the model in a multi-process job (after resume has
    loaded the weights; DDP broadcasts rank 0's), then torch.compile when asked; and evaluation's
    forward, the plain model, compiled for dynamic shapes when asked."""
    ddp_model = ddp.wrap(s.model, s.device, s.job)
    base = ddp_model if ddp_model is not None else s.model
    return dataclasses.replace(s, ddp_model=ddp_model, forward=torch.compile(base) if cfg.compile else base,
                               eval_forward=eval_model(s.model, cfg.compile))


@dataclass
class State:
    epoch: int = 1  # the epoch to run next, numbered from 1 (the log's, metrics.jsonl's and last.pt's numbers)
    step: int = 0  # optimiser steps taken
    best: dict | None = None  # {"epoch", "top1"} of the best validation so far
    mid_epoch: dict | None = None  # resuming inside `epoch`: {"batches" done, and this rank's entry of last.pt's}

    @property
    def data_epoch(self) -> int:
        """The loader's epoch for `epoch`: counted from 0, so each epoch's shard order and draws are
        those of the same epoch before epochs were numbered from 1 (the determinism tests' values)."""
        return self.epoch - 1


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python's random."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _split_samples(index: dict, split: str) -> int:
    return int(index["splits"].get(split, {}).get("samples", 0))


def train_samples(index: dict, cfg: TrainConfig) -> int:
    """Samples of the splits `cfg` trains on (`train_splits`); ValueError naming a split the dataset
    `index` describes lacks, with those it has."""
    splits = index["splits"]
    unknown = [name for name in cfg.train_splits if name not in splits]
    if unknown:
        raise ValueError(f"train_splits: {storage.dataset_url(cfg.shards)} has no split {unknown[0]!r} "
                         f"(it has {', '.join(sorted(splits)) or 'none'})")
    return sum(_split_samples(index, name) for name in cfg.train_splits)


def setup(cfg: TrainConfig, index: dict, rank: int, world_size: int, job: ddp.Dist | None = None) -> Setup:
    """Seeds, model (with --init), optimiser, scheduler and the loader config for this run; the
    training forward is the plain model until `wrap`."""
    seed_everything(cfg.seed)
    job = job or ddp.Dist(rank, world_size, 0, False)
    device = device_for(resolve_device(cfg.device), job)
    classes = list(index["classes"])
    cfg = cfg.resolve()
    kind = recipes.OPTIMIZERS[cfg.optimizer]
    model = models.build(cfg.arch, len(classes), dropout=cfg.dropout, drop_path=cfg.drop_path)
    if cfg.init:
        report = models.load_init(model, cfg.init, arch=cfg.arch)
        log.info("init from %s: %d tensors, head %s", cfg.init, report["loaded"], report["head"])
        if cfg.input_spec != models.get(cfg.arch).spec:
            log.info("input normalised as %s's %s says: mean %s, std %s", cfg.init, cfg.input_spec.name,
                     list(cfg.input_spec.mean), list(cfg.input_spec.std))
    elif kind.scratch_lr is not None and cfg.lr >= kind.scratch_lr:
        log.warning("training from scratch with %s lr %g: that is the seed's recipe for Kinetics-400 init "
                    "(--init rgb_imagenet.pt); from scratch it diverged or barely learned on synthetic data, "
                    "where Adam lr 1e-4 learned: without --init, use --optimizer adam --lr 1e-4", cfg.optimizer.upper(),
                    cfg.lr)
    momentum = slow_batchnorm(model)
    if momentum is not None and not cfg.precise_bn_batches:
        log.warning("precise_bn_batches 0 with %s's BatchNorm momentum %g: its running statistics lag the weights "
                    "by hundreds of steps; measured on synthetic data, eval-mode accuracy stayed at chance without "
                    "precise BN (I3D val 0.10 against 0.65 with it, S3D 0.125 against 0.44)", cfg.arch, momentum)
    model.to(device)
    n_train = train_samples(index, cfg)
    if n_train == 0:
        raise ValueError(f"{storage.dataset_url(cfg.shards)}: the {'+'.join(cfg.train_splits)} split has no samples")
    if "val" in cfg.train_splits:
        log.warning("train_splits %s: the val split is in the training data, so val top-1 and best.pt's selection "
                    "are not held out (WLASL's code then selects on test, which this trainer never does; the test "
                    "score stays held out)", "+".join(cfg.train_splits))
    batches = batches_per_epoch(n_train, world_size, cfg.batch_size)
    steps = math.ceil(batches / cfg.accumulate)
    groups = models.param_groups(model, cfg.arch, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
    optimizer = recipes.make_optimizer(kind, groups, cfg.lr, cfg.weight_decay)
    val_samples, test_samples = _split_samples(index, "val"), _split_samples(index, "test")
    has_val, has_test = val_samples > 0, test_samples > 0
    if not has_val:
        log.warning("no val samples: best.pt is the last epoch's weights")
    scheduler = kind.schedule(optimizer, steps * cfg.epochs, round(cfg.warmup_epochs * steps))
    return Setup(model=model, forward=model, optimizer=optimizer, scheduler=scheduler, schedule_per_step=kind.per_step,
                 loader_cfg=cfg.loader_config(), device=device, classes=classes,
                 preprocessing=ckpt_io.preprocessing_params(index), batches_per_epoch=batches, steps_per_epoch=steps,
                 has_val=has_val, has_test=has_test, val_samples=val_samples, test_samples=test_samples,
                 state_per_param=kind.state_per_param, job=job,
                 spec=cfg.input_spec, channels=cfg.channels)


def check_dataset(ck: dict, s: Setup, cfg: TrainConfig, last: Path) -> None:
    """ValueError, before any weight is loaded, when the dataset being resumed on is not the one the
    checkpoint `ck` (at `last`) was trained on: other classes (another count would fail as a raw size
    mismatch, the same count with other glosses would silently relabel them) or other preprocessing
    (the model would go on learning from other pixels). `shards` itself may move (RESUMABLE)."""
    where = f"resume: dataset {storage.dataset_url(cfg.shards)}"
    try:
        check_classes(ck["classes"], s.classes, where)
    except ValueError as e:
        raise ValueError(f"{e}; {last} was trained on {len(ck['classes'])} classes: resume on that dataset, "
                         f"or start a new run_dir") from None
    trained = ck.get("preprocessing") or {}
    differs = [f"{k}: {a!r} ({ckpt_io.LAST}) vs {b!r} (dataset)"
               for k, (a, b) in ckpt_io.preprocessing_differences(trained, s.preprocessing).items()]
    if differs:
        raise ValueError(f"{where} was built with other preprocessing than {last}'s ({'; '.join(differs)}): "
                         "resume on the dataset the run was trained on, or start a new run_dir")


def resume_state(s: Setup, cfg: TrainConfig, run: Path) -> State:
    """The state to start from: last.pt's (weights, optimiser, scheduler, RNG states restored) when
    resuming and it exists, else a fresh one."""
    last = run / ckpt_io.LAST
    if cfg.resume:
        ddp.agree(last.is_file(), f"whether {last} exists")
    if not (cfg.resume and last.is_file()):
        if cfg.resume:
            log.info("resume: no %s in %s yet, starting from the beginning", ckpt_io.LAST, run)
        return State()
    ck = ckpt_io.load(last)
    diff = _differences(ck["config"], cfg.resolved())
    if diff:
        raise ValueError(f"run_dir {run}: {ckpt_io.LAST} was written with another config ({'; '.join(diff)})")
    check_dataset(ck, s, cfg, last)
    s.model.load_state_dict(ck["model"])
    s.optimizer.load_state_dict(ck["optimizer"])
    s.scheduler.load_state_dict(ck["scheduler"])
    ckpt_io.set_rng_state(ck["rng"])
    # ckpt_io.load numbers epochs from 1 whatever the checkpoint's version.
    mid = ck["mid_epoch"]
    if mid is None:
        if ck["world_size"] not in (None, s.job.world_size):
            log.warning("resume: %s was written by %d ranks, this job has %d: epoch %d on is planned for %d "
                        "(every sample once per epoch, %d optimiser steps per epoch); the lr schedule keeps "
                        "the length it was made with", last, ck["world_size"], s.job.world_size, ck["epoch"] + 1,
                        s.job.world_size, s.steps_per_epoch)
        log.info("resumed from %s: epoch %d done, step %d", last, ck["epoch"], ck["step"])
        return State(epoch=ck["epoch"] + 1, step=ck["step"], best=ck["best"])
    _check_mid_epoch(mid, s, cfg, last)
    log.info("resumed from %s inside epoch %d: %d of its %d batches done, step %d", last, mid["epoch"],
             mid["batches"], s.batches_per_epoch, ck["step"])
    return State(epoch=mid["epoch"], step=ck["step"], best=ck["best"],
                 mid_epoch={"batches": mid["batches"], **mid["ranks"][s.job.rank]})


def _check_mid_epoch(mid: dict, s: Setup, cfg: TrainConfig, last: Path) -> None:
    """ValueError when a last.pt saved inside an epoch cannot continue that epoch here: its rest is
    planned per rank and per loader worker, so it needs the ranks and workers that began it."""
    where = f"resume: {last} was saved inside epoch {mid['epoch']} ({mid['batches']} of its batches done)"
    if mid["world_size"] != s.job.world_size:
        raise ValueError(f"{where} by {mid['world_size']} ranks, this job has {s.job.world_size}: the rest of an "
                         f"epoch needs the ranks that began it. Resume with {mid['world_size']} ranks (torchrun "
                         "--nproc-per-node); a last.pt saved at an epoch's end resumes on any number")
    if mid["num_workers"] != cfg.num_workers:
        raise ValueError(f"{where} with num_workers {mid['num_workers']}, now {cfg.num_workers}: resume with "
                         f"--workers {mid['num_workers']} (another count works from the next epoch on)")


# ---------------------------------------------------------------------------------------- train


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def train_epoch(s: Setup, cfg: TrainConfig, state: State, rank: int, world_size: int, recorder: Recorder,
                bar: tqdm, run: Path | None = None) -> dict:
    """One epoch: `batches_per_epoch` forward/backward passes, an optimiser step every `accumulate`
    of them (the last group of an epoch may be shorter; its loss is averaged over its own size).
    Stops early once `max_steps` is reached; saves last.pt every `checkpoint_every` optimiser steps
    inside the epoch (to `run`), and continues from such a save (`state.mid_epoch`). Returns the
    epoch's train figures."""
    model, optimizer = s.model, s.optimizer
    model.train()
    if world_size > 1:  # per-rank dropout; a function of (seed, epoch, rank), so resume stays exact
        torch.manual_seed(hash((cfg.seed, state.data_epoch, rank)) % 2**63)
    mid, state.mid_epoch = state.mid_epoch, None
    done = mid["batches"] if mid else 0
    loader = make_train_loader(cfg.shards, s.loader_cfg, state.data_epoch, rank, world_size, cfg.train_splits,
                               done=done, position=mid["position"] if mid else None, pool=s.pool)
    n = len(loader)
    sums, window_sums = (mid["sums"], mid["window"]) if mid else ([0.0, 0, 0], [0.0, 0])
    loss_sum = torch.tensor(sums[0], dtype=torch.float64, device=s.device)  # summed on the device: no sync per step
    hits = torch.tensor(sums[1], dtype=torch.int64, device=s.device)
    clips = sums[2]
    wait = busy = 0.0  # seconds waiting for the loader / in total, this epoch
    window = {"loss": torch.tensor(window_sums[0], dtype=torch.float64, device=s.device), "clips": window_sums[1],
              "wait": 0.0, "time": 0.0}
    clock = GpuClock(s.device)
    optimizer.zero_grad(set_to_none=True)
    tick = time.perf_counter()
    for i, (batch, labels) in enumerate(loader, done):
        if mid:  # after the loader's start, which draws from torch's RNG as it did when the epoch began
            ckpt_io.set_rng_state(mid["rng"])
            mid = None
        got = time.perf_counter()
        group = min(cfg.accumulate, n - (i // cfg.accumulate) * cfg.accumulate)  # passes in this step
        stepped = (i + 1) % cfg.accumulate == 0 or i + 1 == n
        clock.start()
        x, y = to_device(batch, labels, s.device, s.spec, s.channels)
        # DDP all-reduces gradients on the step's last pass only.
        with (s.ddp_model.no_sync() if s.ddp_model is not None and not stepped else contextlib.nullcontext()):
            with autocast(s.device):
                logits = s.forward(x)
            logits = logits.float()
            losses = metrics.clip_loss(cfg.loss, logits, y, x.shape[2], cfg.eval_reduce, cfg.label_smoothing)
            loss = losses.mean()
            (loss / group).backward()
        with torch.no_grad():
            loss_sum += losses.detach().double().sum()
            window["loss"] += losses.detach().double().sum()
            hits += (metrics.reduce_time(logits.detach(), cfg.eval_reduce).argmax(1) == y).sum()
        clips += len(labels)
        window["clips"] += len(labels)
        if stepped:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            if s.schedule_per_step:
                s.scheduler.step()
        clock.stop()
        done = time.perf_counter()
        wait += got - tick
        busy += done - tick
        window["wait"] += got - tick
        window["time"] += done - tick
        tick = done
        bar.update(1)
        if stepped and (state.step % cfg.log_every == 0 or state.step == 1):
            mean_loss = float(window["loss"]) / max(window["clips"], 1)  # syncs with the device here only
            rate = window["clips"] * world_size / max(window["time"], 1e-9)
            record = {"kind": "step", "epoch": state.epoch, "step": state.step, "loss": mean_loss, "lr": _lr(optimizer),
                      "clips_per_s": rate, "data_wait": window["wait"] / max(window["time"], 1e-9)}
            gpu_busy = clock.collect()
            if gpu_busy is not None:
                record["gpu_busy"] = gpu_busy
            recorder.write(record, state.step)
            bar.set_postfix(loss=f"{mean_loss:.4f}", clips_s=f"{rate:.1f}", refresh=False)
            window = {"loss": torch.zeros_like(window["loss"]), "clips": 0, "wait": 0.0, "time": 0.0}
        if stepped and cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and i + 1 < n:
            save_mid_epoch(s, cfg, state, run, loader, i + 1, [float(loss_sum), int(hits), clips],
                           [float(window["loss"]), window["clips"]], is_writer=rank == 0)
        if stepped and cfg.max_steps is not None and state.step >= cfg.max_steps:
            break
    # Sum over ranks: every rank ran the same number of batches.
    totals = torch.stack([loss_sum, hits.double(), torch.tensor(float(clips), dtype=torch.float64, device=s.device)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    loss_total, hit_total, clip_total = totals.tolist()
    out = {"loss": loss_total / max(clip_total, 1), "top1": hit_total / max(clip_total, 1),
           "clips": int(clip_total), "clips_per_s": clip_total / max(busy, 1e-9),
           "data_wait": wait / max(busy, 1e-9), "skipped": loader.skipped, "seconds": busy}
    gpu_busy = clock.overall()
    if gpu_busy is not None:
        out["gpu_busy"] = gpu_busy  # share of the GPU's time spent in training passes (CUDA)
    if cfg.cache_dir is not None:
        out["cache"] = dict(loader.cache_counts)  # this rank's shard cache hits, fetches, damaged copies
    return out


def validate(s: Setup, cfg: TrainConfig, state: State, rank: int, world_size: int, progress: bool) -> dict | None:
    """Precise BN on this epoch's train batches, then val metrics (None without val samples)."""
    if cfg.precise_bn_batches:
        bn_loader = make_train_loader(cfg.shards, s.loader_cfg, state.data_epoch, rank, world_size, cfg.train_splits,
                                      pool=s.pool)
        precise_bn(s.model, bn_loader, s.device, cfg.precise_bn_batches, s.spec, s.channels)
    if not s.has_val:
        return None
    loader = make_eval_loader(cfg.shards, s.loader_cfg, "val", rank, world_size, pool=s.pool)
    try:
        counts = run_eval(s.eval_forward or s.model, loader, s.device, len(s.classes), cfg.eval_reduce, cfg.loss,
                          progress, desc="val", windows=cfg.eval_clips, spec=s.spec, channels=s.channels)
    except DataError as e:  # shard_errors="stop", or too many bad samples in a row
        raise DataError(f"the val split of {storage.dataset_url(cfg.shards)}: {e}") from None
    unreadable = nothing_read(counts.count, s.val_samples, loader.skip_reasons, "val", storage.dataset_url(cfg.shards))
    if unreadable:
        # shard_errors="skip": the run goes on, and selection says what it did without val data.
        log.warning("epoch %d: %s; model selection has no val data this epoch (best.pt: see report.json's "
                    "\"selection\")", state.epoch, unreadable)
        return {"count": 0, "skipped": loader.skipped, "unreadable": unreadable}
    return {**counts.summary(), "skipped": loader.skipped}


def validates(cfg: TrainConfig, state: State) -> bool:
    """Whether the epoch just trained is validated: every `eval_every`-th epoch, and the run's last
    (`epochs`, or the one that reached `max_steps`), so that best.pt always has a validated candidate."""
    return state.epoch % cfg.eval_every == 0 or state.epoch >= cfg.epochs or _at_max(cfg, state)


def update_best(state: State, val: dict | None) -> bool:
    """Update `state.best` with this epoch's val top-1; returns whether this epoch is the new best.

    Selection is by val top-1 over the epochs that had val data. An epoch without (no val split, or
    none of it readable) leaves a best that had val data alone; while no epoch has had any, every
    epoch is the new best, so best.pt is the last epoch's weights (report.json's "selection")."""
    top1 = val["top1"] if val and val.get("count") else None
    best_top1 = state.best["top1"] if state.best else None
    if top1 is None:
        improved = best_top1 is None
    else:
        improved = best_top1 is None or top1 > best_top1
    if improved:
        state.best = {"epoch": state.epoch, "top1": top1}
    return improved


def save_mid_epoch(s: Setup, cfg: TrainConfig, state: State, run: Path, loader: Any, batches: int, sums: list,
                   window: list, is_writer: bool) -> None:
    """last.pt inside an epoch, after `batches` of it (an optimiser step's end): what `train_epoch`
    needs to go on from there exactly, gathered from every rank (a collective), written by rank 0."""
    ranks = ddp.gather_objects({"position": loader.position(), "sums": sums, "window": window,
                                "rng": ckpt_io.rng_state()})
    if is_writer:
        mid = {"epoch": state.epoch, "batches": batches, "world_size": s.job.world_size,
               "num_workers": cfg.num_workers, "ranks": ranks}
        ckpt_io.save(run / ckpt_io.LAST, ckpt_io.make(
            model=s.model, optimizer=s.optimizer, scheduler=s.scheduler, epoch=state.epoch - 1, step=state.step,
            best=state.best, config=cfg.resolved(), classes=s.classes, preprocessing=s.preprocessing,
            world_size=s.job.world_size, mid_epoch=mid))


def save_epoch(s: Setup, cfg: TrainConfig, state: State, run: Path, improved: bool, is_writer: bool) -> None:
    """best.pt when this epoch `improved`, then last.pt. Called after the epoch's metrics record is
    written: a last.pt for epoch e then always has e's record, and a kill before it has been saved
    makes resume redo epoch e and rewrite the record."""
    if is_writer:
        ck = ckpt_io.make(model=s.model, optimizer=s.optimizer, scheduler=s.scheduler, epoch=state.epoch,
                          step=state.step, best=state.best, config=cfg.resolved(), classes=s.classes,
                          preprocessing=s.preprocessing, world_size=s.job.world_size)
        if improved:
            ckpt_io.save(run / ckpt_io.BEST, ck)
        ckpt_io.save(run / ckpt_io.LAST, ck)  # last: a kill between the two saves resumes and redoes best


# ---------------------------------------------------------------------------------------- finish


def finish(s: Setup, cfg: TrainConfig, state: State, run: Path, rank: int, world_size: int,
           recorder: Recorder, is_writer: bool) -> dict:
    """The test split, once, with best.pt's weights -> report.json (returned)."""
    ddp.check_replicas(s.model, s.job)
    # best.pt's weights: read by rank 0 (the writer), broadcast to the others (no shared disk needed).
    if is_writer:
        s.model.load_state_dict(ckpt_io.load(run / ckpt_io.BEST)["model"])
    ddp.broadcast_state(s.model)
    epochs_done = state.epoch - 1
    best = {"epoch": state.best["epoch"] if state.best else epochs_done}
    test = None
    if s.has_test:
        loader = make_eval_loader(cfg.shards, s.loader_cfg, "test", rank, world_size, pool=s.pool)
        later = (f"{run / ckpt_io.BEST} is saved: `wlasl-shards evaluate {run / ckpt_io.BEST} {cfg.shards} "
                 "--split test` once the test shards can be read")
        try:
            counts = run_eval(s.eval_forward or s.model, loader, s.device, len(s.classes), cfg.eval_reduce,
                              cfg.loss, cfg.progress, desc="test", windows=cfg.eval_clips, spec=s.spec,
                              channels=s.channels)
        except DataError as e:
            raise DataError(f"the test split of {storage.dataset_url(cfg.shards)}: {e}; {later}") from None
        unreadable = nothing_read(counts.count, s.test_samples, loader.skip_reasons, "test",
                                  storage.dataset_url(cfg.shards))
        if unreadable:  # a test score of nothing would read as a result
            raise DataError(f"{unreadable}; {later}")
        test = {**metrics.report(counts, s.classes), "skipped": loader.skipped}
        if is_writer:  # counts are summed over ranks already
            plots.write_pictures(counts.confusion, s.classes, run,
                                 title=f"test split, {ckpt_io.BEST} (epoch {best['epoch']})")
    else:
        log.warning("no test samples: report.json has no test metrics")
    records = read_metrics(run / METRICS_FILE)
    epochs = [r for r in records if r.get("kind") == "epoch"]
    best_record = next((r for r in epochs if r["epoch"] == best["epoch"]), None)
    selection = _selection(s, state, epochs)
    report = {
        "test": test,
        "checkpoint": ckpt_io.BEST,
        "best_epoch": best["epoch"],
        "best_val": best_record.get("val") if best_record else None,
        "selection": selection,
        "protocol": protocol(cfg),
        "epochs": epochs_done,
        "steps": state.step,
        "classes": len(s.classes),
        "train_samples_skipped": sum(r["train"].get("skipped", 0) for r in epochs),
        "tool_version": __version__,
        "config": cfg.resolved(),
    }
    report = finite(report)
    if is_writer:
        if test is not None:
            recorder.write({"kind": "test", "epoch": best["epoch"], "step": state.step,
                            **{k: test[k] for k in ("count", "loss", "top1", "top5", "top10", "per_class_mean")}},
                           state.step)
        _write_json(run / REPORT_FILE, report)
        plots.write_curves(read_metrics(run / METRICS_FILE), run / plots.CURVES_FILE)
    if test is not None:
        log.info("test (best epoch %d): top-1 %.4f top-5 %.4f top-10 %.4f per-class %.4f (%d clips)",
                 best["epoch"], test["top1"], test["top5"], test["top10"], test["per_class_mean"], test["count"])
    return report


def protocol(cfg: TrainConfig) -> dict:
    """report.json's "protocol": what was trained on, how clips were sampled, where best.pt was chosen
    (the points where the original WLASL code and ours may differ: README, *The WLASL protocol*)."""
    return {"train_splits": list(cfg.train_splits), "frame_stride": cfg.frame_stride, "eval_clips": cfg.eval_clips,
            "pad": cfg.pad, "channels": cfg.channels, "selection_split": "val"}


def _selection(s: Setup, state: State, epochs: list[dict]) -> dict:
    """How best.pt was chosen, for report.json: {"by": "val top-1" | "last epoch", "epochs_without_val":
    [...], "note"}; a warning when some epoch had no val data."""
    # Epochs skipped by eval_every are not missing val data ("validated" absent: a run from before it).
    missing = [r["epoch"] for r in epochs if r.get("validated", True) and not (r.get("val") or {}).get("count")]
    by = "val top-1" if state.best and state.best.get("top1") is not None else "last epoch"
    if not s.has_val:
        note = "the dataset has no val samples: best.pt is the last epoch's weights"
    elif not missing:
        note = "best val top-1"
    else:
        why = next(((r.get("val") or {}).get("unreadable") for r in epochs if r["epoch"] in missing), None)
        used = ("best val top-1 of the other epochs" if by == "val top-1"
                else "no epoch had val data, so best.pt is the last epoch's weights")
        note = f"no val data in epochs {missing} ({why or 'no val record'}); {used}"
        log.warning("model selection: %s", note)
    return {"by": by, "epochs_without_val": missing if s.has_val else [], "note": note}


# ----------------------------------------------------------------------------------------- train


def train(cfg: TrainConfig) -> dict:
    """Train, validate every epoch, test once with the best checkpoint; returns report.json's dict.

    Raises ValueError for bad options, an unusable run_dir or shards (before any training).
    """
    cfg = cfg.resolve()  # the arch's recipe in every field left at None; passed down, never resolved again
    cfg.check()
    if cfg.tensorboard:
        check_tensorboard()
    job = ddp.init(resolve_device(cfg.device).type)
    try:
        return _train(cfg, job)
    finally:
        ddp.destroy(job)


def _train(cfg: TrainConfig, job: ddp.Dist) -> dict:
    rank, world_size = job.rank, job.world_size
    is_writer = rank == 0
    index = cache.load_index(cfg.shards, cfg.loader_config().shard_cache())
    data.check_crop(index, cfg.crop_size, cfg.shards)
    train_samples(index, cfg)  # an unknown split in train_splits: refused before RUN_DIR is touched
    # Rank 0 checks and prepares RUN_DIR; the others wait for its verdict (no race on config.json).
    refused: ValueError | None = None
    if is_writer:
        try:
            prepare_run_dir(cfg, is_writer)
        except ValueError as e:
            refused = e
    if not ddp.all_ok(refused is None):
        raise refused or ValueError(f"rank 0 refused run_dir {cfg.run_dir} (its log says why)")
    run = Path(cfg.run_dir)
    if is_writer:  # the run dir is this run's alone (prepare_run_dir): no other writer's temporaries
        storage.sweep_temporaries(run)
    s = setup(cfg, index, rank, world_size, job)
    state = resume_state(s, cfg, run)
    short: storage.NoSpace | None = None
    if is_writer:
        try:
            check_free_space(run, ckpt_io.estimated_size(s.model, s.state_per_param))
        except storage.NoSpace as e:
            short = e
    if not ddp.all_ok(short is None):
        raise short or storage.NoSpace(f"rank 0 found too little free space in {run} (its log says why)")
    s = wrap(s, cfg)
    recorder = Recorder(run, is_writer, keep_epochs_below=state.epoch, tensorboard=cfg.tensorboard,
                        keep_steps_to=state.step if state.mid_epoch else None)
    s = start_pool(s, cfg)  # closed in the `finally` below
    log.info("training %d classes on %s: %d batches of %d per epoch, %d optimiser steps per epoch, device %s",
             len(s.classes), cfg.shards, s.batches_per_epoch, cfg.batch_size, s.steps_per_epoch, s.device)
    total = s.batches_per_epoch * cfg.epochs
    try:
        done = (state.epoch - 1) * s.batches_per_epoch + (state.mid_epoch["batches"] if state.mid_epoch else 0)
        with tqdm(total=total, initial=min(done, total), unit="batch",
                  disable=not (cfg.progress and is_writer), dynamic_ncols=True) as bar:
            while state.epoch <= cfg.epochs and not _at_max(cfg, state):
                bar.set_description(f"epoch {state.epoch}/{cfg.epochs}")
                started = time.perf_counter()
                tr = train_epoch(s, cfg, state, rank, world_size, recorder, bar, run)
                validated = validates(cfg, state)
                val = validate(s, cfg, state, rank, world_size, cfg.progress and is_writer) if validated else None
                if not s.schedule_per_step and val is not None and val["count"]:
                    s.scheduler.step(val["loss"])
                improved = update_best(state, val) if validated else False
                recorder.write({"kind": "epoch", "epoch": state.epoch, "step": state.step, "lr": _lr(s.optimizer),
                                "train": tr, "validated": validated, "val": val, "best": improved,
                                "seconds": time.perf_counter() - started}, state.step)
                save_epoch(s, cfg, state, run, improved, is_writer)
                log.info("epoch %d: train loss %.4f top-1 %.3f | val %s | %.1f clips/s, data wait %.0f%%",
                         state.epoch, tr["loss"], tr["top1"],
                         f"loss {val['loss']:.4f} top-1 {val['top1']:.3f}" if val and val["count"] else "-",
                         tr["clips_per_s"], 100 * tr["data_wait"])
                state.epoch += 1
        return finish(s, cfg, state, run, rank, world_size, recorder, is_writer)
    finally:
        recorder.close()
        if s.pool is not None:
            s.pool.close()


def check_free_space(run: Path, checkpoint_bytes: int) -> None:
    """storage.NoSpace, before the first epoch, when the filesystem of `run` has less free space than
    twice a checkpoint (a checkpoint is written beside the one it replaces); otherwise a full disk
    would only show at the end of the first epoch."""
    free = shutil.disk_usage(run).free
    need = 2 * checkpoint_bytes
    if free < need:
        mib = 2**20
        raise storage.NoSpace(f"not enough free space for checkpoints in {run}: {free / mib:.0f} MiB free, a "
                              f"checkpoint takes about {checkpoint_bytes / mib:.0f} MiB and needs twice that: free "
                              "some space or choose a run_dir on another filesystem")


def _at_max(cfg: TrainConfig, state: State) -> bool:
    return cfg.max_steps is not None and state.step >= cfg.max_steps


__all__ = ["CONFIG_FILE", "REPORT_FILE", "Setup", "State", "TrainConfig",
           "check_dataset", "check_free_space", "finish", "prepare_run_dir", "protocol", "resume_state", "save_epoch",
           "start_pool",
           "save_mid_epoch",
           "seed_everything", "setup", "train", "train_epoch", "train_samples", "update_best", "validate", "validates",
           "wrap"]
