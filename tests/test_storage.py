"""storage.py on its own: URL helpers, the retry/deadline policy (on a fake clock), NotFound, the JSON-lines journal."""

from __future__ import annotations

import json
import logging
import math

import pytest

from wlasl_shards import shards, storage

# ------------------------------------------------------------------------------------------- URLs


def test_scheme_and_is_remote():
    assert storage.scheme("s3://bucket/x") == "s3" and storage.scheme("S3://bucket/x") == "s3"
    assert storage.scheme("gcs://b/x") == "gs" and storage.scheme("gs://b/x") == "gs"
    assert storage.scheme("https://host/x") == "https" and storage.scheme("http://host/x") == "http"
    for local in ("shards", "/data/shards", "file:///data/shards", "C:\\data\\shards"):
        assert storage.scheme(local) == "" and not storage.is_remote(local)
    assert storage.is_remote("s3://bucket") and storage.is_remote("http://host/d")
    with pytest.raises(ValueError, match=r"'ftp://host/x': unsupported URL scheme ftp://"):
        storage.scheme("ftp://host/x")


def test_local_path_join_and_parent(tmp_path):
    assert storage.local_path("file:///data/a%20b") == "/data/a b"
    assert storage.local_path("/data/x") == "/data/x" and storage.local_path(tmp_path) == str(tmp_path)
    assert storage.join("/data", "train", "s.tar") == "/data/train/s.tar"
    assert storage.join("file:///data", "x") == "/data/x"
    assert storage.join("s3://bucket/pre", "train", "s.tar") == "s3://bucket/pre/train/s.tar"
    assert storage.join("s3://bucket", "a") == "s3://bucket/a"
    assert storage.join("https://host/d?sig=1", "a.json") == "https://host/d/a.json?sig=1"  # the query stays
    assert storage.parent("s3://bucket/pre/dataset.json") == "s3://bucket/pre"
    assert storage.parent("s3://bucket/pre/") == "s3://bucket/"  # the bucket root
    assert storage.parent(tmp_path / "a" / "b") == str(tmp_path / "a")


def test_dataset_root_and_url(tmp_path):
    (tmp_path / shards.INDEX_NAME).write_text("{}")
    (tmp_path / "other.json").write_text("{}")
    assert storage.dataset_root(tmp_path) == str(tmp_path)
    assert storage.dataset_root(tmp_path / shards.INDEX_NAME) == str(tmp_path)
    assert storage.dataset_root(tmp_path / "other.json") == str(tmp_path)  # any file: its folder
    assert storage.dataset_root("s3://b/p/dataset.json") == "s3://b/p"
    assert storage.dataset_root("s3://b/p/") == "s3://b/p"
    assert storage.dataset_url("s3://b/p") == "s3://b/p/dataset.json"
    assert storage.dataset_url("s3://b/p/dataset.json", "train/shard-000000.tar") == "s3://b/p/train/shard-000000.tar"
    assert storage.dataset_url(tmp_path, "val/x.tar") == str(tmp_path / "val" / "x.tar")


# -------------------------------------------------------------------------------------- retries


