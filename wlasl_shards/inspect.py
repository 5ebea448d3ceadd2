"""`wlasl-shards inspect`: what a built dataset holds, whether its shards are intact, what it looks like."""

from __future__ import annotations

import math
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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


MAX_CONSECUTIVE_BAD = 20  # as the trainer's default max_consecutive_errors: past it the data is broken, not noisy


@dataclass
class Skipped:
    """Bad samples passed over while picking and drawing them (the trainer skips and counts the same
    way): `count`, and the first reasons, each naming the shard and sample."""

    count: int = 0
    reasons: list[str] = field(default_factory=list)
    in_a_row: int = 0

    KEEP = 20

    def add(self, where: str, error: BaseException) -> None:
        self.count += 1
        self.in_a_row += 1
        if len(self.reasons) < self.KEEP:
            self.reasons.append(f"{where}: {type(error).__name__}: {error}")
        if self.in_a_row > MAX_CONSECUTIVE_BAD:
            raise ValueError(f"{self.in_a_row} bad samples in a row; the last: {self.reasons[-1]}")

    def ok(self) -> None:
        self.in_a_row = 0

    def line(self) -> str:
        """One line for the user ('' when nothing was skipped)."""
        if not self.count:
            return ""
        return f"skipped {self.count} bad sample(s) (first: {self.reasons[0]})"


def first_samples(root: str | os.PathLike, index: dict, count: int, split: str | None = None,
                  skipped: Skipped | None = None) -> Iterator[dict]:
    """The first `count` usable samples of a split (the first non-empty one when None, each non-empty
    one in index order when "all"), read sequentially. A sample that fails `shards.check_sample`, or
    the unreadable rest of a shard, is skipped and recorded in `skipped`; ValueError past
    MAX_CONSECUTIVE_BAD in a row, or when a split has no usable sample at all."""
    skipped = Skipped() if skipped is None else skipped
    names = [s for s in index["splits"] if index["splits"][s]["shards"] and split in (None, "all", s)]
    if not names:
        raise ValueError(f"no shards for split {split!r}" if split not in (None, "all")
                         else "the dataset has no shards")
    for name in names if split == "all" else names[:1]:
        got = 0
        for sample in _read_split(root, index["splits"][name], skipped):
            yield sample
            got += 1
            if got >= count:
                break
        if not got:
            raise ValueError(f"no usable sample in split {name!r}: {skipped.line()}")


def _read_split(root: str | os.PathLike, split: dict, skipped: Skipped) -> Iterator[dict]:
    for rec in split["shards"]:
        url = storage.dataset_url(root, rec["name"])
        i = 0
        try:
            with storage.open_read(url) as f:
                for sample in shards.read_samples(f):
                    where = f"{url}: sample #{i} ({sample.get('__key__')})"
                    i += 1
                    try:
                        shards.check_sample(sample)
                    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                        skipped.add(where, e)
                        continue
                    skipped.ok()
                    yield sample
        except (OSError, tarfile.TarError, EOFError) as e:  # a missing, truncated or foreign shard
            skipped.add(f"{url}: sample #{i} onwards", e)


def _decoded(samples: list[dict], picks: Callable[[dict, int], list[int]], skipped: Skipped) -> list[tuple]:
    """(sample, meta, frames of picks(meta, count)) of each sample whose frames decode; the others are
    skipped and recorded."""
    out = []
    for sample in samples:
        try:
            meta = shards.check_sample(sample)
            wanted = picks(meta, shards.frame_count(meta))
            out.append((sample, meta, wanted, shards.decode_frames(sample, wanted)))
        except ValueError as e:
            skipped.add(f"sample {sample.get('__key__')}", e)
            continue
        skipped.ok()
    return out


def save_image(image: Image.Image, path: str | os.PathLike, format: str | None = None, **params: Any) -> None:
    """Write `image` with Pillow (`params` are its save options) atomically: a reader never finds a
    half-written picture. The format follows the file's suffix unless given; ValueError for an unknown one."""
    if format is None:
        suffix = os.path.splitext(os.fspath(path))[1].lower()
        format = Image.registered_extensions().get(suffix)
        if format is None:
            raise ValueError(f"{os.fspath(path)}: unknown image file extension {suffix!r} (use .png, .jpg, ...)")
    storage.write_atomic(path, lambda f: image.save(f, format=format, **params))


