"""The local cache of remote shards (`wlasl_shards.cache`) against a real S3 server (SeaweedFS): epochs
and evaluation after the server is gone, damaged copies, eviction, readers sharing one directory."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.train.conftest import SMALL
from wlasl_shards import cache, storage
from wlasl_shards.api import evaluate
from wlasl_shards.cli import parse_bytes
from wlasl_shards.train import checkpoint as ckpt_io
from wlasl_shards.train import data
from wlasl_shards.train.loop import TrainConfig, train
from wlasl_shards.train.models import InceptionI3d
from wlasl_shards.train.plan import ShardPart
from wlasl_shards.train.records import read_metrics


@pytest.fixture
def server(tiny_shards, s3_server_factory, monkeypatch):
    srv = s3_server_factory()
    for name, value in srv.subprocess_env().items():
        monkeypatch.setenv(name, value)
    srv.put_dir(tiny_shards, "ds")
    return srv


def keys(samples) -> list[tuple[str, bytes]]:
    return [(s["__key__"], s["json"]) for s in samples]


def cached_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file())


def test_epochs_and_evaluation_run_from_the_cache_after_the_server_is_gone(server, tiny_shards, tmp_path,
                                                                          monkeypatch):
    """Epoch 1 streams from S3 into the cache; the server is killed once epoch 1's last.pt is written;
    epoch 2, its validation, the final test and `evaluate` then read the cache only, and give the
    weights and figures of the same run on local disk."""
    url, where = server.url("ds"), tmp_path / "cache"
    torch.set_num_threads(1)
    index = storage.load_index(tiny_shards)
    # The test split is first read after the last epoch: read it into the cache while the server is up.
    shard_cache = cache.ShardCache(where)
    assert len(list(data.read_parts(data.shard_parts(url, "test"), data.SkipCounter(0), shard_cache=shard_cache))) \
        == index["splits"]["test"]["samples"]
    real_save = ckpt_io.save

    def save_then_kill(path, ck):
        real_save(path, ck)
        if ck["epoch"] == 1 and Path(path).name == ckpt_io.LAST and server.running:
            server.kill()

    monkeypatch.setattr(ckpt_io, "save", save_then_kill)
    remote = train(TrainConfig(shards=url, run_dir=str(tmp_path / "remote"), cache_dir=str(where), **SMALL))
    assert not server.running
    monkeypatch.setattr(ckpt_io, "save", real_save)
    local = train(TrainConfig(shards=str(tiny_shards), run_dir=str(tmp_path / "local"), **SMALL))
    assert remote["test"] == local["test"] and remote["best_val"] == local["best_val"]
    ours, theirs = (ckpt_io.load(tmp_path / r / ckpt_io.LAST)["model"] for r in ("remote", "local"))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)

    n_train = len(index["splits"]["train"]["shards"])
    epochs = [r for r in read_metrics(tmp_path / "remote" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert epochs[0]["train"]["cache"] == {"fetched": n_train}
    assert epochs[1]["train"]["cache"] == {"hits": n_train}
    # Every dataset shard is in the cache, named by its sha256, and dataset.json's copy.
    shas = sorted(s["sha256"] + ".tar" for split in index["splits"].values() for s in split["shards"])
    assert cached_files(where) == shas and len(os.listdir(where / cache.INDEXES)) == 1

    best = tmp_path / "remote" / ckpt_io.BEST
    for split in ("val", "test"):
        got = evaluate(best, url, split=split, device="cpu", num_workers=0, progress=False, cache_dir=str(where))
        want = evaluate(best, tiny_shards, split=split, device="cpu", num_workers=0, progress=False)
        assert {k: got[k] for k in ("count", "top1", "top5", "loss")} == \
            {k: want[k] for k in ("count", "top1", "top5", "loss")}


def test_a_damaged_copy_is_deleted_counted_and_fetched_again(server, tmp_path):
    part = data.shard_parts(server.url("ds"), "train")[0]
    shard_cache = cache.ShardCache(tmp_path / "c")
    first = keys(data.read_parts([part], data.SkipCounter(0), shard_cache=shard_cache))
    copy = Path(shard_cache.path(part.sha256))
    raw = bytearray(copy.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte: same size, other hash
    copy.write_bytes(bytes(raw))
    again = keys(data.read_parts([part], data.SkipCounter(0), shard_cache=shard_cache))
    assert again == first
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == part.sha256  # the copy is whole again
    assert shard_cache.counts == {"fetched": 2, "corrupt": 1}
    server.kill()
    assert keys(data.read_parts([part], data.SkipCounter(0), shard_cache=shard_cache)) == first
    assert shard_cache.counts == {"fetched": 2, "corrupt": 1, "hits": 1}


def test_least_recently_used_shards_are_evicted_under_the_limit(server, tmp_path):
    parts = [p for split in ("train", "val", "test") for p in data.shard_parts(server.url("ds"), split)]
    a, b, c = parts[:3]
    shard_cache = cache.ShardCache(tmp_path / "c", limit=a.nbytes + b.nbytes + min(p.nbytes for p in parts) - 1)
    assert a.nbytes + b.nbytes <= shard_cache.limit < a.nbytes + b.nbytes + c.nbytes

    def read(part: ShardPart) -> None:
        assert list(data.read_parts([part], data.SkipCounter(0), shard_cache=shard_cache))
        time.sleep(0.02)  # distinct mtimes

    for part in (a, b, a, c):  # a used again after b: b is the least recently used when c comes
        read(part)
    assert cached_files(tmp_path / "c") == sorted([a.sha256 + ".tar", c.sha256 + ".tar"])
    assert shard_cache.counts == {"fetched": 3, "hits": 1, "evicted": 1}
    small = cache.ShardCache(tmp_path / "s", limit=min(p.nbytes for p in parts) - 1)  # no shard fits
    read_all = list(data.read_parts(parts[:2], data.SkipCounter(0), shard_cache=small))
    assert len(read_all) == sum(p.samples for p in parts[:2]) and small.counts == {"uncached": 2}
    assert not (tmp_path / "s").exists() or cached_files(tmp_path / "s") == []


def test_readers_share_one_directory_and_a_cut_part_caches_the_whole_shard(server, tmp_path):
    """Four threads miss the same shard at once: each reads it right and one copy remains, no temporary.
    A part that stops after one sample still leaves the whole shard in the cache."""
    part = data.shard_parts(server.url("ds"), "train")[0]
    where = tmp_path / "c"
    results: list[list] = []

    def reader() -> None:
        results.append(keys(data.read_parts([part], data.SkipCounter(0), shard_cache=cache.ShardCache(where))))

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(r == results[0] for r in results) and len(results[0]) == part.samples
    assert cached_files(where) == [part.sha256 + ".tar"]

    other = data.shard_parts(server.url("ds"), "val")[0]
    cut = dataclasses.replace(other, stop=1)
    assert len(list(data.read_parts([cut], data.SkipCounter(0), shard_cache=cache.ShardCache(where)))) == 1
    assert hashlib.sha256((where / (other.sha256 + ".tar")).read_bytes()).hexdigest() == other.sha256


def test_local_shards_and_unchecked_shards_are_not_cached(server, tiny_shards, tmp_path):
    shard_cache = cache.ShardCache(tmp_path / "c")
    local = data.shard_parts(tiny_shards, "train")[:1]
    assert list(data.read_parts(local, data.SkipCounter(0), shard_cache=shard_cache))
    unchecked = dataclasses.replace(data.shard_parts(server.url("ds"), "train")[0], sha256=None)
    assert list(data.read_parts([unchecked], data.SkipCounter(0), shard_cache=shard_cache))
    assert shard_cache.counts == {"uncached": 1} and not (tmp_path / "c").exists()


def test_bad_cache_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="--cache-limit needs --cache-dir"):
        data.LoaderConfig(cache_limit=1 << 30).check()
    with pytest.raises(ValueError, match="--cache-limit must be > 0, got 0"):
        data.LoaderConfig(cache_dir=str(tmp_path), cache_limit=0).check()
    with pytest.raises(ValueError, match="--cache-dir must be a local directory, got 's3://b/c'"):
        TrainConfig(shards="x", run_dir="y", cache_dir="s3://b/c").check()
    assert parse_bytes("20GB", "--cache-limit") == 20 << 30
    with pytest.raises(ValueError, match="--cache-limit must look like 128MB, 1GB or 500000, got '20XB'"):
        parse_bytes("20XB", "--cache-limit")


def test_features_run_from_the_cache_after_the_server_is_gone(server, tiny_shards, tmp_path):
    from wlasl_shards.train.features import FeaturesConfig, extract

    torch.manual_seed(1)
    weights = tmp_path / "rgb_imagenet.pt"
    torch.save(InceptionI3d(400).state_dict(), weights)
    where = str(tmp_path / "cache")

    def run(shards: str, out: str, **kw) -> dict:
        return extract(FeaturesConfig(checkpoint=str(weights), shards=shards, out=str(tmp_path / out),
                                      splits=("test",), device="cpu", num_workers=0, progress=False, **kw))

    first = run(server.url("ds"), "first", cache_dir=where)
    server.kill()
    again = run(server.url("ds"), "again", cache_dir=where)
    local = run(str(tiny_shards), "local")
    assert again["splits"] == first["splits"] == local["splits"] and first["splits"]["test"]["samples"] == 4
    for name in (r["name"] for r in first["splits"]["test"]["shards"]):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "first" / name).read_bytes() \
            == (tmp_path / "local" / name).read_bytes()


def test_cli_cache_options_reach_the_config(tmp_path):
    from click.testing import CliRunner

    from wlasl_shards.cli import main

    for command in (["train", "s3://b/ds", str(tmp_path / "run")], ["evaluate", str(tmp_path / "x.pt"), "s3://b/ds"],
                    ["features", str(tmp_path / "x.pt"), "s3://b/ds", str(tmp_path / "out")]):
        result = CliRunner().invoke(main, [*command, "--cache-limit", "20GB"])
        assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == \
            "Error: --cache-limit needs --cache-dir", (command, result.output)
        result = CliRunner().invoke(main, [*command, "--cache-dir", str(tmp_path / "c"), "--cache-limit", "lots"])
        assert result.exit_code == 2 and "--cache-limit must look like 128MB, 1GB or 500000, got 'lots'" \
            in result.output, (command, result.output)


def test_the_dataset_json_copy_stands_in_only_for_an_unreachable_server(server, tmp_path, monkeypatch):
    """Refused credentials are an error, as without a cache; a killed server is not: the copy stands in."""
    shard_cache = cache.ShardCache(tmp_path / "c")
    index = shard_cache.load_index(server.url("ds"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(ValueError, match=r"s3://wlasl/ds/dataset.json: read: access denied"):
        shard_cache.load_index(server.url("ds"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.subprocess_env()["AWS_SECRET_ACCESS_KEY"])
    monkeypatch.setenv("WLASL_SHARDS_IO_DEADLINE", "3")
    server.kill()
    assert shard_cache.load_index(server.url("ds")) == index
    with pytest.raises(ValueError, match=r"s3://wlasl/ds/dataset.json: read failed \d+ time\(s\)"):
        cache.ShardCache(tmp_path / "empty").load_index(server.url("ds"))  # no copy to stand in
