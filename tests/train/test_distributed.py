"""Multi-process training: `torchrun --nproc-per-node 2 -m wlasl_shards train` with gloo on the CPU.

The dataset (`odd_shards`) has 7 train, 3 val and 3 test shards of one sample each: no split divides
evenly between 2 ranks, the case where a naive node splitter gives ranks unequal batch counts and DDP hangs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.train.conftest import KEEP, REPO
from wlasl_shards.train import checkpoint as ckpt_io
from wlasl_shards.train import distributed as ddp
from wlasl_shards.train.model import InceptionI3d

TRAIN = ["--epochs", "3", "--batch-size", "1", "--accumulate", "2", "--optimizer", "adam", "--lr", "1e-4",
         "--frames", "8", "--crop-size", "40", "--precise-bn-batches", "2", "--workers", "0", "--device", "cpu",
         "--no-progress"]
FINGERPRINT = re.compile(r"rank (\d+) weights fingerprint ([0-9a-f]{16})")


def torchrun(shards_dir: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "wlasl_shards", "train", str(shards_dir), str(run_dir), *TRAIN, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s (a DDP hang?):\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


def last_weights_fingerprint(run_dir: Path) -> str:
    model = InceptionI3d(4)
    model.load_state_dict(ckpt_io.load(run_dir / ckpt_io.LAST)["model"])
    return ddp.fingerprint(model)


@pytest.fixture(scope="module")
def ddp_run(odd_shards, tmp_path_factory) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    return run_dir, finish(torchrun(odd_shards, run_dir))


def test_two_ranks_finish_with_identical_weights(ddp_run):
    run_dir, out = ddp_run
    prints = dict(FINGERPRINT.findall(out))
    assert set(prints) == {"0", "1"}, out[-3000:]
    assert prints["0"] == prints["1"] == last_weights_fingerprint(run_dir)


def test_every_rank_gets_the_same_batches_and_eval_counts_each_sample_once(ddp_run, odd_shards):
    run_dir, out = ddp_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    # 7 train samples, 2 ranks, batch 1: 3 batches per rank, 6 clips per epoch summed over ranks;
    # accumulate 2 -> optimiser steps of 2 + 1 passes: 2 steps per epoch.
    assert [r["train"]["clips"] for r in epochs] == [6, 6, 6]
    assert [r["step"] for r in epochs] == [2, 4, 6]
    assert all(r["val"]["count"] == KEEP["val"] for r in epochs)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["test"]["count"] == KEEP["test"]
    # Only rank 0 wrote: one record per epoch, not two.
    assert len(epochs) == 3 and sum(r["kind"] == "test" for r in records) == 1


def test_ddp_resume_after_kill_ends_where_an_uninterrupted_run_does(ddp_run, odd_shards, tmp_path):
    run_dir, _ = ddp_run
    killed = tmp_path / "run"
    proc = torchrun(odd_shards, killed)
    deadline = time.monotonic() + 300
    while not (killed / ckpt_io.LAST).exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job: torchrun and both ranks
    proc.communicate()
    assert (killed / ckpt_io.LAST).exists()
    out = finish(torchrun(odd_shards, killed, "--resume"))
    assert "resumed from" in out or "resume" in out
    prints = dict(FINGERPRINT.findall(out))
    assert prints["0"] == prints["1"] == last_weights_fingerprint(run_dir)
    assert json.loads((killed / "report.json").read_text())["test"] == \
        json.loads((run_dir / "report.json").read_text())["test"]


def test_fingerprint_sees_a_one_bit_change():
    a = InceptionI3d(4)
    b = InceptionI3d(4)
    b.load_state_dict(a.state_dict())
    assert ddp.fingerprint(a) == ddp.fingerprint(b)
    with torch.no_grad():
        w = b.logits.conv3d.weight.view(-1)
        w[0] = torch.nextafter(w[0], torch.tensor(float("inf")))
    assert ddp.fingerprint(a) != ddp.fingerprint(b)


def test_dist_info_takes_the_arguments_else_one_process():
    assert ddp.dist_info() == (0, 1)  # no process group here
    assert ddp.dist_info(1, 3) == (1, 3)
    with pytest.raises(ValueError, match="rank must be in 0..world_size-1, got rank 3 of world_size 3"):
        ddp.dist_info(3, 3)


class _Who(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield ddp.loader_worker()


def test_loader_worker_is_the_dataloader_worker_or_the_main_process():
    assert ddp.loader_worker() == (0, 1)
    got = list(torch.utils.data.DataLoader(_Who(), batch_size=None, num_workers=2))
    assert sorted(tuple(int(v) for v in w) for w in got) == [(0, 2), (1, 2)]
