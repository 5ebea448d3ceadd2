"""Training, evaluation and inspection with the shards on a real S3 server (SeaweedFS on 127.0.0.1) and
on a plain HTTP server, and what happens when those servers fail: every fault ends in a skip or an
error naming the URL, within the time storage.IOPolicy promises, never in a hang."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.train.conftest import REPO, SMALL, run_env, train_command
from wlasl_shards import storage
from wlasl_shards.api import evaluate
from wlasl_shards.cli import main
from wlasl_shards.train import checkpoint as ckpt_io
from wlasl_shards.train import data, loader
from wlasl_shards.train import distributed as ddp
from wlasl_shards.train.models import InceptionI3d

PREFIX = "remote-tiny"
LOADER = data.LoaderConfig(clip_len=8, crop_size=40, batch_size=2, num_workers=0)


@pytest.fixture(scope="module")
def s3_shards(tiny_shards, s3_server) -> str:
    s3_server.put_dir(tiny_shards, PREFIX)
    return s3_server.url(PREFIX)


def fingerprint(run: Path) -> str:
    model = InceptionI3d(4)
    model.load_state_dict(ckpt_io.load(run / ckpt_io.LAST)["model"])
    return ddp.fingerprint(model)


def test_train_from_s3_matches_training_from_disk(s3_shards, s3_server, reference_run, tmp_path):
    run = tmp_path / "run"
    # One loader worker: the S3 client must also work in a forked DataLoader process.
    res = subprocess.run(train_command(shards=s3_shards, run_dir=str(run), **{**SMALL, "num_workers": 1}),
                         env={**s3_server.subprocess_env(), "PYTHONPATH": str(REPO)}, cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert fingerprint(run) == fingerprint(reference_run)
    ours, theirs = (json.loads((r / "report.json").read_text())["test"] for r in (run, reference_run))
    assert ours == theirs


def test_thread_workers_read_s3_concurrently(s3_shards, s3_env, tiny_shards):
    """Two loader threads share the process's S3 client: the same batches as worker processes reading
    the same shards from disk."""
    threads = dataclasses.replace(LOADER, num_workers=2, worker_mode="thread")
    procs = dataclasses.replace(LOADER, num_workers=2)

    def batches(where, cfg) -> list:
        return [(c.sum().item(), labels.tolist()) for c, labels in loader.make_train_loader(where, cfg, epoch=2)]

    assert batches(s3_shards, threads) == batches(tiny_shards, procs)


def test_evaluate_and_inspect_read_s3(s3_shards, s3_env, reference_run, tiny_shards):
    remote = evaluate(reference_run / ckpt_io.BEST, s3_shards, split="val", device="cpu", num_workers=0)
    local = evaluate(reference_run / ckpt_io.BEST, tiny_shards, split="val", device="cpu", num_workers=0)
    assert {k: remote[k] for k in ("count", "top1", "top5", "loss")} == \
        {k: local[k] for k in ("count", "top1", "top5", "loss")}
    result = CliRunner().invoke(main, ["inspect", f"{s3_shards}/dataset.json", "--verify"])
    assert result.exit_code == 0, result.output
    assert "0 mismatches" in result.output


def test_wrong_credentials_fail_fast_naming_the_url(s3_shards, s3_env, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"s3://wlasl/remote-tiny/dataset.json: read: access denied"):
        storage.load_index(s3_shards)
    assert time.monotonic() - started < 5  # refused credentials are not retried


def test_missing_and_short_objects_are_named(odd_shards, s3_server_factory, monkeypatch):
    server = s3_server_factory()
    for name, value in server.subprocess_env().items():
        monkeypatch.setenv(name, value)
    server.put_dir(odd_shards, "ds")
    urls = data.shard_urls(server.url("ds"), "train")
    server.delete(urls[0].split("/", 3)[3])
    raw = (odd_shards / storage.load_index(odd_shards)["splits"]["train"]["shards"][1]["name"]).read_bytes()
    server.put(urls[1].split("/", 3)[3], raw[: len(raw) // 2])  # truncated upload
    parts = data.shard_parts(server.url("ds"), "train")
    errors = data.SkipCounter(10)
    samples = list(data.read_parts(parts[:2], errors))
    assert samples == [] and errors.skipped == 2
    assert f"{urls[0]}: read bytes 0-" in errors.reasons[0] and "no such object" in errors.reasons[0]
    assert f"{urls[1]}: object is {len(raw) // 2} bytes, expected {len(raw)}" in errors.reasons[1]
    with pytest.raises(data.DataError, match=f"shard {urls[0]} failed"):
        list(data.read_parts(parts[:1], data.SkipCounter(10), on_error="stop"))


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_server_dying_mid_epoch_ends_in_an_error_naming_the_shard(fault, tiny_shards, s3_server_factory, monkeypatch):
    """Killed (connections refused) or stalled (SIGSTOP: connections accepted, never answered) after the
    first batch: with the default timeouts the loader stops within 30 s with the shard's URL."""
    server = s3_server_factory()
    for name, value in server.subprocess_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WLASL_SHARDS_IO_CHUNK", "4096")  # many requests per shard: the fault hits mid-shard
    server.put_dir(tiny_shards, "ds")
    cfg = data.LoaderConfig(clip_len=8, crop_size=40, batch_size=1, num_workers=0, shuffle_buffer=0,
                            shard_errors="stop")
    batches = iter(loader.make_train_loader(server.url("ds"), cfg, epoch=0))
    next(batches)
    getattr(server, fault)()
    started = time.monotonic()
    with pytest.raises(data.DataError, match=r"shard s3://wlasl/ds/train/shard-\d+\.tar failed"):
        for _ in batches:
            pass
    assert time.monotonic() - started < 30
    if fault == "pause":
        server.resume()


