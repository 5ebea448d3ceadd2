"""video.py: probe, geometry and decode against generated files whose content is known."""

from __future__ import annotations

import io
import itertools
import subprocess

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_quadrants
from wlasl_shards.video import (
    VideoError,
    decode,
    decode_jpeg,
    ffmpeg_binary,
    jpeg_end,
    plan_geometry,
    probe,
    run_ffmpeg,
    square_around_box,
)

LOSSLESS = {"codec": "libx264rgb", "pix_fmt": "rgb24", "extra_output_args": {"qp": 0}}


@pytest.mark.parametrize("fps, expect", [("25", 25.0), ("30", 30.0), ("30000/1001", 29.97)])
def test_probe_reports_size_and_rate(tmp_path, fps, expect):
    path = write_quadrants(tmp_path / "v.mp4", 120, 160, 10, fps)
    info = probe(path)
    assert (info.width, info.height, info.rotation) == (160, 120, 0)
    assert info.fps == pytest.approx(expect, abs=0.01)
    assert info.codec == "h264"


def test_probe_rejects_non_videos(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("hello, not a video\n" * 20)
    subprocess.run([ffmpeg_binary(), "-v", "error", "-f", "lavfi", "-i", "sine=duration=1",
                    str(tmp_path / "audio.m4a")], check=True)
    with pytest.raises(VideoError, match="empty file"):
        probe(tmp_path / "empty.mp4")
    with pytest.raises(VideoError, match="not a readable video"):
        probe(tmp_path / "text.mp4")
    with pytest.raises(VideoError, match="audio only"):
        probe(tmp_path / "audio.m4a")


def test_square_around_box_grows_clamps_and_rejects():
    assert square_around_box((100, 100, 200, 150), 640, 480, 0.1) == (95, 70, 110, 110)
    # A box at the right edge is shifted inside the frame, side kept.
    assert square_around_box((600, 100, 640, 300), 640, 480, 0.0) == (440, 100, 200, 200)
    # Larger than the frame: the side shrinks to the shorter frame side.
    assert square_around_box((0, 0, 640, 480), 640, 480, 0.5) == (80, 0, 480, 480)
    assert square_around_box((700, 500, 900, 700), 640, 480, 0.1) is None


def test_plan_geometry_modes():
    assert plan_geometry(640, 480, "center", 256).crop == (80, 0, 480, 480)
    none = plan_geometry(640, 480, "none", 256)
    assert (none.crop, none.out_width, none.out_height) == (None, 341, 256)
    tall = plan_geometry(480, 640, "none", 128)
    assert (tall.out_width, tall.out_height) == (128, 171)
    miss = plan_geometry(640, 480, "bbox", 256, bbox=(1000, 1000, 1100, 1100))
    assert miss.crop == (80, 0, 480, 480) and "outside" in miss.note
    with pytest.raises(ValueError, match="crop mode"):
        plan_geometry(640, 480, "zoom", 256)


def test_decode_resamples_to_the_output_rate(tmp_path):
    path = write_quadrants(tmp_path / "v.mp4", 120, 160, 60, "30")  # 2 s
    geom = plan_geometry(160, 120, "center", 64)
    frames = list(decode(path, geom, 25.0))
    assert len(frames) == 50
    assert frames[0].shape == (64, 64, 3) and frames[0].dtype == np.uint8


def test_decode_crop_takes_the_right_pixels(tmp_path):
    path = write_quadrants(tmp_path / "v.mkv", 120, 160, 5, "25", **LOSSLESS)
    # bbox entirely inside the bottom-right (white) quadrant; the margin keeps it there.
    geom = plan_geometry(160, 120, "bbox", 32, bbox=(100, 70, 140, 110), margin=0.0)
    frame = next(iter(decode(path, geom, 25.0)))
    assert np.abs(frame[4:-4, 4:-4].astype(int) - 255).max() <= 2
    # center crop of 120x120 keeps all four colours in their corners
    geom = plan_geometry(160, 120, "center", 64)
    frame = next(iter(decode(path, geom, 25.0)))
    corners = [frame[5, 5], frame[5, -6], frame[-6, 5], frame[-6, -6]]
    expect = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    for got, want in zip(corners, expect):
        assert np.abs(got.astype(int) - want).max() <= 3


def test_decode_honours_rotation_metadata(tmp_path):
    src = write_quadrants(tmp_path / "v.mkv", 120, 160, 5, "25", **LOSSLESS)
    rotated = tmp_path / "rot.mp4"
    subprocess.run([ffmpeg_binary(), "-v", "error", "-display_rotation", "90", "-i", str(src), "-c", "copy",
                    str(rotated)], check=True)
    info = probe(rotated)
    assert (info.rotation, info.width, info.height) == (90, 120, 160)
    frame = next(iter(decode(rotated, plan_geometry(info.width, info.height, "none", 120), 25.0)))
    assert frame.shape == (160, 120, 3)
    # 90 degrees counter-clockwise: the top-right (green) quadrant ends at the top left.
    assert np.abs(frame[10, 10].astype(int) - (0, 255, 0)).max() <= 3
    assert np.abs(frame[-10, -10].astype(int) - (0, 0, 255)).max() <= 3


@pytest.mark.parametrize("tag, rotation, sar, square", [
    (" [SAR 128:117 DAR 176:117]", "", (128, 117), (193, 144)),
    (" [SAR 0:1 DAR 0:1]", "", (1, 1), (176, 144)),
    ("", "", (1, 1), (176, 144)),
    (" [SAR 128:117 DAR 176:117]", "\n      displaymatrix: rotation of -90.00 degrees", (117, 128), (144, 193)),
])
def test_parse_probe_reads_the_sample_aspect_ratio(tag, rotation, sar, square):
    from wlasl_shards.video import parse_probe

    text = (f"Input #0, mov,mp4, from 'v.mp4':\n  Duration: 00:00:02.00\n  Stream #0:0(und): Video: h264 (avc1), "
            f"yuv420p(progressive), 176x144{tag}, 25 fps, 25 tbr{rotation}\n")
    info = parse_probe(text)
    assert (info.sar, info.square_size) == (sar, square)


def test_non_square_pixels_are_stored_square_with_the_box_mapped(tmp_path):
    """176x144 at SAR 2:1 (shown 352x144): frames come out with square pixels, squares are square on
    screen, and a signer box given in the file's pixels is mapped to them."""
    src = write_quadrants(tmp_path / "sar.mkv", 144, 176, 3, "25",
                          **{**LOSSLESS, "extra_output_args": {"qp": 0, "aspect": "22:9"}})
    info = probe(src)
    assert (info.width, info.height, info.sar, info.square_size) == (176, 144, (2, 1), (352, 144))
    whole = plan_geometry(info.width, info.height, "none", 72, sar=info.sar)
    assert (whole.out_width, whole.out_height) == (176, 72)
    assert next(iter(decode(src, whole, 25.0))).shape == (72, 176, 3)
    # The top-right (green) quadrant: pixels x 88..176, y 0..72 -> a 176x72 box on screen, a 144 square.
    geom = plan_geometry(info.width, info.height, "bbox", 32, bbox=(88, 0, 176, 72), margin=0.0, sar=info.sar)
    assert geom.crop == (192, 0, 144, 144) and geom.pixel_crop() == (96, 0, 72, 144)
    frame = next(iter(decode(src, geom, 25.0))).astype(int)
    assert frame.shape == (32, 32, 3)
    assert np.abs(frame[4, 20] - (0, 255, 0)).max() <= 3 and np.abs(frame[-4, 20] - (255, 255, 255)).max() <= 3
    square = write_quadrants(tmp_path / "square.mkv", 144, 176, 3, "25", **LOSSLESS)
    assert probe(square).sar == (1, 1)
    assert plan_geometry(176, 144, "bbox", 32, bbox=(88, 0, 176, 72), margin=0.0).crop == (88, 0, 88, 88)


def test_decode_frame_range_and_its_end(tmp_path):
    path = write_quadrants(tmp_path / "v.mp4", 120, 160, 50, "25")
    geom = plan_geometry(160, 120, "center", 32)
    assert len(list(decode(path, geom, 25.0, frame_range=(11, 30)))) == 20
    assert len(list(decode(path, geom, 25.0, frame_range=(41, -1)))) == 10
    with pytest.raises(VideoError, match="selects no frames"):
        list(decode(path, geom, 25.0, frame_range=(60, 80)))


def test_decode_timeout_kills_ffmpeg(tmp_path):
    path = write_quadrants(tmp_path / "v.mp4", 240, 320, 250, "25")
    geom = plan_geometry(320, 240, "none", 240)
    with pytest.raises(VideoError, match="timed out"):
        list(decode(path, geom, 25.0, timeout=0.001))


def test_probe_timeout_is_a_video_error(tmp_path):
    path = write_quadrants(tmp_path / "v.mp4", 120, 160, 10, "25")
    with pytest.raises(VideoError, match=r"ffmpeg probe timed out after 1e-06 s"):
        probe(path, timeout=1e-6)


def test_run_ffmpeg_keeps_stderr_and_kills_on_early_exit(tmp_path):
    with run_ffmpeg([ffmpeg_binary(), "-hide_banner", "-i", str(tmp_path / "none.mp4")], 30.0) as run:
        pass
    assert run.returncode != 0 and not run.timed_out and "No such file or directory" in run.stderr
    # A consumer that stops reading (an exception in the body, a generator closed early) stops ffmpeg.
    path = write_quadrants(tmp_path / "v.mp4", 240, 320, 250, "25")
    cmd = [ffmpeg_binary(), "-nostdin", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"]
    with pytest.raises(RuntimeError, match="stop"):
        with run_ffmpeg(cmd, 30.0, stdout=True) as run:
            assert len(run.stdout.read(320 * 240 * 3)) == 320 * 240 * 3
            raise RuntimeError("stop")
    assert run.proc.poll() is not None and run.returncode != 0 and not run.timed_out
    frames = decode(path, plan_geometry(320, 240, "none", 240), 25.0)
    next(frames)
    frames.close()  # the generator's ffmpeg is killed, not left writing into a full pipe


def test_decode_jpeg_matches_raw_frames(tmp_path):
    path = write_quadrants(tmp_path / "v.mp4", 120, 160, 30, "30")
    geom = plan_geometry(160, 120, "center", 64)
    raw = np.stack(list(decode(path, geom, 25.0)))
    jpegs = list(decode_jpeg(path, geom, 25.0, qscale=2))
    assert len(jpegs) == len(raw) == 25
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs])
    assert np.abs(decoded.astype(int) - raw).mean() < 4.0
    assert list(decode_jpeg(path, geom, 25.0, qscale=2)) == jpegs  # deterministic


