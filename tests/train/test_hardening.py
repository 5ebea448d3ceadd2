"""Issue 12, the trainer side: each test generates the hostile case (a shard gone, another dataset on
resume, corrupt samples in a row, a full disk, a pickle bomb, Ctrl-C during a save) and asserts the outcome."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from tests.train.conftest import REPO, run_env, write_npy_dataset
from tests.train.handmade import make_dataset
from wlasl_shards import shards, storage
from wlasl_shards.train import checkpoint as ckpt_io
from wlasl_shards.train import data, loop, recipes
from wlasl_shards.train.data import DataError
from wlasl_shards.train.evaluate import EvaluateConfig, evaluate
from wlasl_shards.train.loop import TrainConfig, train
from wlasl_shards.train.models import InceptionI3d, load_init

# I3D on 8-frame clips of 24 px, one epoch, no precise BN: a few seconds on 2 cores.
QUICK = dict(epochs=1, batch_size=2, accumulate=1, optimizer="adam", lr=1e-4, clip_len=8, crop_size=24,
             precise_bn_batches=0, num_workers=0, log_every=1, progress=False, seed=0)


def quick(ds: Path, run: Path, **kw) -> TrainConfig:
    return TrainConfig(shards=str(ds), run_dir=str(run), **{**QUICK, **kw})


def npy(root: Path, **kw) -> Path:
    return write_npy_dataset(root, size=32, **kw)


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# ------------------------------------------------------------------------- 1: a split gone


def test_a_missing_val_shard_is_said_loudly_or_stops_and_evaluate_of_nothing_is_an_error(tmp_path, caplog):
    ds = npy(tmp_path / "ds")
    os.remove(ds / "val" / "shard-000000.tar")
    with caplog.at_level(logging.WARNING):
        report = train(quick(ds, tmp_path / "run", epochs=2))
    # No val data: selection falls back to the last epoch, and says so (log and report.json).
    assert report["best_epoch"] == 2
    assert report["selection"]["by"] == "last epoch" and report["selection"]["epochs_without_val"] == [1, 2]
    assert "val/shard-000000.tar" in report["selection"]["note"]
    assert json.loads((tmp_path / "run" / loop.REPORT_FILE).read_text())["selection"] == report["selection"]
    assert torch.load(tmp_path / "run" / ckpt_io.BEST, weights_only=True)["epoch"] == 2
    assert any("could not be read at all" in r.getMessage() and "val" in r.getMessage() for r in caplog.records)
    assert any("model selection: no val data in epochs [1, 2]" in r.getMessage() for r in caplog.records)

    # shard_errors="stop": one line naming the split and the shard.
    with pytest.raises(DataError) as e:
        train(quick(ds, tmp_path / "stop", shard_errors="stop"))
    assert "the val split of" in one_line(e) and "val/shard-000000.tar" in str(e.value)

    # evaluate of a split whose shards are all gone: an error, not count 0.
    os.remove(ds / "test" / "shard-000000.tar")
    with pytest.raises(DataError) as e:
        evaluate(EvaluateConfig(checkpoint=str(tmp_path / "run" / ckpt_io.BEST), shards=str(ds), split="val",
                                num_workers=0, progress=False))
    assert "the val split of" in one_line(e) and "could not be read at all" in str(e.value)
    assert "val/shard-000000.tar" in str(e.value)


def test_selection_keeps_the_best_epoch_with_val_data():
    state = loop.State()
    assert loop.update_best(state, {"count": 4, "top1": 0.5})
    state.epoch = 2
    assert not loop.update_best(state, {"count": 0, "unreadable": "gone"})  # a val outage does not win
    state.epoch = 3
    assert not loop.update_best(state, {"count": 4, "top1": 0.25})
    assert state.best == {"epoch": 1, "top1": 0.5}


# -------------------------------------------------------------------- 3: resume on another dataset


def test_resume_refuses_other_classes_or_preprocessing_naming_both_sides(tmp_path):
    ds = npy(tmp_path / "ds")
    run = tmp_path / "run"
    train(quick(ds, run))
    index = json.loads((ds / shards.INDEX_NAME).read_text())

    def variant(name: str, **changes) -> Path:
        other = tmp_path / name
        shutil.copytree(ds, other)
        (other / shards.INDEX_NAME).write_text(json.dumps({**index, **changes}))
        return other

    stale = run / ".last.pt.0123456789ab.tmp"  # a kill at a rename left this (item 11)
    stale.write_bytes(b"half a checkpoint")
    cases = [
        (variant("more", classes=index["classes"] + ["g4"]), r"5 vs 4 classes.*index 4: 'g4' vs None"),
        (variant("renamed", classes=["g1", "g0", "g2", "g3"]), r"4 vs 4 classes.*index 0: 'g1' vs 'g0'"),
        (variant("fps", params={**index["params"], "fps": 12.5}), r"fps: 25\.0 \(last\.pt\) vs 12\.5 \(dataset\)"),
    ]
    for other, match in cases:
        with pytest.raises(ValueError, match=match) as e:
            train(quick(other, run, resume=True))
        assert "size mismatch" not in one_line(e) and str(other) in str(e.value)
    assert not stale.exists()  # swept at start-up
    assert torch.load(run / ckpt_io.LAST, weights_only=True)["epoch"] == 1  # nothing was trained on
    train(quick(ds, run, resume=True))  # the right dataset still resumes


# ---------------------------------------------------------------- 7: bad samples in a row in train


@pytest.mark.parametrize("workers, mode", [(0, "process"), (2, "thread")])
def test_25_corrupt_samples_in_a_row_stop_train_despite_the_shuffle_buffer(tmp_path, workers, mode):
    ds = make_dataset(tmp_path / "ds", {"train": [30, 6], "val": [2], "test": [2]},
                      bad={i: "jpeg" for i in range(25)})
    with pytest.raises(DataError) as e:
        train(quick(ds, tmp_path / "run", num_workers=workers, worker_mode=mode))
    assert "bad samples in a row" in one_line(e) and "train/shard-000000.tar" in str(e.value)


def test_failures_in_a_row_are_counted_in_read_order():
    errors = data.SkipCounter(max_consecutive=3)
    bad = ValueError("bad")
    for at in (0, 2, 5):  # runs [0], [2], [5]
        errors.skip("u", f"k{at}", bad, at)
    errors.ok(1)
    errors.skip("u", "k4", bad, 4)  # [4, 5]
    with pytest.raises(DataError, match="4 bad samples in a row"):
        errors.skip("u", "k3", bad, 3)  # joins [2] and [4, 5]: 2..5


# --------------------------------------------------------------------- 13: disk full, checked early


class _FullDisk(io.FileIO):
    """A temporary file on a disk that fills after `room` bytes (ENOSPC), or is Ctrl-C'd there."""

    def __init__(self, path, room: int, error: type[BaseException]):
        super().__init__(path, "x")
        self.room, self.error = room, error

    def write(self, b) -> int:
        n = len(memoryview(b))
        if n > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if self.error is OSError else self.error()
        self.room -= n
        return super().write(b)