def test_a_skipped_shard_keeps_the_epoch_length(odd_shards, s3_server_factory, monkeypatch):
    """shard_errors="skip": a shard that cannot be read is counted, and the rank reads on into other
    shards so it still yields exactly the planned batches (unequal counts would hang DDP)."""
    server = s3_server_factory()
    for name, value in server.subprocess_env().items():
        monkeypatch.setenv(name, value)
    server.put_dir(odd_shards, "ds")
    gone = data.shard_urls(server.url("ds"), "train")[0]
    server.delete(gone.split("/", 3)[3])
    batches = loader.make_train_loader(server.url("ds"), LOADER, epoch=0)
    assert sum(1 for _ in batches) == len(batches) == batches.num_batches
    assert batches.skipped >= 1 and any(gone in r for r in batches.skip_reasons)


# ------------------------------------------------------------------------------------------ HTTP


def test_train_loader_over_http_equals_disk(tiny_shards, http_server):
    for path in tiny_shards.rglob("*"):
        if path.is_file():
            dest = http_server.root / path.relative_to(tiny_shards)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(path.read_bytes())
    url = f"{http_server.url}/dataset.json"
    assert storage.load_index(url) == storage.load_index(tiny_shards)

    def batches(where) -> list:
        return [(c.sum().item(), labels.tolist()) for c, labels in loader.make_train_loader(where, LOADER, epoch=1)]

    assert batches(url) == batches(tiny_shards)


def test_http_stall_and_truncation_are_bounded(tiny_shards, http_server, monkeypatch):
    monkeypatch.setenv("WLASL_SHARDS_IO_READ_TIMEOUT", "1")
    monkeypatch.setenv("WLASL_SHARDS_IO_DEADLINE", "5")
    (http_server.root / "x.bin").write_bytes(os.urandom(100_000))
    url = http_server.url_for("x.bin")
    for fault in (lambda: http_server.stall_after(1000), lambda: http_server.truncate_after(1000),
                  lambda: http_server.status(503)):
        fault()
        started = time.monotonic()
        with pytest.raises(storage.StorageError, match=f"{url}: "):
            storage.open_read(url).read()
        assert time.monotonic() - started < 10
        http_server.clear()
        http_server.release()
    assert storage.open_read(url).read() == (http_server.root / "x.bin").read_bytes()


