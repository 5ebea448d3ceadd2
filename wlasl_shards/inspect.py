"""`wlasl-shards inspect`: what a built dataset holds, whether its shards are intact, what it looks like."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

from wlasl_shards import shards

log = logging.getLogger(__name__)


def load_index(root: Path) -> dict:
    """dataset.json of a dataset directory (or the file itself); ValueError naming what is wrong."""
    path = root / shards.INDEX_NAME if root.is_dir() else root
    if not path.is_file():
        raise ValueError(f"{str(path)!r} does not exist: not a wlasl-shards dataset")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    return shards.check_index(index, str(path))


def summary(index: dict) -> str:
    """A table of the dataset per split."""
    head = f"{'split':<6} {'videos':>7} {'classes':>7} {'frames':>9} {'MB':>9} {'shards':>6} {'failed':>6} {'missing':>7}"
    lines = [f"{len(index['classes'])} classes, format v{index['format_version']}, "
             f"{index['params']['fps']:g} fps, {index['params']['codec']}, crop {index['crop_resolved']} "
             f"{index['params']['size']}", head]
    for split, s in index["splits"].items():
        lines.append(f"{split:<6} {s['samples']:>7} {s.get('classes', '-'):>7} {s['frames']:>9} "
                     f"{s['bytes'] / 1e6:>9.1f} {len(s['shards']):>6} {s['failed']:>6} {s['missing']:>7}")
    reasons: dict[str, int] = {}
    for f in index["failed"]:
        kind = f["reason"].split(":")[0]
        reasons[kind] = reasons.get(kind, 0) + 1
    for kind, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        lines.append(f"failed: {n:>5} x {kind}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Mismatch:
    name: str
    problem: str


def verify(root: Path, index: dict) -> list[Mismatch]:
    """Re-hash every shard listed in the index; return the shards whose size or sha256 differ."""
    bad = []
    for split in index["splits"].values():
        for rec in split["shards"]:
            path = root / rec["name"]
            if not path.is_file():
                bad.append(Mismatch(rec["name"], "missing"))
                continue
            sha = hashlib.sha256()
            size = 0
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    sha.update(chunk)
                    size += len(chunk)
            if size != rec["bytes"]:
                bad.append(Mismatch(rec["name"], f"{size} bytes, index says {rec['bytes']}"))
            elif sha.hexdigest() != rec["sha256"]:
                bad.append(Mismatch(rec["name"], f"sha256 {sha.hexdigest()[:12]}..., index says {rec['sha256'][:12]}..."))
    return bad


def first_samples(root: Path, index: dict, count: int, split: str | None = None) -> Iterator[dict]:
    """The first `count` samples of a split (the first non-empty one when None), read sequentially."""
    names = [s for s in index["splits"] if index["splits"][s]["shards"] and split in (None, s)]
    if not names:
        raise ValueError(f"no shards for split {split!r}" if split else "the dataset has no shards")
    n = 0
    for rec in index["splits"][names[0]]["shards"]:
        with open(root / rec["name"], "rb") as f:
            for sample in shards.read_samples(f):
                yield sample
                n += 1
                if n >= count:
                    return


def contact_sheet(samples: list[dict], frames_per_row: int = 8, thumb: int = 96) -> Image.Image:
    """One row per sample: `frames_per_row` frames evenly spaced over time, the gloss on the left."""
    label_w = 140
    sheet = Image.new("RGB", (label_w + frames_per_row * thumb, max(1, len(samples)) * thumb), "white")
    draw = ImageDraw.Draw(sheet)
    for row, sample in enumerate(samples):
        meta = json.loads(sample[shards.EXT_META])
        count = shards.frame_count(meta)
        picks = np.linspace(0, count - 1, frames_per_row).round().astype(int).tolist()
        frames = shards.decode_frames(sample, picks)
        for col, frame in enumerate(frames):
            img = Image.fromarray(frame)
            img.thumbnail((thumb, thumb))
            sheet.paste(img, (label_w + col * thumb, row * thumb))
        draw.text((4, row * thumb + 4), f"{meta['gloss']} ({meta['label']})", fill="black")
        draw.text((4, row * thumb + 20), f"{meta['video_id']} {meta['split']}", fill="gray")
        draw.text((4, row * thumb + 36), f"{count} frames", fill="gray")
    return sheet
