"""`wlasl-shards build` straight into s3:// (a real SeaweedFS S3 server on 127.0.0.1, tests/servers.py):
the bucket ends up holding the very files a local build writes, dataset.json last; a build killed with
-9 resumes from the bucket alone (a new machine, empty staging); other options are refused against
the bucket; partitions write into it and `merge` reads it; a failed upload stops the build with the
URL named, and what was uploaded is kept for the re-run."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.preprocess.test_build import run_cli
from tests.servers import S3Server, free_ports
from wlasl_shards import storage
from wlasl_shards.preprocess.build import default_staging

# npy frames at 48 px, 64 KB shards: one video per shard, 16 shards over the 3 splits, no JPEG encoder.
ARGS = ("--size", "48", "--codec", "npy", "--shard-size", "64KB", "--no-progress")


def build(src: Path, out: str | Path, *extra: str, code: int = 0) -> str:
    return run_cli("build", src, out, *ARGS, "--workers", "1", *extra, code=code)


def build_cmd(src: Path, url: str, staging: Path) -> list[str]:
    return [sys.executable, "-m", "wlasl_shards", "build", str(src), url, *ARGS, "--workers", "2",
            "--staging", str(staging)]


def files(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (its .build state included), by "/"-separated relative name."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def objects(server: S3Server, prefix: str) -> dict[str, str]:
    """sha256 of every object under s3://bucket/prefix/, by name relative to the prefix."""
    return {k[len(prefix) + 1:]: hashlib.sha256(server.get(k)).hexdigest() for k in server.list(prefix + "/")}


def left_in(staging: Path) -> list[str]:
    return sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*"))


@pytest.fixture(scope="module")
def local_ref(tiny_wlasl, tmp_path_factory) -> Path:
    """The same build into a local directory: what the bucket must hold, byte for byte."""
    out = tmp_path_factory.mktemp("local_ref") / "shards"
    build(tiny_wlasl, out)
    return out


@pytest.fixture
def prefix() -> str:
    """A key prefix of the shared bucket that no other test writes."""
    return f"build-{uuid.uuid4().hex[:10]}"


def test_bucket_gets_a_local_builds_files_and_dataset_json_last(tiny_wlasl, local_ref, s3_env, prefix, tmp_path,
                                                                 monkeypatch):
    url, staging = s3_env.url(prefix), tmp_path / "staging"
    events: list[tuple[str, str]] = []  # (what, name relative to OUTPUT), in the order the build did them
    real = {"upload": storage.upload, "put": storage.write_bytes, "delete": storage.remove}

    def relative(target) -> str:
        return os.fspath(target)[len(url) + 1:]

    def upload(local, target):
        assert Path(local).is_relative_to(staging)  # shards are written in the staging directory
        events.append(("upload", relative(target)))
        real["upload"](local, target)

    def put(target, data):
        events.append(("put", relative(target)))
        real["put"](target, data)

    def delete(target):
        events.append(("delete", relative(target)))
        real["delete"](target)

    monkeypatch.setattr(storage, "upload", upload)
    monkeypatch.setattr(storage, "write_bytes", put)
    monkeypatch.setattr(storage, "remove", delete)
    text = build(tiny_wlasl, url, "--staging", staging)
    assert text.endswith(f"wrote {url}/dataset.json\n")
    assert objects(s3_env, prefix) == files(local_ref)  # shards, journals, params.json, dataset.json
    index = json.loads(s3_env.get(f"{prefix}/dataset.json"))
    names = [r["name"] for s in index["splits"].values() for r in s["shards"]]
    assert len(names) == 16
    assert events[0] == ("put", ".build/params.json") and events[-1] == ("put", "dataset.json")
    assert [e for e in events if e[1] == "dataset.json"] == [events[-1]]
    uploads = [i for i, e in enumerate(events) if e[0] == "upload"]
    assert [events[i][1] for i in uploads] == names  # in order, each once, and nothing else uploaded
    for i in uploads:  # each shard's journal line is published right after the shard, never before it
        assert events[i + 1] == ("put", f".build/{events[i][1].split('/')[0]}.jsonl")
    assert not any(e[0] == "delete" for e in events)
    assert left_in(staging) == []  # staged shards went with their upload, journals at the end
    # a complete build re-run: nothing converted or uploaded, dataset.json rewritten with the same bytes
    events.clear()
    build(tiny_wlasl, url, "--staging", staging)
    assert events == [("put", "dataset.json")]
    assert objects(s3_env, prefix) == files(local_ref)


