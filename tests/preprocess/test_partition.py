"""`build --partition I/N` and `merge` through the real CLI: N partitions into one OUTPUT make the
dataset a single build makes (same samples, same metadata), each resumes on its own, and nothing
half-built is ever published as dataset.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wlasl_json, write_quadrants
from tests.preprocess.test_build import _wait_for, run_cli, tear_journal, tree_digest
from wlasl_shards import shards
from wlasl_shards.preprocess.build import BuildConfig, parse_partition

# npy frames at 48 px: every video is larger than the smallest shard bound, so each partition writes
# several shards per split, and nothing depends on a JPEG encoder.
ARGS = ("--size", "48", "--codec", "npy", "--shard-size", "64KB", "--no-progress")


def build(src: Path, out: Path, *extra: str, code: int = 0) -> str:
    return run_cli("build", src, out, *ARGS, "--workers", "1", *extra, code=code)


def contents(out: Path) -> dict[str, tuple[bytes, bytes, bytes]]:
    """Every sample of every shard dataset.json lists: key -> (json, cls, frames) bytes."""
    index = json.loads((out / shards.INDEX_NAME).read_text())
    found: dict[str, tuple[bytes, bytes, bytes]] = {}
    for split in index["splits"].values():
        for rec in split["shards"]:
            with open(out / rec["name"], "rb") as f:
                for s in shards.read_samples(f):
                    assert s["__key__"] not in found, s["__key__"]
                    found[s["__key__"]] = (s["json"], s["cls"], s["npy"])
    return found


def keys_of(out: Path, names: list[str]) -> list[str]:
    keys = []
    for name in names:
        with open(out / name, "rb") as f:
            keys += [s["__key__"] for s in shards.read_samples(f)]
    return keys


def facts(index: dict) -> dict:
    """dataset.json without what depends on how samples are grouped into shards (names, bytes, order of failures)."""
    out = {k: v for k, v in index.items() if k not in ("splits", "totals", "failed")}
    out["splits"] = {k: {f: v for f, v in s.items() if f not in ("shards", "bytes")}
                     for k, s in index["splits"].items()}
    out["totals"] = {k: v for k, v in index["totals"].items() if k not in ("shards", "bytes")}
    out["failed"] = sorted(index["failed"], key=lambda f: f["video_id"])
    return out


@pytest.fixture(scope="module")
def odd_src(tmp_path_factory) -> Path:
    """8 good videos of 3 glosses over the 3 splits, 2 that fail (empty, too short), 1 that is missing."""
    src = tmp_path_factory.mktemp("odd_src")
    glosses: dict[str, list[dict]] = {"a": [], "b": [], "c": []}
    for n in range(8):
        vid = f"v{n}"
        write_quadrants(src / "videos" / f"{vid}.mp4", 96 + 8 * n, 128, 12 + n)
        glosses["abc"[n % 3]].append({"video_id": vid, "split": ("train", "train", "val", "test")[n % 4]})
    (src / "videos" / "empty.mp4").write_bytes(b"")
    write_quadrants(src / "videos" / "short.mp4", 96, 128, 5)
    glosses["a"] += [{"video_id": "empty"}, {"video_id": "short", "split": "val"}, {"video_id": "absent"}]
    wlasl_json(src, glosses)
    return src


@pytest.mark.parametrize("source, failed, missing", [("tiny_wlasl", 0, 0), ("odd_src", 2, 1)])
def test_partitions_together_equal_a_single_build(request, tmp_path, source, failed, missing):
    src = request.getfixturevalue(source)
    single, out = tmp_path / "single", tmp_path / "parts"
    build(src, single)
    keys: list[set[str]] = []
    for i in range(3):
        text = build(src, out, "--partition", f"{i}/3")
        # dataset.json appears with the last partition, not before
        assert (out / shards.INDEX_NAME).exists() == (i == 2), text
        if i < 2:
            assert text.startswith(f"partition {i}/3: ") and "the last partition to finish writes" in text
        partial = json.loads((out / ".partitions" / f"{i}-of-3.json").read_text())
        assert (partial["partition"], partial["partitions"]) == (i, 3)
        names = [r["name"] for s in partial["splits"].values() for r in s["shards"]]
        assert names and all(n.split("/")[1].startswith(f"shard-p{i:04d}-") for n in names)
        keys.append(set(keys_of(out, names)))
    assert f"wrote {out / shards.INDEX_NAME}" in text
    a = json.loads((single / shards.INDEX_NAME).read_text())
    b = json.loads((out / shards.INDEX_NAME).read_text())
    # disjoint shares that together are everything
    assert sum(map(len, keys)) == len(set().union(*keys)) == a["totals"]["samples"] > 0
    assert all(keys)
    assert facts(b) == facts(a)
    assert (len(a["failed"]), len(a["missing"])) == (failed, missing)
    assert contents(out) == contents(single)
    # a partition numbers its own shards from 0, as a whole build does
    merged = [r["name"] for s in b["splits"].values() for r in s["shards"]]
    assert "train/shard-p0000-000000.tar" in merged and "train/shard-p0000-000001.tar" in merged
    assert "0 mismatches" in run_cli("inspect", out, "--verify")
    # merging again (as two partitions finishing together would) writes the same bytes
    before = (out / shards.INDEX_NAME).read_bytes()
    assert "wrote" in run_cli("merge", out)
    assert (out / shards.INDEX_NAME).read_bytes() == before


def test_merge_names_missing_partitions_and_writes_nothing(tiny_wlasl, tmp_path):
    out = tmp_path / "out"
    build(tiny_wlasl, out, "--partition", "3/7")
    before = tree_digest(out)
    text = run_cli("merge", out, code=2)
    assert text.startswith("Error: 6 of 7 partitions have not finished: 0-2, 4-6") and "Traceback" not in text
    assert tree_digest(out) == before and not (out / shards.INDEX_NAME).exists()
    # a partial index that claims another partition's place, or read another source, is refused too
    parts = out / ".partitions"
    mine = json.loads((parts / "3-of-7.json").read_text())
    for i in (0, 1, 2, 4, 5, 6):
        (parts / f"{i}-of-7.json").write_text(json.dumps({**mine, "partition": i}))
    (parts / "0-of-7.json").write_text(json.dumps(mine))
    assert "0-of-7.json in" in run_cli("merge", out, code=2)
    assert "is not the partial index of partition 0/7" in run_cli("merge", out, code=2)
    (parts / "0-of-7.json").write_text(json.dumps({**mine, "partition": 0, "classes": ["x"]}))
    assert "partitions 0/7 and 1/7 read different sources (classes differ)" in run_cli("merge", out, code=2)
    (parts / "0-of-7.json").write_text(json.dumps({**mine, "partition": 0, "params": {**mine["params"], "fps": 5.0}}))
    assert "partition 0/7 was built with other options than" in run_cli("merge", out, code=2)
    assert not (out / shards.INDEX_NAME).exists()
    plain = tmp_path / "plain"
    build(tiny_wlasl, plain)
    assert "was not built with --partition" in run_cli("merge", plain, code=2)
    assert "not a wlasl-shards build" in run_cli("merge", tmp_path / "nothing", code=2)


def test_other_options_or_partition_counts_are_refused(tiny_wlasl, tmp_path):
    out = tmp_path / "out"
    build(tiny_wlasl, out, "--partition", "0/3")
    before = tree_digest(out)
    # what keeps the finished shards is offered first, --overwrite last and never to a partition (issue 12 item 12)
    keep = ("; to keep 7 finished shard(s), re-run with the options recorded in .build/params.json, or choose "
            "another OUTPUT")
    for extra, message in [(["--partition", "1/3", "--fps", "10"], f"(fps: 25.0 -> 10.0){keep}\n"),
                           (["--partition", "1/4"], "(partitions: 3 -> 4)"),
                           ([], f"(partitions: 3 -> 1){keep}; --overwrite discards 7 finished shard(s)"),
                           (["--partition", "1/3", "--overwrite"], "--overwrite cannot be combined with --partition")]:
        text = build(tiny_wlasl, out, *extra, code=2)
        assert message in text and "Traceback" not in text
    assert tree_digest(out) == before
    plain = tmp_path / "plain"
    build(tiny_wlasl, plain)
    assert "(partitions: 1 -> 3)" in build(tiny_wlasl, plain, "--partition", "0/3", code=2)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert "not a wlasl-shards build" in build(tiny_wlasl, other, "--partition", "0/3", code=2)
    # .build alone, no params.json yet: another partition is starting; join it
    starting = tmp_path / "starting"
    (starting / ".build").mkdir(parents=True)
    build(tiny_wlasl, starting, "--partition", "2/3")
    assert (starting / ".partitions" / "2-of-3.json").is_file()


@pytest.mark.parametrize("value, message", [
    ("3", "--partition must look like I/N, e.g. 0/8 (I is 0-based), got '3'"),
    ("a/b", "--partition must look like I/N, e.g. 0/8 (I is 0-based), got 'a/b'"),
    ("-1/3", "--partition must look like I/N, e.g. 0/8 (I is 0-based), got '-1/3'"),
    ("3/3", "--partition I must be in 0..2 (0-based, as SLURM_ARRAY_TASK_ID and JOB_COMPLETION_INDEX are), got '3/3'"),
    ("1/0", "--partition N must be >= 1, got '1/0'"),
])
def test_bad_partition_values_exit_2_and_write_nothing(tiny_wlasl, tmp_path, value, message):
    text = build(tiny_wlasl, tmp_path / "out", "--partition", value, code=2)
    assert text == f"Error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_partition_parsing_and_config_check():
    assert parse_partition("0/1") == (0, 1) and parse_partition(" 7 / 8 ") == (7, 8)
    with pytest.raises(ValueError, match="--partition must be I/N with 0 <= I < N, got 2/2"):
        BuildConfig(source="x", partition=2, partitions=2).check()
    assert "partition" not in BuildConfig(source="x", partition=1, partitions=2).params()


def test_partition_resume_keeps_other_partitions_files(tiny_wlasl, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    build(tiny_wlasl, ref, "--partition", "1/3")
    build(tiny_wlasl, out, "--partition", "1/3")
    tear_journal(out / ".build" / "train.p0001.jsonl", out / "train" / "shard-p0001-000009.tar.tmp")  # ours
    theirs = out / "train" / "shard-p0000-000000.tar.tmp"  # partition 0 writing it right now
    theirs.write_bytes(b"in flight")
    (out / ".partitions" / "1-of-3.json").unlink()
    build(tiny_wlasl, out, "--partition", "1/3")
    assert theirs.read_bytes() == b"in flight"
    theirs.unlink()
    assert tree_digest(out) == tree_digest(ref)


@pytest.mark.slow
def test_partition_killed_with_9_resumes_to_an_uninterrupted_result(tiny_wlasl, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    build(tiny_wlasl, ref, "--partition", "1/3")
    cmd = [sys.executable, "-m", "wlasl_shards", "build", str(tiny_wlasl), str(out), *ARGS, "--workers", "2",
           "--partition", "1/3"]
    proc = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    _wait_for(out, "train/shard-p0001-000000.tar")
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group, as a machine crash would
    proc.wait()
    assert not (out / ".partitions" / "1-of-3.json").exists()  # killed before it finished
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    assert tree_digest(out) == tree_digest(ref)
    assert not list(out.rglob("*.tmp"))


@pytest.mark.slow
def test_partitions_started_together_publish_one_complete_dataset(tiny_wlasl, tmp_path):
    single, out = tmp_path / "single", tmp_path / "parts"
    build(tiny_wlasl, single)
    procs = [subprocess.Popen([sys.executable, "-m", "wlasl_shards", "build", str(tiny_wlasl), str(out), *ARGS,
                               "--workers", "1", "--partition", f"{i}/3"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert contents(out) == contents(single)
    assert facts(json.loads((out / shards.INDEX_NAME).read_text())) == facts(
        json.loads((single / shards.INDEX_NAME).read_text()))
    assert not list(out.rglob("*.tmp"))