class FakeClock:
    """storage's `time`: monotonic() returns the fake now; sleep() advances it and records the wait."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(storage, "time", fake)
    return fake


POLICY = storage.IOPolicy(deadline=10.0, backoff=0.5)


def failing(clock: FakeClock, errors: list[BaseException], cost: float = 0.0, result: str = "ok"):
    """A call that takes `cost` fake seconds and raises the next of `errors`, then returns `result`."""
    calls = []

    def fn() -> str:
        calls.append(clock.now)
        clock.now += cost
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return fn, calls


def test_transient_errors_are_retried_with_jittered_exponential_backoff(clock):
    fn, calls = failing(clock, [ConnectionError("reset"), TimeoutError(), OSError("502")])
    assert storage.with_retries("s3://b/k", "read", fn, POLICY) == "ok"
    assert len(calls) == 4 and len(clock.sleeps) == 3
    for attempt, wait in enumerate(clock.sleeps):
        base = POLICY.backoff * 2 ** attempt
        assert 0.75 * base <= wait <= 1.25 * base


def test_retries_stop_before_the_deadline(clock, monkeypatch):
    monkeypatch.setattr(storage.random, "random", lambda: 0.5)  # no jitter: waits 0.5, 1, 2, 4 s
    start = clock.now
    fn, calls = failing(clock, [ConnectionError("refused")] * 100, cost=1.0)
    with pytest.raises(storage.StorageError, match=r"s3://b/k: read failed 4 time\(s\) in 8 s: ConnectionError: "
                                                   r"refused") as info:
        storage.with_retries("s3://b/k", "read", fn, POLICY)
    assert not isinstance(info.value, storage.NotFound)
    # Attempts at 0, 1.5, 3.5, 6.5 s; a fifth would start at 11.5 s, past the 10 s deadline.
    assert [t - start for t in calls] == [0.0, 1.5, 3.5, 6.5] and clock.sleeps == [0.5, 1.0, 2.0]
    # Every attempt started could end (at the slowest attempt's pace) within the deadline.
    assert all(t - start + 1.0 <= POLICY.deadline for t in calls)


def test_a_slow_failure_counts_against_the_deadline(clock, monkeypatch):
    monkeypatch.setattr(storage.random, "random", lambda: 0.5)
    fn, calls = failing(clock, [TimeoutError()] * 10, cost=6.0)  # each attempt hangs 6 s, then times out
    with pytest.raises(storage.StorageError, match=r"failed 1 time\(s\) in 6 s: timed out \(TimeoutError\)"):
        storage.with_retries("s3://b/k", "read", fn, POLICY)
    assert len(calls) == 1 and clock.sleeps == []  # 6 + 0.5 + 6 > 10: a second try could not end in time


@pytest.mark.parametrize("error, message", [
    (PermissionError("denied"), "s3://b/k: read: access denied (denied): check the credentials"),
    (ValueError("bad bucket name"), "s3://b/k: read: ValueError: bad bucket name"),
    (IsADirectoryError("dir"), "s3://b/k: read: IsADirectoryError: dir"),
])
def test_final_errors_are_not_retried(clock, error, message):
    fn, calls = failing(clock, [error] * 3)
    with pytest.raises(storage.StorageError) as info:
        storage.with_retries("s3://b/k", "read", fn, POLICY)
    assert str(info.value).startswith(message) and not isinstance(info.value, storage.NotFound)
    assert len(calls) == 1 and clock.sleeps == []


def test_a_missing_object_is_not_found_at_once(clock):
    fn, calls = failing(clock, [FileNotFoundError("k")] * 3)
    with pytest.raises(storage.NotFound, match=r"^s3://b/k: read: no such object$") as info:
        storage.with_retries("s3://b/k", "read", fn, POLICY)
    assert isinstance(info.value, storage.StorageError) and isinstance(info.value, FileNotFoundError)
    assert len(calls) == 1 and clock.sleeps == []


@pytest.mark.parametrize("error", [TypeError("bad argument"), AttributeError("no attribute 'x'")])
def test_programming_errors_propagate_as_themselves(clock, error):
    fn, calls = failing(clock, [error] * 3)
    with pytest.raises(type(error)) as info:
        storage.with_retries("s3://b/k", "read", fn, POLICY)
    assert info.value is error and not isinstance(info.value, storage.StorageError)
    assert len(calls) == 1 and clock.sleeps == []


def test_missing_local_files_are_not_found(tmp_path):
    missing = tmp_path / "none.tar"
    for read in (storage.read_bytes, storage.open_read, storage.sha256):
        with pytest.raises(storage.NotFound, match="No such file or directory") as info:
            read(missing)
        assert isinstance(info.value, FileNotFoundError) and info.value.filename == str(missing)
    with pytest.raises(ValueError, match=f"no dataset.json at {tmp_path}/dataset.json: expected a directory"):
        storage.load_index(tmp_path)


# --------------------------------------------------------------------------------------- writing


def test_write_json_is_whole_and_refuses_nan(tmp_path):
    path = tmp_path / "sub" / "a.json"
    storage.write_json(path, {"a": [1, 2]})
    assert path.read_text() == json.dumps({"a": [1, 2]}, indent=1) + "\n"
    with pytest.raises(ValueError, match=f"{path}: not written"):
        storage.write_json(path, {"a": math.nan})
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]  # no temporary left


# --------------------------------------------------------------------------------------- journal


def test_a_torn_journal_is_repaired_by_the_next_append(tmp_path, caplog):
    journal = tmp_path / "j.jsonl"
    assert storage.read_lines(journal) == []
    for n in range(3):
        storage.append_line(journal, {"n": n})
    raw = journal.read_bytes()
    journal.write_bytes(raw[: len(raw) - 5])  # a kill in the middle of writing the third line
    with caplog.at_level(logging.WARNING, logger="wlasl_shards.storage"):
        assert storage.read_lines(journal) == [{"n": 0}, {"n": 1}]
    assert [r.getMessage() for r in caplog.records] == [f"{journal}: skipped 1 line(s) that are not complete JSON"]
    storage.append_line(journal, {"n": 3})
    storage.append_line(journal, {"n": 4})
    # The torn line was cut off, not glued to the next: every later entry is read.
    assert storage.read_lines(journal) == [{"n": 0}, {"n": 1}, {"n": 3}, {"n": 4}]
    assert journal.read_text().splitlines() == ['{"n": 0}', '{"n": 1}', '{"n": 3}', '{"n": 4}']
    one = tmp_path / "one.jsonl"
    one.write_text('{"n"')  # torn first line: nothing complete before it
    storage.append_line(one, {"n": 0})
    assert one.read_text() == '{"n": 0}\n'


def test_read_lines_skips_every_bad_line_and_warns_once(tmp_path, caplog):
    journal = tmp_path / "m.jsonl"
    journal.write_text('{"a": 1}\nnot json\n\n{"a": 2}\n{"a": \n{"a": 3}\n')
    with caplog.at_level(logging.WARNING, logger="wlasl_shards.storage"):
        assert storage.read_lines(journal) == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert [r.getMessage() for r in caplog.records] == [f"{journal}: skipped 2 line(s) that are not complete JSON"]


# ------------------------------------------------------------------- issue 12: leftovers, full disk


def test_sweep_temporaries_removes_only_the_writers_stale_ones(tmp_path):
    import os
    import time

    old = [tmp_path / ".dataset.json.0123456789ab.tmp", tmp_path / ".report.json.ffffffffffff.tmp"]
    for p in old:
        p.write_text("{half")
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    fresh = tmp_path / ".best.pt.a1b2c3d4e5f6.tmp"  # another process's write, under way
    fresh.write_text("x")
    others = [tmp_path / "train.tmp", tmp_path / ".x.tmp", tmp_path / ".y.0123.tmp", tmp_path / "shard.tar.tmp"]
    for p in others:
        p.write_text("keep")
    assert storage.sweep_temporaries(tmp_path, older_than=600) == sorted(p.name for p in old)
    assert fresh.exists() and all(p.exists() for p in others)
    assert storage.sweep_temporaries(tmp_path) == [fresh.name]
    assert storage.sweep_temporaries(tmp_path / "absent") == []
    # what write_atomic names its temporaries is what is swept
    seen = []
    storage.write_atomic(tmp_path / "a.json", lambda f: seen.append(os.path.basename(f.name)))
    assert storage._TEMPORARY.match(seen[0])


def test_a_full_disk_at_a_journal_append_or_atomic_write_leaves_nothing_torn(tmp_path, monkeypatch):
    import errno
    import os

    journal = tmp_path / "j.jsonl"
    storage.append_line(journal, {"n": 1})
    before = journal.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", full)
    with pytest.raises(storage.NoSpace, match=f"^no space left on .* writing {journal}$"):
        storage.append_line(journal, {"n": 2, "pad": "x" * 1000})
    assert journal.read_bytes() == before  # cut back: no torn line
    with pytest.raises(storage.NoSpace, match=f"^no space left on .* writing {tmp_path / 'a.json'}$"):
        storage.write_json(tmp_path / "a.json", {"a": 1})
    assert os.listdir(tmp_path) == ["j.jsonl"]  # the temporary went with the failure
    assert storage.is_no_space(OSError(errno.ENOSPC, "x")) and not storage.is_no_space(OSError(errno.EIO, "x"))
