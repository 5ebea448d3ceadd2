"""Shared fixtures: tiny generated videos and datasets (a few frames, small sizes, lossless where exactness matters)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.servers import http_server, s3_env, s3_server, s3_server_factory  # noqa: F401 - fixtures for all tests
from wlasl_shards.preprocess.synth import SynthConfig, synth, write_video

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Small enough for CI (2 cores): 4 classes x 4 videos, 160x120 to 320x240, 12-20 frames.
TINY = SynthConfig(classes=4, videos_per_class=4, seed=3, sizes=((160, 120), (320, 240)),
                   min_frames=12, max_frames=20, workers=1)


def quadrants(height: int, width: int, count: int) -> np.ndarray:
    """(count, H, W, 3) uint8: red / green / blue / white quadrants (TL, TR, BL, BR), a moving
    grey bar so frames differ. Colours survive any crop or codec, so geometry can be asserted."""
    frames = np.zeros((count, height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    frames[:, :h2, :w2] = (255, 0, 0)
    frames[:, :h2, w2:] = (0, 255, 0)
    frames[:, h2:, :w2] = (0, 0, 255)
    frames[:, h2:, w2:] = (255, 255, 255)
    for t in range(count):
        frames[t, :, (t * 3) % width] = 128
    return frames


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """(H, W, 3) uint8 -> a baseline JPEG (4:2:0) with PIL: frames for hand-made shards (`build` has
    ffmpeg encode its own, see `video.decode_jpeg`); any baseline JPEG is a valid frame."""
    buf = io.BytesIO()
    Image.fromarray(frame, "RGB").save(buf, format="JPEG", quality=quality, subsampling=2)
    return buf.getvalue()


def write_quadrants(path: Path, height: int = 120, width: int = 160, count: int = 20, fps="25", **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, quadrants(height, width, count), fps, **kw)
    return path


def synth_dataset(tmp_path_factory, name: str, cfg: SynthConfig) -> Path:
    """A synthetic dataset in the WLASL layout in a fresh session temp dir (read-only for tests)."""
    root = tmp_path_factory.mktemp(name)
    synth(cfg, root, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_wlasl(tmp_path_factory) -> Path:
    """4 classes x 4 videos (see TINY)."""
    return synth_dataset(tmp_path_factory, "tiny_wlasl", TINY)


def wlasl_json(root: Path, glosses: dict[str, list[dict]]) -> None:
    """Write a WLASL_v0.3.json from {gloss: [instance overrides]} with WLASL's default fields."""
    entries = []
    n = 0
    for gloss, instances in glosses.items():
        full = []
        for inst in instances:
            n += 1
            full.append({"bbox": None, "fps": 25, "frame_start": 1, "frame_end": -1, "instance_id": n,
                         "signer_id": 1, "source": "test", "split": "train", "url": "", "variation_id": 0,
                         **inst})
        entries.append({"gloss": gloss, "instances": full})
    (root / "WLASL_v0.3.json").write_text(json.dumps(entries))