def test_jpeg_end_finds_whole_images_only(tmp_path):
    images = []
    for q in (10, 50, 95):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(q).integers(0, 255, (32, 48, 3), np.uint8)).save(buf, "JPEG", quality=q)
        images.append(buf.getvalue())
    stream = b"".join(images)
    ends, start = [], 0
    while (end := jpeg_end(stream, start)) is not None:
        ends.append(end)
        start = end
    assert ends == list(itertools.accumulate(len(i) for i in images))
    assert jpeg_end(images[0][:-1]) is None and jpeg_end(images[0][:3]) is None
    with pytest.raises(VideoError, match="out of step"):
        jpeg_end(b"not a jpeg at all")


def test_ffmpeg_lookup_order_and_clear_error(monkeypatch, tmp_path):
    import sys

    import wlasl_shards.video as video

    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    video.ffmpeg_binary.cache_clear()
    try:
        monkeypatch.setenv(video.FFMPEG_ENV, str(fake))
        assert video.ffmpeg_binary() == str(fake)
        video.ffmpeg_binary.cache_clear()
        monkeypatch.delenv(video.FFMPEG_ENV)
        monkeypatch.setattr(video.shutil, "which", lambda name: str(fake) if name == "ffmpeg" else None)
        assert video.ffmpeg_binary() == str(fake)  # a system ffmpeg wins over imageio-ffmpeg's
        video.ffmpeg_binary.cache_clear()
        monkeypatch.setattr(video.shutil, "which", lambda name: None)
        monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # not installed
        with pytest.raises(RuntimeError, match="no ffmpeg found: install one"):
            video.ffmpeg_binary()
    finally:
        video.ffmpeg_binary.cache_clear()


