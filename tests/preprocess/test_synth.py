"""synth.py: the WLASL layout it writes, the videos against their metadata, determinism, class-dependent
rendering, and write_video round trips through the real ffmpeg."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from wlasl_shards.preprocess import synth as S
from wlasl_shards.preprocess.synth import (
    EncodeError,
    SynthConfig,
    class_style,
    draw_signers,
    draw_spec,
    parse_fps,
    plan,
    render_background,
    render_video,
    signer_bbox,
    split_counts,
    synth,
    write_video,
)
from wlasl_shards.video import ffmpeg_binary, probe, square_around_box

# 3 classes x 3 videos (1 train / 1 val / 1 test each), one small size, every default frame rate.
SMALL = SynthConfig(classes=3, videos_per_class=3, seed=5, sizes=((160, 120),), min_frames=12, max_frames=16)


def decode_all(path: Path) -> np.ndarray:
    """(T, H, W, 3) uint8: every frame ffmpeg decodes, no rate conversion, no scaling."""
    info = probe(path)
    res = subprocess.run(
        [ffmpeg_binary(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    )
    return np.frombuffer(res.stdout, np.uint8).reshape(-1, info.height, info.width, 3)


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth_small")
    return root, synth(SMALL, root, progress=False)


# ------------------------------------------------------------------------------------------ layout


def test_layout_files_parse_and_agree(small):
    root, summary = small
    assert summary["output"] == str(root) and summary["classes"] == 3 and summary["videos"] == 9
    assert summary["splits"] == {"train": 3, "val": 3, "test": 3}
    assert (root / "wlasl_class_list.txt").read_text() == "0\tbook\n1\tdrink\n2\tcomputer\n"

    wlasl = json.loads((root / "WLASL_v0.3.json").read_text())
    assert [e["gloss"] for e in wlasl] == ["book", "drink", "computer"]
    nslt = json.loads((root / "nslt_3.json").read_text())
    instances = [(label, inst) for label, e in enumerate(wlasl) for inst in e["instances"]]
    ids = [inst["video_id"] for _, inst in instances]
    assert len(ids) == len(set(ids)) == 9 and all(len(v) == 5 and v.isdigit() for v in ids)
    assert sorted(nslt) == sorted(ids)
    assert sorted(p.name for p in (root / "videos").iterdir()) == sorted(f"{v}.mp4" for v in ids)
    for label, inst in instances:
        assert list(inst) == ["bbox", "fps", "frame_start", "frame_end", "instance_id", "signer_id", "source",
                              "split", "url", "variation_id", "video_id"]
        assert (inst["frame_start"], inst["frame_end"], inst["variation_id"]) == (1, -1, 0)
        assert inst["fps"] in (25, 30) and 1 <= inst["signer_id"] <= SMALL.signers
        entry = nslt[inst["video_id"]]
        assert entry["subset"] == inst["split"]
        assert entry["action"][:2] == [label, 1] and 12 <= entry["action"][2] <= 16
    for e in wlasl:  # 3 videos per class: one of each split
        assert sorted(i["split"] for i in e["instances"]) == ["test", "train", "val"]
        assert [i["instance_id"] for i in e["instances"]] == [0, 1, 2]


def test_videos_have_the_listed_size_rate_and_frame_count(small):
    root, _ = small
    nslt = json.loads((root / "nslt_3.json").read_text())
    specs = {s.video_id: s for s in plan(SMALL)}
    assert set(specs) == set(nslt)
    rates = set()
    for vid, entry in nslt.items():
        path = root / "videos" / f"{vid}.mp4"
        info = probe(path)
        assert (info.width, info.height, info.codec, info.pix_fmt) == (160, 120, "h264", "yuv420p")
        assert info.fps == pytest.approx(float(parse_fps(specs[vid].fps)), abs=0.01)
        frames = decode_all(path)
        assert len(frames) == entry["action"][2] == specs[vid].frames
        # Lossy, but the decoded video is the rendered one.
        assert np.abs(frames.astype(int) - render_video(specs[vid])).mean() < 4
        rates.add(specs[vid].fps)
    assert len(rates) >= 2  # the frame rates do vary


def x264_options(path: Path) -> dict[str, str]:
    """The encoder settings x264 writes into its stream (an SEI message): {"cabac": "1", ...}."""
    data = path.read_bytes()
    start = data.index(b"options: ") + len(b"options: ")
    text = data[start:data.index(b"\x00", start)].decode("ascii", "replace")
    return dict(kv.split("=", 1) for kv in text.split() if "=" in kv)


def test_x264_preset_medium_writes_web_style_streams_of_the_same_frames(small, tmp_path):
    """--x264-preset medium (for loader benchmarks) gives CABAC and deblocking, as ffmpeg's default does;
    the default ultrafast has neither. Same videos otherwise."""
    from click.testing import CliRunner

    from wlasl_shards.cli import main

    root, _ = small
    out = tmp_path / "medium"
    synth(dataclasses.replace(SMALL, x264_preset="medium"), out, progress=False)
    name = sorted((root / "videos").iterdir())[0].name
    fast, medium = x264_options(root / "videos" / name), x264_options(out / "videos" / name)
    assert (fast["cabac"], fast["deblock"][0]) == ("0", "0")
    assert (medium["cabac"], medium["deblock"][0], medium["bframes"]) == ("1", "1", "3")
    assert np.abs(decode_all(out / "videos" / name).astype(int) - decode_all(root / "videos" / name)).mean() < 4
    cli = tmp_path / "cli"
    result = CliRunner().invoke(main, ["synth", str(cli), "--classes", "1", "--videos-per-class", "1",
                                       "--max-size", "320", "--frames", "8", "8", "--x264-preset", "medium"])
    assert result.exit_code == 0, result.output
    assert x264_options(next((cli / "videos").iterdir()))["cabac"] == "1"
    bad = CliRunner().invoke(main, ["synth", str(tmp_path / "bad"), "--x264-preset", "quick"])
    assert bad.exit_code == 2 and "x264_preset must be one of" in bad.output


def test_bbox_is_inside_the_frame_and_holds_everything_that_is_not_background():
    specs = plan(dataclasses.replace(SMALL, classes=10, videos_per_class=2, sizes=((160, 120), (320, 240)),
                                     fps_choices=("25",)))
    for spec in specs:
        x1, y1, x2, y2 = box = signer_bbox(spec)
        assert all(isinstance(v, int) for v in box)
        assert 0 <= x1 < x2 <= spec.width and 0 <= y1 < y2 <= spec.height
        # The signer is big: the bbox is most of its square (the crop that training sees).
        assert max(x2 - x1, y2 - y1) >= 0.8 * spec.box[2]
        changed = np.any(render_video(spec) != render_background(spec), axis=(0, 3))  # (H, W)
        ys, xs = np.nonzero(changed)
        assert (x1, y1) <= (xs.min(), ys.min()) and (xs.max() < x2 and ys.max() < y2)
        # ...and tightly: it touches what was drawn (soft edges and rounding allow a few pixels).
        assert xs.min() - x1 <= 3 and ys.min() - y1 <= 3 and x2 - xs.max() <= 4 and y2 - ys.max() <= 4


# ------------------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_across_runs_and_worker_counts(small, tmp_path):
    root, _ = small
    again = tmp_path / "again"
    synth(dataclasses.replace(SMALL, workers=2), again, progress=False)
    assert read_tree(again) == read_tree(root)


def test_another_seed_gives_other_videos(small, tmp_path):
    root, _ = small
    other = tmp_path / "other"
    synth(dataclasses.replace(SMALL, seed=SMALL.seed + 1), other, progress=False)
    a, b = read_tree(root), read_tree(other)
    videos_a = {k: v for k, v in a.items() if k.startswith("videos")}
    videos_b = {k: v for k, v in b.items() if k.startswith("videos")}
    assert len(videos_b) == 9 and not set(videos_a.values()) & set(videos_b.values())
    assert a["WLASL_v0.3.json"] != b["WLASL_v0.3.json"]
    assert a["wlasl_class_list.txt"] == b["wlasl_class_list.txt"]  # the glosses do not depend on the seed


def test_plan_draws_each_video_independently_of_the_others():
    # Adding classes or videos does not change the videos already there (apart from their random ids).
    few = plan(SMALL)
    more = {(s.label, s.instance_id): s for s in plan(dataclasses.replace(SMALL, classes=5))}
    for s in few:
        assert dataclasses.replace(more[s.label, s.instance_id], video_id=s.video_id) == s


# ------------------------------------------------------------------------------------------ classes


def test_class_styles_are_distinct_and_no_class_is_the_mirror_of_another():
    styles = [class_style(k) for k in range(S.MAX_CLASSES)]
    assert len(set(styles)) == S.MAX_CLASSES
    # The first 40 differ pairwise in at least two of shape, path and colour.
    for i in range(40):
        for j in range(i):
            a, b = styles[i], styles[j]
            assert (a.shape != b.shape) + (a.trajectory != b.trajectory) + (a.hue != b.hue) >= 2
    with pytest.raises(ValueError, match="class index"):
        class_style(S.MAX_CLASSES)
    # Every hand shape is its own mirror image...
    u, v = np.meshgrid(np.linspace(-1.3, 1.3, 53, dtype=np.float32), np.linspace(-1.3, 1.3, 53, dtype=np.float32))
    for shape in S.SHAPES:
        assert np.array_equal(S._shape_norm(shape, u, v) < 1, S._shape_norm(shape, -u, v) < 1), shape
    # ...and no path's mirror image is another path, whatever the phase.
    angles = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    curves = {name: np.array([f(a) for a in angles]) for name, f in S.PATHS.items()}
    for name, curve in curves.items():
        mirrored = curve * [-1, 1]
        for other, target in curves.items():
            if other != name:
                gap = min(np.abs(np.roll(mirrored, k, axis=0) - target).mean() for k in range(len(angles)))
                assert gap > 0.1, (name, other)


def test_a_nearest_centroid_classifier_tells_classes_apart_from_short_flipped_crops():
    """Learnability, crudely: 12-frame windows of the square signer crop at 24 px, summarised by where and how
    much pixels change; centroids from 8 videos per class (plus their mirror images, as training flips), tested
    on 4 new videos per class and on their mirror images. Chance is 1/10; this gets 0.875 both ways."""
    signers = draw_signers(np.random.default_rng(1), 4)

    def features(label: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        spec = draw_spec(np.random.default_rng([7, label, i]), label, size=(128, 96), fps="25", frames=12,
                         signer=signers[i % 4])
        x, y, side, _ = square_around_box(signer_bbox(spec), spec.width, spec.height, 0.1)
        idx = ((np.arange(24) + 0.5) * side / 24).astype(int)
        crop = render_video(spec)[:, y + idx][:, :, x + idx].astype(np.float32) / 255
        out = []
        for c in (crop, crop[:, :, ::-1]):
            out.append(np.concatenate([c.std(0).ravel(), np.abs(np.diff(c, axis=0)).mean(0).ravel()]))
        return out[0], out[1]

    classes, train, test = range(10), range(8), range(8, 12)
    feats = {(k, i): features(k, i) for k in classes for i in [*train, *test]}
    centroids = np.stack([np.mean([f for i in train for f in feats[k, i]], axis=0) for k in classes])
    for flipped in (0, 1):
        hits = [np.argmin(((centroids - feats[k, i][flipped]) ** 2).sum(1)) == k for k in classes for i in test]
        assert np.mean(hits) >= 0.7, (flipped, np.mean(hits))


def test_changing_only_the_class_changes_only_the_arm_and_hand():
    spec = plan(SMALL)[0]
    base = render_video(spec)
    other = render_video(dataclasses.replace(spec, label=1))
    differs = np.any(base != other, axis=(0, 3))
    x1, y1, x2, y2 = signer_bbox(spec)
    assert differs.any() and not differs[:y1].any() and not differs[:, :x1].any()
    # The hand is big: in the signer's box, the two classes differ in a sizeable share of pixels per frame.
    frac = np.any(base != other, axis=3)[:, y1:y2, x1:x2].mean(axis=(1, 2))
    assert frac.min() > 0.02


# ------------------------------------------------------------------------------------------- config


def test_split_counts():
    assert [split_counts(n) for n in (1, 2, 3, 4, 6, 12, 13)] == [
        (1, 0, 0), (1, 1, 0), (1, 1, 1), (2, 1, 1), (4, 1, 1), (8, 2, 2), (9, 2, 2)]


def test_default_config_matches_the_real_layout():
    cfg = SynthConfig()
    assert (cfg.classes, cfg.videos_per_class, cfg.min_frames, cfg.max_frames, cfg.workers) == (10, 12, 40, 80, None)
    specs = plan(cfg)
    assert len(specs) == 120 and {s.split for s in specs[:12]} == {"train", "val", "test"}
    assert [s.split for s in specs[:12]].count("train") == 8
    assert {(s.width, s.height) for s in specs} == set(cfg.sizes)
    assert {s.fps for s in specs} == set(cfg.fps_choices)
    assert min(s.frames for s in specs) >= 40 and max(s.frames for s in specs) <= 80
    assert S.glosses(34)[:3] == ["book", "drink", "computer"] and S.glosses(34)[-1] == "sign_033"


@pytest.mark.parametrize("change, message", [
    ({"classes": 0}, "classes must be in 1..640"),
    ({"classes": 700}, "classes must be in 1..640"),
    ({"videos_per_class": 0}, "videos_per_class must be >= 1"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"sizes": ((161, 120),)}, "even integers >= 64"),
    ({"sizes": ()}, "at least one"),
    ({"fps_choices": ("0",)}, "fps must be > 0"),
    ({"fps_choices": ("fast",)}, "fps must be a number"),
    ({"min_frames": 20, "max_frames": 10}, "min_frames <= max_frames"),
    ({"workers": -1}, "workers must be >= 0 and <= 1024, got -1"),
    # finite, sane ranges (issue 12 item 5): each would pass a bare `> 0` test
    ({"fps_choices": ("1e9",)}, "fps must be <= 240, got '1e9'"),
    ({"fps_choices": (float("inf"),)}, r"fps must be a number or a ratio like '30000/1001' \(finite\), got inf"),
    ({"fps_choices": (float("nan"),)}, "fps must be a number or a ratio"),
    ({"sizes": ((100000, 100000),)}, "even integers >= 64 and <= 4096"),
    ({"sizes": ((float("nan"), 64),)}, "even integers >= 64 and <= 4096"),
    ({"max_frames": 10**9}, "max_frames must be <= 100000, got 1000000000"),
    ({"x264_preset": "quick"}, "x264_preset must be one of ultrafast, .*, got 'quick'"),
])
def test_bad_config_is_refused_with_the_value(change, message, tmp_path):
    cfg = dataclasses.replace(SynthConfig(), **change)
    with pytest.raises(ValueError, match=message):
        synth(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ write_video


def moving_square(height: int, width: int, count: int) -> np.ndarray:
    frames = np.zeros((count, height, width, 3), np.uint8)
    frames[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, None, :]
    for t in range(count):
        frames[t, 10:30, 5 + 3 * t: 25 + 3 * t] = (255, 255, 0)
    return frames


@pytest.mark.parametrize("name, kw", [
    ("h264.mp4", {}),
    ("mpeg4.mp4", {"codec": "mpeg4", "extra_output_args": {"q:v": 3}}),
    ("mjpeg.avi", {"codec": "mjpeg", "pix_fmt": "yuvj422p"}),
    ("vp9.webm", {"codec": "libvpx-vp9", "extra_output_args": {"deadline": "realtime", "cpu-used": 8}}),
    ("odd444.mkv", {"pix_fmt": "yuv444p", "size": (61, 45)}),  # odd sides: fine without chroma subsampling
])
def test_write_video_round_trip(tmp_path, name, kw):
    kw = dict(kw)
    width, height = kw.pop("size", (80, 48))
    frames = moving_square(height, width, 9)
    path = tmp_path / name
    write_video(path, iter(frames), "30000/1001", **kw)  # any iterable of frames
    got = decode_all(path)
    assert got.shape == frames.shape
    assert np.abs(got.astype(int) - frames).mean() < 8
    assert probe(path).fps == pytest.approx(29.97, abs=0.01)
    write_video(tmp_path / f"again-{name}", frames, "30000/1001", **kw)
    assert (tmp_path / f"again-{name}").read_bytes() == path.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_write_video_lossless_is_exact(tmp_path):
    frames = moving_square(48, 80, 5)
    write_video(tmp_path / "v.mkv", frames, 25.0, codec="libx264rgb", pix_fmt="rgb24", extra_output_args={"qp": 0})
    assert np.array_equal(decode_all(tmp_path / "v.mkv"), frames)


def test_write_video_errors_name_the_problem_and_leave_no_file(tmp_path):
    path = tmp_path / "v.mp4"
    with pytest.raises(EncodeError, match=r"(?s)ffmpeg failed.*61x45.*divisible by 2"):
        write_video(path, moving_square(45, 61, 3), 25)  # 4:2:0 H.264 needs even sides

    def stalled():  # a frame source that stops producing: ffmpeg is killed at the timeout
        yield from moving_square(48, 80, 2)
        time.sleep(3)
        yield from moving_square(48, 80, 2)

    with pytest.raises(EncodeError, match=r"ffmpeg timed out after 0.5 s writing .*v.mp4 \(80x48 rgb24, "):
        write_video(path, stalled(), 25, timeout=0.5)
    frames = list(moving_square(48, 80, 3)) + [np.zeros((48, 64, 3), np.uint8)]
    with pytest.raises(ValueError, match="frame 3: size 64x48 differs from the first frame's 80x48"):
        write_video(path, frames, 25)
    with pytest.raises(ValueError, match=r"frame 0: expected \(H, W, 3\) uint8"):
        write_video(path, [np.zeros((48, 80), np.uint8)], 25)
    with pytest.raises(ValueError, match="no frames"):
        write_video(path, [], 25)
    with pytest.raises(ValueError, match="fps must be > 0"):
        write_video(path, moving_square(48, 80, 3), "-25")
    with pytest.raises(EncodeError, match="nosuchcodec"):
        write_video(path, moving_square(48, 80, 3), 25, codec="nosuchcodec")
    assert list(tmp_path.iterdir()) == []


def test_parse_fps():
    assert parse_fps("30000/1001") == parse_fps(30000 / 1001) and float(parse_fps("25")) == 25.0
    assert math.isclose(float(parse_fps(29.97)), 29.97)
