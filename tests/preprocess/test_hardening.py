"""`build` under hostile input and faults (issue 12): each test generates the case and asserts the outcome."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import wlasl_json, write_quadrants
from tests.preprocess.test_build import build, tree_digest
from wlasl_shards import shards, storage
from wlasl_shards.preprocess import build as build_mod
from wlasl_shards.preprocess.build import BuildConfig, BuildError, SourceError
from wlasl_shards.video import ffmpeg_binary


def config(src: Path, out: Path, **kw) -> BuildConfig:
    return BuildConfig(source=str(src), output=str(out), size=64, workers=1, progress=False, **kw)


# ------------------------------------------------------------------ 2: ids that share a sample key


def test_ids_sharing_a_sample_key_are_refused_by_name_before_anything_is_written(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    for vid in ("p.q", "p_q", "other"):
        write_quadrants(src / "videos" / f"{vid}.mp4", 120, 160, 12)
    wlasl_json(src, {"a": [{"video_id": "p.q"}, {"video_id": "p_q"}, {"video_id": "other"}]})
    with pytest.raises(SourceError, match=r"1 group\(s\) of video ids would share a sample key.*'p.q' and 'p_q'"):
        build_mod.build(config(src, out))
    assert not out.exists()
    assert shards.key_collisions(["p.q", "p_q", "p/q", "x", "y.z"]) == [("p.q", "p/q", "p_q")]


# ----------------------------------------------------------------------------- 4: bound by frames


def test_a_video_whose_timestamps_span_far_more_than_its_frames_is_recorded_not_built(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    write_quadrants(src / "videos" / "ok.mp4", 120, 160, 20)
    # 3 frames 200 s apart: resampled to 25 fps, 10000 frames of one picture (hours in the wild)
    subprocess.run([ffmpeg_binary(), "-v", "error", "-i", str(src / "videos" / "ok.mp4"), "-frames:v", "3",
                    "-vf", "setpts=N*200/TB", "-fps_mode", "vfr", "-c:v", "libx264",
                    str(src / "videos" / "gap.mp4")], check=True)
    assert (src / "videos" / "gap.mp4").stat().st_size < 20_000
    wlasl_json(src, {"a": [{"video_id": "ok"}, {"video_id": "gap"}]})
    started = time.monotonic()
    index = build_mod.build(config(src, out, max_frames=100))
    assert time.monotonic() - started < 60
    (failed,) = index["failed"]
    assert failed["video_id"] == "gap" and failed["reason"].startswith("too long: more than 100 frames at 25 fps")
    assert index["totals"]["samples"] == 1 and index["params"]["max_frames"] == 100
    # the default bound is recorded too, and an older params.json without it still resumes
    assert BuildConfig(source="x").params()["max_frames"] == 1500


def test_a_build_from_before_max_frames_existed_resumes(tiny_wlasl, tmp_path):
    out = tmp_path / "out"
    build(tiny_wlasl, out)
    state = out / ".build" / "params.json"
    old = json.loads(state.read_text())
    del old["max_frames"]
    state.write_text(json.dumps(old))
    before = tree_digest(out)
    build(tiny_wlasl, out)  # resumed (complete already), not refused
    assert tree_digest(out) == before


# ----------------------------------------------------------------------------- 5: sane option ranges
# (in test_build.py: test_bad_options_exit_2)


# -------------------------------------------------------------------------- 8: two builds at once


def test_a_second_build_of_one_output_is_refused_while_the_first_runs(tiny_wlasl, tmp_path):
    gate = tmp_path / "gate"
    gate.touch()
    slow = tmp_path / "slow-ffmpeg"
    # an ffmpeg that waits while the gate exists: the first build stays inside its lock
    slow.write_text(f"#!/bin/sh\nwhile [ -e {gate} ]; do sleep 0.05; done\nexec {ffmpeg_binary()} \"$@\"\n")
    slow.chmod(0o755)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "wlasl_shards", "build", str(tiny_wlasl), str(out), "--size", "64",
           "--workers", "1", "--no-progress"]
    first = subprocess.Popen(cmd, env={**os.environ, "WLASL_SHARDS_FFMPEG": str(slow)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 60
        while not (out / ".build" / "params.json").exists():
            assert first.poll() is None and time.monotonic() < end, first.stderr.read().decode()
            time.sleep(0.05)
        second = subprocess.run(cmd, capture_output=True, text=True)
        assert second.returncode == 2
        assert "Traceback" not in second.stderr
        (line,) = [ln for ln in second.stderr.splitlines() if not ln.startswith("INFO ")]  # one line
        assert line.startswith(f"Error: OUTPUT '{out}' is being built by another process right now")
    finally:
        gate.unlink()
    assert first.wait(timeout=120) == 0, first.stderr.read().decode()
    assert (out / "dataset.json").exists() and not list((out / ".build").glob("lock*"))
    build(tiny_wlasl, out)  # the lock ended with its process: the next run goes ahead


def test_partitions_share_the_lock_and_exclude_a_whole_build(tmp_path):
    out = tmp_path / "out"
    with build_mod._locked(out, 0, 2), build_mod._locked(out, 1, 2):
        with pytest.raises(BuildError, match="partition 1/2 of OUTPUT .* is being built by another process"):
            with build_mod._locked(out, 1, 2):
                pass
        with pytest.raises(BuildError, match="is being built by another process"):
            with build_mod._locked(out, None, 1):
                pass
    with build_mod._locked(out, None, 1):
        pass
    assert not (out / ".build").exists()  # nothing else was written: the lock's folder goes too


# ----------------------------------------------------------- 9: a torn journal line, repaired once


def test_a_journal_line_torn_by_a_full_disk_is_repaired_once_then_resumes_normally(tiny_wlasl, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    build(tiny_wlasl, ref, "--shard-size", "64KB")
    build(tiny_wlasl, out, "--shard-size", "64KB")
    journal = out / ".build" / "train.jsonl"
    lines = journal.read_text().splitlines()
    # the last append half-done, as ENOSPC leaves it, and the run died before dataset.json
    journal.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    (out / "dataset.json").unlink()
    build(tiny_wlasl, out, "--shard-size", "64KB")
    assert journal.read_bytes() == (ref / ".build" / "train.jsonl").read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")}
    for _ in range(2):  # later runs rebuild nothing and add no line
        (out / "dataset.json").unlink()
        build(tiny_wlasl, out, "--shard-size", "64KB")
        assert len(journal.read_text().splitlines()) == len(lines)
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")} == stamps
    assert tree_digest(out) == tree_digest(ref)


# ---------------------------------------------------------------- 10: --overwrite, index first


def test_overwrite_removes_the_index_before_any_shard(tiny_wlasl, tmp_path, monkeypatch):
    out = tmp_path / "out"
    build(tiny_wlasl, out)
    seen = []

    def killed(path, *a, **k):  # a kill -9 at the first folder removal
        seen.append((Path(path).name, (out / "dataset.json").exists()))
        raise KeyboardInterrupt

    monkeypatch.setattr(build_mod.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        build_mod.build(config(tiny_wlasl, out, fps=10.0, overwrite=True))
    assert seen[0] == ("train", False)  # dataset.json went before the first shard folder
    assert not (out / "dataset.json").exists()  # readers see "no dataset", never an index of deleted shards
    with pytest.raises(ValueError, match="no dataset.json"):
        storage.load_index(out)
    monkeypatch.undo()
    build_mod.build(config(tiny_wlasl, out, fps=10.0, overwrite=True))
    assert storage.load_index(out)["params"]["fps"] == 10.0


# -------------------------------------------------------------------- 11: stale temporaries swept


def test_temporaries_left_by_kills_at_renames_are_swept_on_the_next_run(tiny_wlasl, tmp_path):
    out = tmp_path / "out"
    build(tiny_wlasl, out)
    (out / "dataset.json").unlink()
    strays = [out / ".dataset.json.0123456789ab.tmp", out / ".build" / ".params.json.a1b2c3d4e5f6.tmp",
              out / ".partitions" / ".0-of-2.json.00000000ffff.tmp"]
    for path in strays:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"{half")
    mine = out / ".notes.tmp"  # not the writer's naming: kept
    mine.write_text("mine")
    build(tiny_wlasl, out)
    assert not any(p.exists() for p in strays) and mine.read_text() == "mine"


# ------------------------------------------------------------ 12: another spelling of SOURCE


def test_a_resume_under_another_spelling_of_source_is_the_same_build(tiny_wlasl, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "src10").symlink_to(tiny_wlasl, target_is_directory=True)
    (tmp_path / "work").mkdir()
    out = tmp_path / "out"
    monkeypatch.chdir(data)
    build_mod.build(BuildConfig(source="src10", output=str(out), size=64, workers=1, progress=False,
                                shard_size=1 << 16))
    journal = out / ".build" / "train.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines[:2]))  # killed after two shards
    (out / "dataset.json").unlink()
    monkeypatch.chdir(tmp_path / "work")
    kept = (out / "train" / "shard-000000.tar").stat().st_mtime_ns
    build_mod.build(BuildConfig(source="../data/src10", output=str(out), size=64, workers=1, progress=False,
                                shard_size=1 << 16))
    assert (out / "train" / "shard-000000.tar").stat().st_mtime_ns == kept
    assert journal.read_text().splitlines(keepends=True) == lines
    # another source altogether is refused; the message offers what keeps the finished shards first
    other = tmp_path / "other"
    shutil.copytree(tiny_wlasl, other)
    with pytest.raises(BuildError) as e:
        build_mod.build(BuildConfig(source=str(other), output=str(out), size=64, workers=1, progress=False,
                                    shard_size=1 << 16))
    text = str(e.value)
    assert "was built with other options (source: 'src10' -> " in text
    assert text.index("re-run with the options recorded in .build/params.json") < text.index("--overwrite")
    assert "--overwrite discards" in text and "finished shard(s)" in text


# ---------------------------------------------------------------------------- 13: disk full


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (root only; skipped elsewhere)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_disk_is_one_line_naming_device_and_file_and_leaves_nothing_half_written(tiny_wlasl, tiny_disk):
    out = tiny_disk / "out"
    text = build(tiny_wlasl, out, "--codec", "npy", "--shard-size", "64KB", code=2)
    (line,) = text.strip().splitlines()
    assert line.startswith(f"Error: no space left on {tiny_disk} (tmpfs) writing {out}") and "Traceback" not in text
    assert not list(out.rglob("*.tmp")) and not (out / "dataset.json").exists()
    for journal in (out / ".build").glob("*.jsonl"):
        assert journal.read_bytes().endswith(b"\n")  # no torn line
        for entry in storage.read_lines(journal):  # every journaled shard is whole
            if entry["shard"]:
                assert (out / entry["shard"]["name"]).stat().st_size == entry["shard"]["bytes"]


def test_disk_full_while_writing_a_shard_removes_it(tiny_wlasl, tmp_path, monkeypatch):
    import errno

    real = shards._HashingFile.write
    calls = []

    def full(self, b):
        calls.append(1)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, b)

    monkeypatch.setattr(shards._HashingFile, "write", full)
    out = tmp_path / "out"
    with pytest.raises(BuildError, match=r"^no space left on .* writing .*/train/shard-000000.tar; free some space"):
        build_mod.build(config(tiny_wlasl, out))
    assert not list(out.rglob("*.tar*"))