# ---------------------------------------------------------------------- issue 12: bounds, bad boxes


def test_decode_stops_at_the_frame_bound(tmp_path):
    from wlasl_shards.video import DEFAULT_MAX_FRAMES, frame_limit

    path = write_quadrants(tmp_path / "a.mp4", 120, 160, 20)
    geom = plan_geometry(160, 120, "center", 32)
    assert len(list(decode(path, geom, 25.0, max_frames=20))) == 20
    for frames in (decode(path, geom, 25.0, max_frames=5), decode_jpeg(path, geom, 25.0, max_frames=5),
                   decode(path, geom, 25.0, max_frames=None, max_bytes=5 * 32 * 32 * 3 + 1)):
        got = []
        with pytest.raises(VideoError, match="too long: more than 5 frames at 25 fps"):
            for f in frames:
                got.append(f)
        assert len(got) == 5  # ffmpeg was killed at the sixth: memory stays bounded
    assert frame_limit(geom) == DEFAULT_MAX_FRAMES == 1500
    assert frame_limit(geom, None, 10 * 32 * 32 * 3) == 10 and frame_limit(geom, None, None) is None


def test_a_nan_box_is_a_centre_crop_with_a_note():
    nan = float("nan")
    assert square_around_box((nan, 10, 100, 100), 320, 240, 0.1) is None
    for box in [(nan, 10, 100, 100), (10, 10, float("inf"), 100)]:
        geom = plan_geometry(320, 240, "bbox", 64, box)
        assert geom.crop == (40, 0, 240, 240) and "not finite: center crop" in geom.note
