"""`wlasl-shards inspect`: what a built dataset holds, whether its shards are intact, what it looks like."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wlasl_shards import shards, storage


def summary(index: dict) -> str:
    """A table of the dataset per split."""
    head = (f"{'split':<6} {'videos':>7} {'classes':>7} {'frames':>9} {'MB':>9} {'shards':>6} {'failed':>6} "
            f"{'missing':>7}")
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


def verify(root: str | os.PathLike, index: dict) -> list[Mismatch]:
    """Re-hash every shard listed in the index (read from `root`, a directory or URL); return the shards
    whose size or sha256 differ, or that cannot be read."""
    bad = []
    for split in index["splits"].values():
        for rec in split["shards"]:
            url = storage.dataset_url(root, rec["name"])
            try:
                digest, size = storage.sha256(url)
            except storage.NotFound:
                bad.append(Mismatch(rec["name"], "missing"))
                continue
            except OSError as e:  # StorageError: names the URL and why (access, timeout)
                bad.append(Mismatch(rec["name"], str(e)))
                continue
            if size != rec["bytes"]:
                bad.append(Mismatch(rec["name"], f"{size} bytes, index says {rec['bytes']}"))
            elif digest != rec["sha256"]:
                bad.append(Mismatch(rec["name"], f"sha256 {digest[:12]}..., index says {rec['sha256'][:12]}..."))
    return bad


def first_samples(root: str | os.PathLike, index: dict, count: int, split: str | None = None) -> Iterator[dict]:
    """The first `count` samples of a split (the first non-empty one when None, each non-empty one
    in index order when "all"), read sequentially."""
    names = [s for s in index["splits"] if index["splits"][s]["shards"] and split in (None, "all", s)]
    if not names:
        raise ValueError(f"no shards for split {split!r}" if split not in (None, "all")
                         else "the dataset has no shards")
    for name in names if split == "all" else names[:1]:
        yield from itertools.islice(_read_split(root, index["splits"][name]), count)


def _read_split(root: str | os.PathLike, split: dict) -> Iterator[dict]:
    for rec in split["shards"]:
        with storage.open_read(storage.dataset_url(root, rec["name"])) as f:
            yield from shards.read_samples(f)


def save_image(image: Image.Image, path: str | os.PathLike, format: str | None = None, **params: Any) -> None:
    """Write `image` with Pillow (`params` are its save options) atomically: a reader never finds a
    half-written picture. The format follows the file's suffix unless given; ValueError for an unknown one."""
    if format is None:
        suffix = os.path.splitext(os.fspath(path))[1].lower()
        format = Image.registered_extensions().get(suffix)
        if format is None:
            raise ValueError(f"{os.fspath(path)}: unknown image file extension {suffix!r} (use .png, .jpg, ...)")
    storage.write_atomic(path, lambda f: image.save(f, format=format, **params))


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


# ---------------------------------------------------------------------------------------------- GIF

GIF_MAX_SAMPLES = 36  # tiles in one GIF: more would be too large to load and to look at
GIF_MAX_FPS = 50.0  # GIF delays count 1/100 s, and viewers slow delays under 2/100 s down to 1/10 s
GIF_CAPTION = 26  # pixels under each tile: gloss and label, split and video id, a progress bar
GIF_GAP = 2  # pixels between tiles


def gif_delay(fps: float) -> int:
    """Frames per second -> the GIF's delay per frame in 1/100 s (what the format stores);
    ValueError outside (0, GIF_MAX_FPS]."""
    if not (math.isfinite(fps) and 0 < fps <= GIF_MAX_FPS):
        raise ValueError(f"GIF fps must be > 0 and <= {GIF_MAX_FPS:g}, got {fps:g}")
    return max(2, round(100 / fps))


def gif_picks(count: int, source_fps: float, delay: int, frames: int) -> list[int]:
    """Source frame shown at each of `frames` GIF frames `delay`/100 s apart, so that a clip plays
    at its real speed: frame floor(t * source_fps) at time t, the last one held once the clip ends."""
    return [min(count - 1, math.floor(k * delay / 100 * source_fps + 1e-9)) for k in range(frames)]