@pytest.mark.slow
def test_killed_with_9_resumes_from_the_bucket_alone(tiny_wlasl, local_ref, s3_server, prefix, tmp_path):
    url, env = s3_server.url(prefix), s3_server.subprocess_env()
    first, second = tmp_path / "machine1", tmp_path / "machine2"
    proc = subprocess.Popen(build_cmd(tiny_wlasl, url, first), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while f"{prefix}/train/shard-000001.tar" not in s3_server.list(f"{prefix}/train/"):
            assert time.monotonic() < deadline and proc.poll() is None, "no second shard in the bucket"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group, as a machine crash would
        proc.wait()
    keys = s3_server.list(f"{prefix}/")
    assert f"{prefix}/dataset.json" not in keys and f"{prefix}/.build/params.json" in keys
    shutil.rmtree(first)  # the first machine is gone: a new one starts with an empty staging directory
    subprocess.run(build_cmd(tiny_wlasl, url, second), env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120)
    assert objects(s3_server, prefix) == files(local_ref)
    assert left_in(second) == []


def test_the_buckets_journal_decides_and_unjournaled_shards_are_deleted(tiny_wlasl, local_ref, s3_env, prefix,
                                                                        tmp_path):
    url, staging = s3_env.url(prefix), tmp_path / "staging"
    s3_env.put_dir(local_ref, prefix)  # a local build's files are a bucket build's: the same bytes
    journal = s3_env.get(f"{prefix}/.build/train.jsonl").decode().splitlines(keepends=True)
    assert len(journal) == 8
    # Killed after uploading train shard 3 and before its journal line reached the bucket (shards 1-3 are
    # then in the bucket but not in its journal) ...
    s3_env.put(f"{prefix}/.build/train.jsonl", journal[0].encode())
    s3_env.put(f"{prefix}/train/shard-000099.tar", b"uploaded right before the kill")
    s3_env.delete(f"{prefix}/dataset.json")
    for split in ("val", "test"):
        s3_env.delete(f"{prefix}/.build/{split}.jsonl")
    # ... while this machine's staging holds a stale journal (were it read, the bucket's would end up with
    # its lines) and a shard in flight.
    stale = json.loads(journal[1])
    stale["shard"]["frames"] = 999
    (staging / ".build").mkdir(parents=True)
    (staging / ".build" / "train.jsonl").write_text(journal[0] + json.dumps(stale) + "\n" + "".join(journal[2:4]))
    (staging / "train").mkdir()
    (staging / "train" / "shard-000004.tar.tmp").write_bytes(b"partial")
    build(tiny_wlasl, url, "--staging", staging)
    assert objects(s3_env, prefix) == files(local_ref)
    assert left_in(staging) == []


def test_other_options_are_refused_against_the_bucket_unless_overwrite(tiny_wlasl, local_ref, s3_env, prefix,
                                                                       tmp_path):
    url = s3_env.url(prefix)
    s3_env.put_dir(local_ref, prefix)
    s3_env.put(f"{prefix}/.partitions/0-of-2.json", b"{}")  # from an older build: also replaced
    before = objects(s3_env, prefix)
    text = build(tiny_wlasl, url, "--fps", "10", "--staging", tmp_path / "a", code=2)
    # what keeps the finished work comes first; --overwrite, which discards it, last (issue 12 item 12)
    assert text == (f"Error: OUTPUT {url!r} was built with other options (fps: 25.0 -> 10.0); to keep what it has "
                    "built, re-run with the options recorded in .build/params.json, or choose another OUTPUT; "
                    "--overwrite discards what it has built and starts again\n")
    text = build(tiny_wlasl, url, "--partition", "0/2", "--staging", tmp_path / "a", code=2)
    assert ("was built with other options (partitions: 1 -> 2); to keep what it has built, re-run with the options "
            "recorded in .build/params.json, or choose another OUTPUT\n") in text
    assert objects(s3_env, prefix) == before
    build(tiny_wlasl, url, "--fps", "10", "--overwrite", "--staging", tmp_path / "b")
    index = json.loads(s3_env.get(f"{prefix}/dataset.json"))
    assert index["params"]["fps"] == 10.0 and json.loads(s3_env.get(f"{prefix}/.build/params.json"))["fps"] == 10.0
    # nothing of the old build is left: exactly the new build's shards and state
    names = {r["name"] for s in index["splits"].values() for r in s["shards"]}
    assert set(objects(s3_env, prefix)) == names | {"dataset.json", ".build/params.json", ".build/train.jsonl",
                                                    ".build/val.jsonl", ".build/test.jsonl"}
    for split in index["splits"].values():
        for rec in split["shards"]:
            assert hashlib.sha256(s3_env.get(f"{prefix}/{rec['name']}")).hexdigest() == rec["sha256"]
    s3_env.put(f"{prefix}-other/notes.txt", b"mine")
    text = build(tiny_wlasl, f"{url}-other", code=2)
    assert f"OUTPUT '{url}-other' holds files that are not a wlasl-shards build" in text
    assert s3_env.list(f"{prefix}-other/") == [f"{prefix}-other/notes.txt"]


@pytest.mark.parametrize("output, message", [
    ("http://127.0.0.1:9/shards", "OUTPUT must be a local directory or an s3:// URL, got 'http://127.0.0.1:9/shards' "
                                  "(http:// is read-only here; build into a local directory and copy it, or into an "
                                  "S3-compatible store through AWS_ENDPOINT_URL)"),
    ("https://example.org/shards", "(https:// is read-only here;"),
    ("gs://bucket/shards", "got 'gs://bucket/shards' (gs:// is read-only here;"),
    ("s3://", "OUTPUT must name a bucket, e.g. s3://bucket/prefix, got 's3://'"),
    ("ftp://host/shards", "unsupported URL scheme ftp://"),
])
def test_unwritable_outputs_are_one_line_errors(tiny_wlasl, output, message):
    text = build(tiny_wlasl, output, code=2)
    assert text.startswith("Error: ") and message in text and text.count("\n") == 1


def test_staging_is_for_remote_outputs_only(tiny_wlasl, tmp_path):
    text = build(tiny_wlasl, tmp_path / "out", "--staging", tmp_path / "st", code=2)
    assert text == (f"Error: --staging is for a remote OUTPUT (s3://...); a local OUTPUT is written in place, "
                    f"got --staging '{tmp_path / 'st'}' with OUTPUT '{tmp_path / 'out'}'\n")
    assert not (tmp_path / "out").exists() and not (tmp_path / "st").exists()


def test_default_staging_is_per_url_and_partition_under_the_temp_dir():
    a = default_staging("s3://b/x")
    assert a.parent == Path(tempfile.gettempdir()) / "wlasl-shards-staging"
    assert a == default_staging("s3://b/x/")  # the same OUTPUT
    assert len({a, default_staging("s3://b/y"), default_staging("s3://b/x", 0), default_staging("s3://b/x", 1)}) == 4


def test_partitions_into_a_bucket_and_merge(tiny_wlasl, s3_env, prefix, tmp_path):
    url = s3_env.url(prefix)
    local = tmp_path / "local"
    for i in range(2):
        build(tiny_wlasl, local, "--partition", f"{i}/2")
    text = build(tiny_wlasl, url, "--partition", "0/2")
    assert f"the last partition to finish writes {url}/dataset.json (or run: wlasl-shards merge {url})" in text
    assert f"{prefix}/dataset.json" not in s3_env.list(f"{prefix}/")
    assert run_cli("merge", url, code=2).startswith("Error: 1 of 2 partitions have not finished: 1 (no ")
    # partition 1 was killed once right after an upload: its stray goes, partition 0's shards stay
    s3_env.put(f"{prefix}/train/shard-p0001-000042.tar", b"uploaded right before the kill")
    assert f"wrote {url}/dataset.json" in build(tiny_wlasl, url, "--partition", "1/2")
    assert objects(s3_env, prefix) == files(local)  # shards, journals, partial indexes, dataset.json
    assert not default_staging(url, 0).exists() and not default_staging(url, 1).exists()
    s3_env.delete(f"{prefix}/dataset.json")
    assert run_cli("merge", url).endswith(f"wrote {url}/dataset.json\n")
    assert objects(s3_env, prefix) == files(local)


def test_a_failed_upload_names_the_url_and_the_rerun_finishes(tiny_wlasl, local_ref, s3_env, prefix, tmp_path,
                                                              monkeypatch):
    url, staging = s3_env.url(prefix), tmp_path / "staging"
    real_upload, sent = storage.upload, []

    def upload(local, target):  # the store becomes unreachable while the third shard is on its way
        sent.append(target)
        if len(sent) == 3:
            (port,) = free_ports(1)
            monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")  # nobody listens there
            monkeypatch.setenv("WLASL_SHARDS_IO_DEADLINE", "0.1")  # given up after the first refusal
        real_upload(local, target)

    monkeypatch.setattr(storage, "upload", upload)
    text = build(tiny_wlasl, url, "--staging", staging, code=2)
    assert re.fullmatch(rf"Error: {re.escape(url)}/train/shard-000002\.tar: upload failed 1 time\(s\) in \d+ s: "
                        r"EndpointConnectionError: .*; what was uploaded is kept: re-run the same command to resume\n",
                        text), text
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint_url)
    monkeypatch.delenv("WLASL_SHARDS_IO_DEADLINE")
    keys = s3_env.list(f"{prefix}/")
    assert f"{prefix}/train/shard-000001.tar" in keys and f"{prefix}/train/shard-000002.tar" not in keys
    assert f"{prefix}/dataset.json" not in keys
    assert len(s3_env.get(f"{prefix}/.build/train.jsonl").splitlines()) == 2
    monkeypatch.setattr(storage, "upload", real_upload)
    build(tiny_wlasl, url, "--staging", staging)
    assert objects(s3_env, prefix) == files(local_ref)
    assert left_in(staging) == []