def test_writes_to_a_stalled_server_end_in_an_error(s3_server_factory, monkeypatch, tmp_path):
    """botocore's "Expect: 100-continue" would wait forever for a stalled server; storage drops it."""
    server = s3_server_factory()
    for name, value in server.subprocess_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WLASL_SHARDS_IO_READ_TIMEOUT", "2")
    monkeypatch.setenv("WLASL_SHARDS_IO_DEADLINE", "5")
    storage.write_bytes(server.url("w/ok.json"), b"{}")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(1 << 20))
    server.pause()
    for write in (lambda: storage.write_bytes(server.url("w/a.json"), b"{}"),
                  lambda: storage.upload(big, server.url("w/big.bin"))):
        started = time.monotonic()
        with pytest.raises(storage.StorageError, match=r"s3://wlasl/w/(a\.json|big\.bin): (write|upload) failed"):
            write()
        assert time.monotonic() - started < 15
    server.resume()
    assert server.get("w/ok.json") == b"{}"


def test_a_stalled_read_costs_one_read_timeout_per_attempt(s3_server_factory, monkeypatch):
    """botocore's own retry (its "max_attempts" counts retries) doubled every attempt on a stalled
    server: 2 x the read timeout, so dataset.json failed once in 17 s and the 30 s bound was missed."""
    server = s3_server_factory()
    for name, value in server.subprocess_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WLASL_SHARDS_IO_READ_TIMEOUT", "2")
    monkeypatch.setenv("WLASL_SHARDS_IO_DEADLINE", "3")
    server.put("st/dataset.json", b"{}")
    server.pause()
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"^s3://wlasl/st/dataset\.json: read failed 1 time\(s\) in 2 s: timed out"):
        storage.load_index(server.url("st"))
    assert 1.9 < time.monotonic() - started < 3.5  # one attempt of 2 s, not two


@pytest.mark.slow
def test_train_on_a_stalled_server_ends_within_30_s(s3_server_factory, tmp_path):
    """As a new user meets it, default timeouts: the server stalls before `train` starts; the command
    (Python start-up and all) ends with a one-line error naming dataset.json within the README's 30 s."""
    server = s3_server_factory()
    server.put("st/dataset.json", b"{}")
    server.pause()
    env = server.subprocess_env(run_env())
    env = {k: v for k, v in env.items() if not k.startswith("WLASL_SHARDS_IO_")}
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "wlasl_shards", "train", server.url("st"), str(tmp_path / "run")],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert res.returncode == 2 and elapsed < 30, (elapsed, res.stderr[-2000:])
    assert len(errors) == 1 and "Traceback" not in res.stderr
    # 8 s + 0.5 s + 8 s; a third could not end by 20 s
    assert errors[0].startswith("Error: s3://wlasl/st/dataset.json: read failed 2 time(s) in ")


def test_plain_webdataset_reads_s3_through_storage(s3_shards, s3_env, tiny_shards):
    """With storage's opener registered (explicitly, once: importing our modules patches nothing),
    wds.WebDataset over s3:// works, with our timeouts."""
    import importlib

    import webdataset as wds

    storage.register_webdataset()
    storage.register_webdataset()  # idempotent
    assert importlib.import_module("webdataset.gopen").gopen_schemes["s3"] is storage._gopen
    url = data.shard_urls(s3_shards, "train")[0]
    local = data.shard_urls(tiny_shards, "train")[0]

    def keys(u: str) -> list[tuple[str, bytes]]:
        return [(s["__key__"], s["json"]) for s in wds.WebDataset(u, shardshuffle=False, nodesplitter=None)]

    assert keys(url) == keys(local) and len(keys(url)) == storage.load_index(tiny_shards)["splits"]["train"]["samples"]