def contact_sheet(samples: list[dict], frames_per_row: int = 8, thumb: int = 96,
                  skipped: Skipped | None = None) -> Image.Image:
    """One row per sample: `frames_per_row` frames evenly spaced over time, the gloss on the left.
    A sample whose frames do not decode gets no row; it is recorded in `skipped`."""
    skipped = Skipped() if skipped is None else skipped
    rows = _decoded(samples, lambda meta, count: np.linspace(0, count - 1, frames_per_row).round().astype(int).tolist(),
                    skipped)
    label_w = 140
    sheet = Image.new("RGB", (label_w + frames_per_row * thumb, max(1, len(rows)) * thumb), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (_, meta, _, frames) in enumerate(rows):
        count = shards.frame_count(meta)
        for col, frame in enumerate(frames):
            img = Image.fromarray(frame)
            img.thumbnail((thumb, thumb))
            sheet.paste(img, (label_w + col * thumb, row * thumb))
        draw.text((4, row * thumb + 4), f"{meta.get('gloss', '?')} ({meta.get('label', '?')})", fill="black")
        draw.text((4, row * thumb + 20), f"{meta.get('video_id', '?')} {meta.get('split', '?')}", fill="gray")
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
               columns: int | None = None, max_frames: int = 100, skipped: Skipped | None = None) -> list[Image.Image]:
    """Samples (raw shard samples) tiled in a grid, animated: a list of RGB images, one per GIF
    frame, `gif_delay(fps)`/100 s apart, as many as the longest clip needs at `fps` (at most
    `max_frames`). Each tile is the clip's frames scaled to fit `thumb` x `thumb`, over a caption
    with the gloss, label, split and video id and a bar showing how far the clip has played;
    `columns` tiles per row (about square when None). Shorter clips hold their last frame. A sample
    whose frames do not decode gets no tile; it is recorded in `skipped` (ValueError when none is left).
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
    skipped = Skipped() if skipped is None else skipped
    if columns is not None and columns < 0:  # 0 means "about square", as None
        raise ValueError(f"GIF columns must be >= 1, got {columns}")
    # The longest clip whose metadata holds decides the GIF's length; each tile decodes the frames it shows.
    counts = []
    for sample in samples:
        try:
            counts.append(shards.frame_count(shards.check_sample(sample)))
        except ValueError:
            pass  # recorded by _decoded below
    length = min(max_frames, max((math.ceil(c / (source_fps * delay / 100) - 1e-9) for c in counts), default=1))
    usable = _decoded(samples, lambda meta, count: sorted(set(gif_picks(count, source_fps, delay, length))), skipped)
    if not usable:
        raise ValueError(f"no sample to draw a GIF of: {skipped.line()}")
    counts = [shards.frame_count(u[1]) for u in usable]
    cols = columns or math.ceil(math.sqrt(len(usable)))
    rows = math.ceil(len(usable) / cols)
    tile_w, tile_h = thumb, thumb + GIF_CAPTION
    size = (cols * tile_w + (cols - 1) * GIF_GAP, rows * tile_h + (rows - 1) * GIF_GAP)
    font = ImageFont.load_default()
    base = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(base)
    tiles: list[list[Image.Image]] = []  # per sample, per GIF frame: the scaled frame
    for i, ((_, meta, decoded_at, frames), count) in enumerate(zip(usable, counts)):
        x, y = (i % cols) * (tile_w + GIF_GAP), (i // cols) * (tile_h + GIF_GAP)
        caption = f"{meta.get('gloss', '?')} ({meta.get('label', '?')})"
        draw.text((x + 3, y + thumb + 1), _fit(draw, font, caption, thumb - 6), fill=(255, 255, 255), font=font)
        caption = f"{meta.get('split', '?')} {meta.get('video_id', '?')}"
        draw.text((x + 3, y + thumb + 12), _fit(draw, font, caption, thumb - 6), fill=(150, 150, 150), font=font)
        picks = gif_picks(count, source_fps, delay, length)
        decoded = dict(zip(decoded_at, frames))
        scaled = {j: _scale_to_fit(decoded[j], thumb) for j in sorted(set(picks))}
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
