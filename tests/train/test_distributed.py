"""Multi-process training: `torchrun --nproc-per-node 2 -m wlasl_shards train` with gloo on the CPU.

The dataset (`odd_shards`) has 7 train, 3 val and 3 test shards of one sample each: no split divides
evenly between 2 ranks, the case where a naive node splitter gives ranks unequal batch counts and DDP hangs.
"""

from __future__ import annotations

import contextlib
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
from wlasl_shards.train import data, plan
from wlasl_shards.train import distributed as ddp
from wlasl_shards.train.models import InceptionI3d

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
    _kill_when(proc, lambda: (killed / ckpt_io.LAST).exists())  # the whole job: torchrun and both ranks
    assert (killed / ckpt_io.LAST).exists()
    assert not (killed / "report.json").exists()  # killed mid-run, not after the ranks had finished
    out = finish(torchrun(odd_shards, killed, "--resume"))
    assert "resumed from" in out or "resume" in out
    prints = dict(FINGERPRINT.findall(out))
    assert prints["0"] == prints["1"] == last_weights_fingerprint(run_dir)
    assert json.loads((killed / "report.json").read_text())["test"] == \
        json.loads((run_dir / "report.json").read_text())["test"]


def _kill_when(proc: subprocess.Popen, done) -> None:
    """killpg the torchrun job once `done()` holds (or it has ended, or 300 s have passed)."""
    deadline = time.monotonic() + 300
    while not done():
        if proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    # The whole job: torchrun and its ranks, which this torch starts in sessions of their own (killpg
    # alone leaves them running to the end).
    for pid in [*_descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.communicate()


def _descendants(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """Every process below `pid` (from /proc), deepest first."""
    if children is None:
        children = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(entry.name))
    return [p for child in children.get(pid, []) for p in (*_descendants(child, children), child)]


def one_rank(shards_dir: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "wlasl_shards", "train", str(shards_dir), str(run_dir), *TRAIN, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_mid_epoch_last_pt_resumes_exactly_on_its_ranks_and_is_refused_on_others(ddp_run, odd_shards, tmp_path):
    run_dir, _ = ddp_run
    killed = tmp_path / "run"
    # 3 batches per rank per epoch, accumulate 2: step 1 ends inside epoch 1, and is saved there.
    _kill_when(torchrun(odd_shards, killed, "--checkpoint-every", "1"), (killed / ckpt_io.LAST).exists)
    ck = ckpt_io.load(killed / ckpt_io.LAST)
    assert ck["mid_epoch"] is not None, (ck["step"], ck["epoch"])
    assert ck["mid_epoch"]["world_size"] == 2 and ck["world_size"] == 2
    assert [len(r["position"]["workers"]) for r in ck["mid_epoch"]["ranks"]] == [1, 1]

    refused = one_rank(odd_shards, killed, "--resume")
    assert refused.returncode != 0
    assert (f"was saved inside epoch {ck['mid_epoch']['epoch']} ({ck['mid_epoch']['batches']} of its batches "
            "done) by 2 ranks, this job has 1") in refused.stderr, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr
    assert ckpt_io.load(killed / ckpt_io.LAST)["step"] == ck["step"]  # nothing was trained or written

    out = finish(torchrun(odd_shards, killed, "--resume", "--checkpoint-every", "1"))
    assert "inside epoch 1" in out
    prints = dict(FINGERPRINT.findall(out))
    assert prints["0"] == prints["1"] == last_weights_fingerprint(run_dir)
    assert json.loads((killed / "report.json").read_text())["test"] == \
        json.loads((run_dir / "report.json").read_text())["test"]


def test_a_two_rank_run_resumes_on_one_rank_from_the_epoch_boundary(odd_shards, tmp_path):
    run = tmp_path / "run"
    _kill_when(torchrun(odd_shards, run), (run / ckpt_io.LAST).exists)  # epoch 1 saved by 2 ranks
    ck = ckpt_io.load(run / ckpt_io.LAST)
    assert ck["epoch"] == 1 and ck["mid_epoch"] is None and ck["world_size"] == 2

    res = one_rank(odd_shards, run, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "written by 2 ranks, this job has 1: epoch 2 on is planned for 1" in res.stderr
    epochs = [r for r in (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "epoch"]
    # Epoch 1 on 2 ranks: 3 batches of 1 each (6 of the 7 samples); then one rank: all 7, 4 steps an epoch.
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert [r["train"]["clips"] for r in epochs] == [6, 7, 7]
    assert [r["step"] for r in epochs] == [2, 6, 10]
    assert all(r["val"]["count"] == KEEP["val"] for r in epochs)
    # One rank's plan of 7 samples takes every one of the 7 shards (one sample each) once, in one pass.
    parts = data.shard_parts(odd_shards, "train")
    for epoch in (1, 2):
        rank_plan = plan.plan_rank(parts, 0, epoch, 0, 1, 7)
        assert len(rank_plan) == 1 and sorted(p.url for p in rank_plan[0]) == sorted(p.url for p in parts)
    assert json.loads((run / "report.json").read_text())["test"]["count"] == KEEP["test"]


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
