"""`inspect --gif`: tiled, captioned, real-speed animations of a dataset's first samples."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.train.conftest import write_npy_dataset
from wlasl_shards import inspect as insp
from wlasl_shards import shards, storage
from wlasl_shards.cli import main
from wlasl_shards.preprocess.build import BuildConfig, build


def run_cli(*args, code: int = 0) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def gif_of(path: Path) -> tuple[tuple[int, int], list[np.ndarray], dict]:
    """(size, RGB frames, info of the first frame) of a GIF file."""
    with Image.open(path) as img:
        assert img.format == "GIF"
        info = dict(img.info)
        frames = []
        for k in range(img.n_frames):
            img.seek(k)
            frames.append(np.asarray(img.convert("RGB")).astype(np.int16))
        return img.size, frames, info


@pytest.fixture(scope="module")
def npy_dataset(tmp_path_factory) -> Path:
    """4 classes, 2 train / 1 val / 1 test clips each, 10 frames of 32 px (every frame differs)."""
    return write_npy_dataset(tmp_path_factory.mktemp("gif_npy"), frames=10, size=32)


@pytest.fixture(scope="module")
def built(tiny_wlasl, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gif_built")
    build(BuildConfig(source=str(tiny_wlasl), output=str(out), size=48, workers=1, progress=False))
    return out


def test_frames_are_picked_at_real_speed():
    assert insp.gif_delay(10) == 10 and insp.gif_delay(25) == 4 and insp.gif_delay(30) == 3
    # 25 fps source, 1/10 s per GIF frame: every 2.5th frame, rounded down.
    assert insp.gif_picks(20, 25.0, 10, 8) == [0, 2, 5, 7, 10, 12, 15, 17]
    assert insp.gif_picks(3, 25.0, 10, 4) == [0, 2, 2, 2]  # an ended clip holds its last frame
    assert insp.gif_picks(4, 10.0, 4, 4) == [0, 0, 0, 1]  # slower source than GIF: frames repeat
    for bad in (0.0, -1.0, 51.0, math.nan):
        with pytest.raises(ValueError, match="GIF fps must be > 0 and <= 50"):
            insp.gif_delay(bad)


def test_first_samples_of_all_splits_in_index_order(npy_dataset):
    index = storage.load_index(npy_dataset)
    picked = [json.loads(s["json"]) for s in insp.first_samples(npy_dataset, index, 2, "all")]
    assert [m["split"] for m in picked] == ["train", "train", "val", "val", "test", "test"]
    assert [m["video_id"] for m in picked[:2]] == ["train000", "train001"]
    assert len(list(insp.first_samples(npy_dataset, index, 3, "val"))) == 3


def test_gif_tiles_the_samples_frame_by_frame(npy_dataset, tmp_path):
    index = storage.load_index(npy_dataset)
    samples = list(insp.first_samples(npy_dataset, index, 3, "train"))
    frames = insp.gif_frames(samples, 25.0, fps=10, thumb=64)
    # 10 frames at 25 fps last 0.4 s: 4 GIF frames at 10 fps; 3 tiles -> 2 x 2 grid of 64 + caption.
    assert len(frames) == 4
    tile_h = 64 + insp.GIF_CAPTION
    assert all(f.size == (2 * 64 + insp.GIF_GAP, 2 * tile_h + insp.GIF_GAP) for f in frames)
    arrays = [np.asarray(f).astype(np.int16) for f in frames]
    # Tile 0 shows source frames 0, 2, 5, 7 of the first sample, scaled 32 -> 64 px.
    source = shards.decode_frames(samples[0], [0, 2, 5, 7])
    for arr, src in zip(arrays, source):
        expected = np.asarray(Image.fromarray(src).resize((64, 64), Image.Resampling.BILINEAR))
        assert np.array_equal(arr[:64, :64], expected)
    assert all(np.abs(a - b).mean() > 1 for a, b in zip(arrays, arrays[1:]))  # it moves
    assert arrays[0][:64, :64].std() > 5 and arrays[0][64:tile_h, :64].max() > 200  # picture, white caption
    assert arrays[0][tile_h + 2:, 64 + 2:].max() == 0  # the fourth cell is empty

    path = tmp_path / "s.gif"
    insp.save_gif(frames, path, 10)
    size, read, info = gif_of(path)
    assert size == frames[0].size and len(read) == 4
    assert info["duration"] == 100 and info["loop"] == 0
    for got, want in zip(read, arrays):
        assert np.abs(got - want).mean() < 3  # one shared 256-colour palette keeps the picture
    assert all(np.abs(a - b).mean() > 1 for a, b in zip(read, read[1:]))
    assert [p.name for p in tmp_path.iterdir()] == ["s.gif"]  # no temporary left


def test_gif_length_is_capped_and_bad_input_refused(npy_dataset):
    index = storage.load_index(npy_dataset)
    samples = list(insp.first_samples(npy_dataset, index, 2, "train"))
    assert len(insp.gif_frames(samples, 25.0, fps=25, thumb=32, max_frames=6)) == 6
    with pytest.raises(ValueError, match="at most 36 samples, got 37"):
        insp.gif_frames(samples * 18 + samples[:1], 25.0)
    with pytest.raises(ValueError, match="thumbnail size must be in \\[16, 512\\] pixels, got 8"):
        insp.gif_frames(samples, 25.0, thumb=8)
    with pytest.raises(ValueError, match="no samples"):
        insp.gif_frames([], 25.0)


def test_inspect_gif_cli(built, tmp_path):
    index = storage.load_index(built)
    picked = list(insp.first_samples(built, index, 2, "all"))
    longest = max(json.loads(s["json"])["frames"]["count"] for s in picked)
    expected = math.ceil(longest / 2.5)  # 25 fps shards, 10 fps GIF

    gif = tmp_path / "out.gif"
    text = run_cli("inspect", built, "--gif", gif, "--samples", "2", "--split", "all", "--gif-size", "64")
    assert f"wrote {gif} (6 samples, {expected} frames at 10 fps)" in text
    size, frames, info = gif_of(gif)
    assert size == (3 * 64 + 2 * insp.GIF_GAP, 2 * (64 + insp.GIF_CAPTION) + insp.GIF_GAP)
    # Pillow merges identical consecutive frames, so the file may hold fewer, never more.
    assert 2 <= len(frames) <= expected and info["duration"] % 100 == 0
    assert np.abs(frames[0] - frames[1]).mean() > 0.5 and frames[0].std() > 10

    assert "GIF fps must be > 0 and <= 50, got 0" in run_cli("inspect", built, "--gif", gif, "--gif-fps", "0", code=2)
    assert "not in the range 16<=x<=512" in run_cli("inspect", built, "--gif", gif, "--gif-size", "8", code=2)