def fail_checkpoint_writes(monkeypatch, error: type[BaseException], after: int = 0, room: int = 4096) -> None:
    """Checkpoint temporaries after the first `after` fail once `room` bytes are written."""
    real_open, opened = open, [0]

    def fake_open(path, mode="r", *args, **kw):
        if mode == "xb" and ".pt." in os.path.basename(path):
            opened[0] += 1
            if opened[0] > after:
                return _FullDisk(path, room, error)
        return real_open(path, mode, *args, **kw)

    monkeypatch.setattr(storage, "open", fake_open, raising=False)


def test_disk_full_during_train_is_one_line_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    ds = npy(tmp_path / "ds")
    run = tmp_path / "run"
    fail_checkpoint_writes(monkeypatch, OSError)
    with pytest.raises(storage.NoSpace) as e:
        train(quick(ds, run))
    assert one_line(e).startswith("no space left on ") and str(e.value).endswith(f"writing {run / ckpt_io.BEST}")
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl"]  # no .tmp, no torn file


def test_too_little_free_space_is_refused_before_the_first_epoch(tmp_path, monkeypatch):
    ds = npy(tmp_path / "ds")
    run = tmp_path / "run"
    size = ckpt_io.estimated_size(InceptionI3d(4), recipes.OPTIMIZERS["adam"].state_per_param)
    assert size > 3 * sum(p.numel() * 4 for p in InceptionI3d(4).parameters())  # weights + Adam's two moments
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(loop.shutil, "disk_usage", lambda path: usage(10 * size, 9 * size, size))
    with pytest.raises(storage.NoSpace, match=r"not enough free space for checkpoints in .*run: .* MiB free") as e:
        train(quick(ds, run))
    one_line(e)
    assert loop.read_metrics(run / "metrics.jsonl") == []  # refused before any training