def gif_frames(samples: list[dict], source_fps: float, fps: float = 10.0, thumb: int = 128,
               columns: int | None = None, max_frames: int = 100) -> list[Image.Image]:
    """Samples (raw shard samples) tiled in a grid, animated: a list of RGB images, one per GIF
    frame, `gif_delay(fps)`/100 s apart, as many as the longest clip needs at `fps` (at most
    `max_frames`). Each tile is the clip's frames scaled to fit `thumb` x `thumb`, over a caption
    with the gloss, label, split and video id and a bar showing how far the clip has played;
    `columns` tiles per row (about square when None). Shorter clips hold their last frame.
    """
    if not samples:
        raise ValueError("no samples to draw a GIF of")
    if len(samples) > GIF_MAX_SAMPLES:
        raise ValueError(f"a GIF holds at most {GIF_MAX_SAMPLES} samples, got {len(samples)}")
    if not 16 <= thumb <= 512:
        raise ValueError(f"GIF thumbnail size must be in [16, 512] pixels, got {thumb}")
    if max_frames < 1:
        raise ValueError(f"GIF max_frames must be >= 1, got {max_frames}")
    if not source_fps > 0:
        raise ValueError(f"source fps must be > 0, got {source_fps}")
    delay = gif_delay(fps)
    cols = columns or math.ceil(math.sqrt(len(samples)))
    if cols < 1:
        raise ValueError(f"GIF columns must be >= 1, got {cols}")
    rows = math.ceil(len(samples) / cols)
    metas = [json.loads(s[shards.EXT_META]) for s in samples]
    counts = [shards.frame_count(m) for m in metas]
    length = min(max_frames, max(math.ceil(c / (source_fps * delay / 100) - 1e-9) for c in counts))
    tile_w, tile_h = thumb, thumb + GIF_CAPTION
    size = (cols * tile_w + (cols - 1) * GIF_GAP, rows * tile_h + (rows - 1) * GIF_GAP)
    font = ImageFont.load_default()
    base = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(base)
    tiles: list[list[Image.Image]] = []  # per sample, per GIF frame: the scaled frame
    for i, (sample, meta, count) in enumerate(zip(samples, metas, counts)):
        x, y = (i % cols) * (tile_w + GIF_GAP), (i // cols) * (tile_h + GIF_GAP)
        draw.text((x + 3, y + thumb + 1), _fit(draw, font, f"{meta['gloss']} ({meta['label']})", thumb - 6),
                  fill=(255, 255, 255), font=font)
        draw.text((x + 3, y + thumb + 12), _fit(draw, font, f"{meta['split']} {meta['video_id']}", thumb - 6),
                  fill=(150, 150, 150), font=font)
        picks = gif_picks(count, source_fps, delay, length)
        unique = sorted(set(picks))
        decoded = dict(zip(unique, shards.decode_frames(sample, unique)))
        scaled = {j: _scale_to_fit(frame, thumb) for j, frame in decoded.items()}
        tiles.append([scaled[j] for j in picks])
    out = []
    for k in range(length):
        frame = base.copy()
        bar = ImageDraw.Draw(frame)
        for i, (tile, count) in enumerate(zip(tiles, counts)):
            x, y = (i % cols) * (tile_w + GIF_GAP), (i // cols) * (tile_h + GIF_GAP)
            img = tile[k]
            frame.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
            played = min(1.0, (k * delay / 100 * source_fps + 1) / count)
            bar.rectangle((x, y + tile_h - 3, x + round(played * (thumb - 1)), y + tile_h - 1), fill=(70, 130, 200))
        out.append(frame)
    return out


def _scale_to_fit(frame: np.ndarray, side: int) -> Image.Image:
    """(H, W, 3) uint8 -> an image whose longer side is `side` (up or down), aspect kept."""
    h, w = frame.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0 if scale < 0.5 else None)


def _fit(draw: ImageDraw.ImageDraw, font, text: str, width: int) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def save_gif(frames: list[Image.Image], path: Path, fps: float) -> None:
    """RGB frames -> an endlessly looping GIF at `path` (Pillow's writer), `gif_delay(fps)`/100 s
    per frame. One palette for all frames, without dithering: per-frame palettes and dither noise
    make still areas flicker. Pillow merges identical consecutive frames (adding their delays), so
    the file can hold fewer frames than given, never a different timing."""
    if not frames:
        raise ValueError("no frames to write a GIF of")
    delay = gif_delay(fps)
    # The palette comes from a strip of up to 8 frames spread over the animation.
    picks = sorted({round(i) for i in np.linspace(0, len(frames) - 1, min(8, len(frames)))})
    w, h = frames[0].size
    strip = Image.new("RGB", (w, h * len(picks)))
    for n, i in enumerate(picks):
        strip.paste(frames[i], (0, n * h))
    palette = strip.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    indexed = [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    save_image(indexed[0], path, "GIF", save_all=True, append_images=indexed[1:], duration=delay * 10, loop=0)
