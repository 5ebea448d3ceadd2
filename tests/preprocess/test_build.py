"""`wlasl-shards build` and `inspect` through the real CLI, on generated datasets."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from click.testing import CliRunner
from PIL import Image

from tests.conftest import wlasl_json, write_quadrants
from wlasl_shards import shards
from wlasl_shards.cli import main
from wlasl_shards.video import decode, ffmpeg_binary, plan_geometry, probe


def run_cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def build(src: Path, out: Path, *extra: str, code: int = 0) -> str:
    return run_cli("build", src, out, "--size", "64", "--workers", "1", "--no-progress", *extra, code=code)


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file the build leaves (its .build state aside)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".build" not in p.parts}


def samples_of(out: Path, split: str) -> list[dict]:
    index = json.loads((out / "dataset.json").read_text())
    urls = [str(out / r["name"]) for r in index["splits"][split]["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False)) if urls else []


def test_build_synthetic_wlasl_end_to_end(tiny_wlasl, tmp_path):
    out = tmp_path / "shards"
    text = build(tiny_wlasl, out)
    assert "wrote" in text
    index = json.loads((out / "dataset.json").read_text())
    wlasl = json.loads((tiny_wlasl / "WLASL_v0.3.json").read_text())
    listed = {i["video_id"]: (g["gloss"], i) for g in wlasl for i in g["instances"]}
    assert index["format"] == "wlasl-shards" and index["format_version"] == shards.FORMAT_VERSION
    assert index["classes"] == [g["gloss"] for g in wlasl]
    assert index["params"]["fps"] == 25.0 and index["params"]["size"] == 64
    assert index["crop_resolved"] == "bbox"
    assert index["totals"]["samples"] == len(listed) and index["failed"] == [] and index["missing"] == []
    seen = set()
    for split in shards.SPLITS:
        got = samples_of(out, split)
        assert len(got) == index["splits"][split]["samples"] == sum(
            i["split"] == split for _, i in listed.values())
        for s in got:
            meta = json.loads(s["json"])
            gloss, inst = listed[meta["video_id"]]
            assert (meta["gloss"], meta["split"], meta["signer_id"]) == (gloss, split, inst["signer_id"])
            assert int(s["cls"]) == meta["label"] == index["classes"].index(gloss)
            src = probe(tiny_wlasl / meta["source_path"])
            assert meta["source_size"] == [src.width, src.height]
            expect = len(list(decode(tiny_wlasl / meta["source_path"],
                                     plan_geometry(src.width, src.height, "bbox", 64, tuple(inst["bbox"])), 25.0)))
            assert meta["num_frames"] == expect == shards.frame_count(meta)
            frames = shards.decode_frames(s, [0, expect - 1])
            assert frames.shape == (2, 64, 64, 3)
            seen.add(meta["video_id"])
    assert seen == set(listed)
    # the index's checksums are those of the files
    for split in index["splits"].values():
        for rec in split["shards"]:
            assert hashlib.sha256((out / rec["name"]).read_bytes()).hexdigest() == rec["sha256"]


def test_npy_is_lossless_and_jpeg_close(tmp_path):
    src = tmp_path / "src"
    write_quadrants(src / "videos" / "00001.mp4", 120, 160, 20)
    wlasl_json(src, {"a": [{"video_id": "00001"}]})
    build(src, tmp_path / "npy", "--codec", "npy")
    build(src, tmp_path / "jpg", "--codec", "jpeg")
    direct = np.stack(list(decode(src / "videos/00001.mp4", plan_geometry(160, 120, "center", 64), 25.0)))
    npy = shards.decode_frames(samples_of(tmp_path / "npy", "train")[0])
    jpg = shards.decode_frames(samples_of(tmp_path / "jpg", "train")[0])
    assert npy.shape == jpg.shape == (20, 64, 64, 3)
    assert np.array_equal(npy, direct)
    assert np.abs(jpg.astype(int) - direct).mean() < 4.0


def test_deterministic_across_runs_and_worker_counts(tiny_wlasl, tmp_path):
    build(tiny_wlasl, tmp_path / "a", "--shard-size", "100KB")
    run_cli("build", tiny_wlasl, tmp_path / "b", "--size", "64", "--workers", "2", "--no-progress",
            "--shard-size", "100KB")
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert len([k for k in a if k.endswith(".tar")]) >= 3
    assert a == b


def test_shards_respect_the_size_bound_and_mix_classes(tiny_wlasl, tmp_path):
    out = tmp_path / "s"
    build(tiny_wlasl, out, "--shard-size", "64KB")
    index = json.loads((out / "dataset.json").read_text())
    train = index["splits"]["train"]["shards"]
    assert len(train) >= 3
    for rec in train:
        assert rec["bytes"] <= 64 * 1024 or rec["samples"] == 1
    first = [json.loads(s["json"])["label"] for s in wds.WebDataset(str(out / train[0]["name"]), shardshuffle=False)]
    labels_in_order = [json.loads(s["json"])["label"] for s in samples_of(out, "train")]
    assert labels_in_order != sorted(labels_in_order)  # shuffled before sharding
    assert len(first) >= 1


def _wait_for(path_glob: Path, pattern: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if list(path_glob.glob(pattern)):
            return
        time.sleep(0.02)
    raise AssertionError(f"nothing matched {pattern} in {path_glob}")


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", ["train/shard-000001.tar", "val/*.tmp"])
def test_resume_after_kill_9_matches_an_uninterrupted_build(tiny_wlasl, tmp_path, kill_after):
    ref = tmp_path / "ref"
    args = ["--size", "64", "--shard-size", "64KB", "--no-progress"]
    build(tiny_wlasl, ref, "--shard-size", "64KB")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "wlasl_shards", "build", str(tiny_wlasl), str(out), "--workers", "2", *args]
    proc = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.DEVNULL)
    _wait_for(out, kill_after)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group, as a machine crash would
    proc.wait()
    assert not (out / "dataset.json").exists()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    assert tree_digest(out) == tree_digest(ref)
    assert not list(out.rglob("*.tmp"))


def tear_journal(journal: Path, stray: Path) -> None:
    """What a crash half-way through appending the journal's second line leaves (the line torn), with
    a half-written shard `stray` beside the finished ones."""
    lines = journal.read_text().splitlines()
    assert len(lines) >= 2
    journal.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    stray.write_bytes(b"partial")


def test_resume_ignores_a_torn_journal_line_and_stray_files(tiny_wlasl, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    build(tiny_wlasl, ref, "--shard-size", "64KB")
    build(tiny_wlasl, out, "--shard-size", "64KB")
    journal = out / ".build" / "train.jsonl"
    tear_journal(journal, out / "train" / "shard-000009.tar.tmp")
    journaled = json.loads(journal.read_text().splitlines()[0])["shard"]["name"]
    before = (out / journaled).stat()
    (out / "dataset.json").unlink()
    build(tiny_wlasl, out, "--shard-size", "64KB")
    assert tree_digest(out) == tree_digest(ref)
    # The shard of the intact line was kept, not rebuilt; the torn line was cut off before the next
    # append, so the journal is the uninterrupted build's, every line whole.
    after = (out / journaled).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert journal.read_bytes() == (ref / ".build" / "train.jsonl").read_bytes()


def test_output_from_other_options_is_refused_unless_overwrite(tiny_wlasl, tmp_path):
    out = tmp_path / "s"
    build(tiny_wlasl, out)
    before = tree_digest(out)
    text = build(tiny_wlasl, out, "--fps", "10", code=2)
    assert "was built with other options (fps: 25.0 -> 10.0)" in text and "--overwrite" in text
    assert tree_digest(out) == before
    build(tiny_wlasl, out)  # same options: complete already, same result
    assert tree_digest(out) == before
    build(tiny_wlasl, out, "--fps", "10", "--overwrite")
    assert json.loads((out / "dataset.json").read_text())["params"]["fps"] == 10.0
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert "not a wlasl-shards build" in build(tiny_wlasl, other, code=2)


def _odd_files(src: Path) -> dict[str, str | None]:
    """Write one file per kind of bad or unusual input; returns video id -> expected failure (None = built)."""
    v = src / "videos"
    v.mkdir(parents=True)
    write_quadrants(v / "good.mp4", 120, 160, 20)
    (v / "empty.mp4").write_bytes(b"")
    (v / "text.mp4").write_text("this is not a video\n" * 50)
    whole = (v / "good.mp4").read_bytes()
    (v / "truncated.mp4").write_bytes(whole[: len(whole) // 2])  # moov atom at the end: lost
    write_quadrants(v / "faststart.mp4", 120, 160, 40, extra_output_args={"movflags": "+faststart"})
    whole = (v / "faststart.mp4").read_bytes()
    (v / "faststart.mp4").write_bytes(whole[: len(whole) * 2 // 3])  # moov first: frames decode, then stop
    subprocess.run([ffmpeg_binary(), "-v", "error", "-f", "lavfi",
                    "-i", "sine=duration=1", str(v / "audio.mp4")], check=True)
    write_quadrants(v / "short.mp4", 120, 160, 5)
    write_quadrants(v / "range.mp4", 120, 160, 20)
    write_quadrants(v / "boxout.mp4", 120, 160, 20)
    write_quadrants(v / "mpeg4.avi", 120, 160, 20, codec="mpeg4", pix_fmt="yuv420p")
    write_quadrants(v / "vp9.webm", 120, 160, 20, codec="libvpx-vp9", pix_fmt="yuv420p")
    write_quadrants(v / "mjpeg.mkv", 120, 160, 20, codec="mjpeg", pix_fmt="yuvj422p")
    write_quadrants(v / "yuv444.mp4", 120, 160, 20, codec="libx264", pix_fmt="yuv444p")
    write_quadrants(v / "oddsize.mkv", 121, 163, 20, codec="libx264rgb", pix_fmt="rgb24")
    # variable frame rate: timestamps stretched quadratically, then kept as they are
    subprocess.run([ffmpeg_binary(), "-v", "error", "-i",
                    str(v / "good.mp4"), "-vf", "setpts=N*N*0.05/TB", "-fps_mode", "vfr", "-c:v", "libx264",
                    str(v / "vfr.mp4")], check=True)
    return {
        "good": None, "empty": "empty file", "text": "not a readable video", "truncated": "moov atom not found",
        "faststart": "truncated file: ffmpeg reports a partial file",
        "audio": "no video stream", "short": "too short: 5 frames at 25 fps < --min-frames 9",
        "range": "selects no frames",
        "boxout": None, "mpeg4": None, "vp9": None, "mjpeg": None, "yuv444": None, "oddsize": None, "vfr": None,
    }


def test_bad_and_unusual_inputs_are_converted_or_recorded(tmp_path):
    src = tmp_path / "src"
    expected = _odd_files(src)
    inst = [{"video_id": k, "bbox": [10, 10, 100, 100]} for k in expected]
    for i in inst:
        if i["video_id"] == "range":
            i.update(frame_start=200, frame_end=220)
        if i["video_id"] == "boxout":
            i["bbox"] = [500, 500, 600, 600]
    inst.append({"video_id": "absent"})
    wlasl_json(src, {"a": inst})
    out = tmp_path / "out"
    build(src, out, "--apply-frame-range")
    index = json.loads((out / "dataset.json").read_text())
    failed = {f["video_id"]: f["reason"] for f in index["failed"]}
    assert index["missing"] == [{"video_id": "absent", "split": "train", "label": 0}]
    built = {json.loads(s["json"])["video_id"]: s for s in samples_of(out, "train")}
    for vid, reason in expected.items():
        if reason is None:
            assert vid in built, (vid, failed.get(vid))
        else:
            assert reason in failed[vid], (vid, failed.get(vid))
    assert set(failed) | set(built) == set(expected)
    for vid, s in built.items():
        meta = json.loads(s["json"])
        assert shards.decode_frames(s).shape[1:] == (64, 64, 3)
        if vid != "vfr":
            assert meta["num_frames"] == 20, vid
    assert "outside" in json.loads(built["boxout"]["json"])["crop_note"]
    # the vfr file spans 0.05 * 19^2 = 18 s: resampled to 25 fps it has far more than 20 frames
    assert json.loads(built["vfr"]["json"])["num_frames"] > 400
    text = run_cli("inspect", out)
    assert "failed:     1 x empty file" in text


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "does not exist"),
    (lambda p: (p.mkdir(), (p / "WLASL_v0.3.json").write_text("{oops")), "not valid JSON"),
    (lambda p: (p.mkdir(), (p / "WLASL_v0.3.json").write_text("{}")), "expected a list"),
])
def test_unusable_source_is_one_line_exit_2_and_writes_nothing(tmp_path, setup, message):
    src, out = tmp_path / "src", tmp_path / "out"
    setup(src)
    text = build(src, out, code=2)
    assert message in text and text.startswith("Error: ") and "Traceback" not in text
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--subset", "500"], "'500' is not one of"),
    (["--fps", "-3"], "--fps must be > 0, got -3.0"),
    (["--shard-size", "lots"], "--shard-size must look like"),
    (["--jpeg-qscale", "1"], "--jpeg-qscale must be in 2..31, got 1"),
    # finite, sane ranges (issue 12 item 5): each would pass a bare `> 0` test
    (["--fps", "1e9"], "--fps must be <= 120, got 1000000000.0"),
    (["--fps", "inf"], "--fps must be a finite number, got inf"),
    (["--fps", "nan"], "--fps must be a finite number, got nan"),
    (["--size", "100000"], "--size must be <= 4096, got 100000"),
    (["--bbox-margin", "nan"], "--bbox-margin must be a finite number, got nan"),
    (["--bbox-margin", "1e6"], "--bbox-margin must be <= 10, got 1000000.0"),
    (["--timeout", "inf"], "--timeout must be a finite number, got inf"),
    (["--min-frames", "2000"], "--max-frames must be an integer >= --min-frames (2000), got 1500"),
])
def test_bad_options_exit_2(tiny_wlasl, tmp_path, args, message):
    text = build(tiny_wlasl, tmp_path / "out", *args, code=2)
    assert message in text and "Traceback" not in text
    assert not (tmp_path / "out").exists()


def test_manifest_source_builds(tmp_path):
    write_quadrants(tmp_path / "clips" / "x.mp4", 120, 160, 20)
    write_quadrants(tmp_path / "clips" / "y.mp4", 120, 160, 30)
    (tmp_path / "m.csv").write_text("path,label,split\nclips/x.mp4,hello,train\nclips/y.mp4,bye,test\n")
    out = tmp_path / "out"
    build(tmp_path / "m.csv", out)
    index = json.loads((out / "dataset.json").read_text())
    assert index["classes"] == ["bye", "hello"] and index["source"]["layout"] == "manifest"
    assert index["crop_resolved"] == "center"
    (test,) = samples_of(out, "test")
    assert json.loads(test["json"])["source_path"] == "clips/y.mp4" and int(test["cls"]) == 0


def test_inspect_summary_verify_and_sheet(tiny_wlasl, tmp_path):
    out = tmp_path / "s"
    build(tiny_wlasl, out)
    index = json.loads((out / "dataset.json").read_text())
    text = run_cli("inspect", out, "--verify", "--sheet", tmp_path / "sheet.png", "--samples", "3")
    train = index["splits"]["train"]
    assert f"train  {train['samples']:>7} {train['classes']:>7} {train['frames']:>9}" in text
    assert "0 mismatches" in text
    with Image.open(tmp_path / "sheet.png") as img:
        assert img.size == (140 + 8 * 96, 3 * 96)
        assert np.asarray(img)[:, 140:].std() > 10  # frames, not a blank page
    shard = out / train["shards"][0]["name"]
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0xFF
    shard.write_bytes(bytes(data))
    text = run_cli("inspect", out, "--verify", code=1)
    assert f"MISMATCH {train['shards'][0]['name']}: sha256" in text and "1 mismatches" in text
    assert "no dataset.json at" in run_cli("inspect", tmp_path / "nothing", code=2)


def test_no_ffmpeg_is_a_clear_error(tiny_wlasl, tmp_path, monkeypatch):
    monkeypatch.setenv("WLASL_SHARDS_FFMPEG", str(tmp_path / "missing-ffmpeg"))
    from wlasl_shards.video import ffmpeg_binary

    ffmpeg_binary.cache_clear()
    try:
        text = build(tiny_wlasl, tmp_path / "out", code=2)
    finally:
        ffmpeg_binary.cache_clear()
    assert "WLASL_SHARDS_FFMPEG points to" in text and not (tmp_path / "out").exists()