# ------------------------------------------------------------------------------- 14: pickle bombs


class Bomb:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_bomb_is_refused_plainly_and_never_runs(tmp_path):
    kinetics_state = InceptionI3d(10).state_dict()
    marker = tmp_path / "marker"
    zipped = tmp_path / "bomb.pt"
    torch.save({"format": ckpt_io.CHECKPOINT_FORMAT, "model": kinetics_state, "x": Bomb(marker)}, zipped)
    raw = tmp_path / "bomb.pkl"
    raw.write_bytes(pickle.dumps({"model": kinetics_state, "x": Bomb(marker)}, protocol=4))
    for path in (zipped, raw):
        for load in (ckpt_io.load, lambda p: load_init(InceptionI3d(10), p)):
            with pytest.raises(ValueError) as e:
                load(path)
            text = one_line(e)
            assert f"checkpoint {path}: refused, it holds" in text and "pickled" in text
            assert "will not be loaded" in text
            assert "weights_only=False" not in text and "False" not in text and "trust" not in text
    assert "posix.system" in str(pytest.raises(ValueError, ckpt_io.load, zipped).value)
    assert not marker.exists()


def test_torch_wording_of_refused_globals_old_and_new():
    from wlasl_shards.train.models.weights import _REFUSED_GLOBAL

    old = "Unsupported global: GLOBAL __main__.Evil was not an allowed global by default."
    new = "Trying to load unsupported GLOBAL posix.system whose module posix is blocked."
    assert _REFUSED_GLOBAL.search(old).group(1) == "__main__.Evil"
    assert _REFUSED_GLOBAL.search(new).group(1) == "posix.system"


# ------------------------------------------------------------------- 15: errors raised in workers


def test_a_missing_train_shard_is_one_line_in_every_worker_mode(tmp_path):
    ds = npy(tmp_path / "ds")
    os.remove(ds / "train" / "shard-000000.tar")
    for workers, mode in [(0, "process"), (2, "process"), (2, "thread")]:
        with pytest.raises(DataError) as e:
            train(quick(ds, tmp_path / f"run{workers}{mode}", num_workers=workers, worker_mode=mode))
        text = one_line(e)
        assert "train/shard-000000.tar" in text and "No such file or directory" in text
        assert "DataLoader worker" not in text


def test_a_missing_train_shard_through_the_cli_is_one_error_line(tmp_path):
    ds = npy(tmp_path / "ds")
    os.remove(ds / "train" / "shard-000000.tar")
    res = subprocess.run([sys.executable, "-m", "wlasl_shards", "train", str(ds), str(tmp_path / "run"),
                          "--epochs", "1", "--batch-size", "2", "--frames", "8", "--crop-size", "24",
                          "--precise-bn-batches", "0", "--workers", "2", "--no-progress"],
                         env=run_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and res.stderr.rstrip().splitlines()[-1] == errors[0], res.stderr
    assert "train/shard-000000.tar" in errors[0] and "Traceback" not in res.stderr


# --------------------------------------------------------------------- 17: Ctrl-C during a save


def test_ctrl_c_during_a_checkpoint_write_is_a_plain_interrupt_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / ckpt_io.LAST
    ckpt_io.save(path, {"epoch": 1, "w": torch.zeros(10)})
    before = path.read_bytes()
    fail_checkpoint_writes(monkeypatch, KeyboardInterrupt, room=64)
    with pytest.raises(KeyboardInterrupt):
        ckpt_io.save(path, {"epoch": 2, "w": torch.ones(100_000)})
    assert path.read_bytes() == before and os.listdir(tmp_path) == [ckpt_io.LAST]

    # In train: an interrupt while epoch 2 is saved leaves epoch 1's last.pt, and --resume finishes the run.
    ds = npy(tmp_path / "ds")
    run = tmp_path / "run"
    fail_checkpoint_writes(monkeypatch, KeyboardInterrupt, after=2)  # best.pt and last.pt of epoch 1 get written
    with pytest.raises(KeyboardInterrupt):
        train(quick(ds, run, epochs=2))
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert torch.load(run / ckpt_io.LAST, weights_only=True)["epoch"] == 1
    monkeypatch.undo()
    assert train(quick(ds, run, epochs=2, resume=True))["epochs"] == 2
