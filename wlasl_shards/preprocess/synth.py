"""`wlasl-shards synth`: a small, deterministic synthetic dataset in the WLASL (Kaggle copy) layout.

    OUTPUT/WLASL_v0.3.json         [{gloss, instances: [{bbox, fps, frame_start, ..., video_id}]}] in gloss order
    OUTPUT/nslt_<N>.json           {video_id: {subset, action: [label, 1, frame_count]}}
    OUTPUT/wlasl_class_list.txt    index<TAB>gloss
    OUTPUT/videos/<video_id>.mp4   H.264, mixed sizes and frame rates

Each video shows a "signer" (torso, neck, head, one arm) on a graded, lightly textured background; the
hand at the end of the arm carries the class: its shape, its path and its colour depend on the gloss,
while speed, phase, path size, exact tint, the signer's look and place, frame size, frame rate and
length vary per video. Pixels are computed by pure numpy functions (`render_frames`), then piped into
ffmpeg (`write_video`), which the tests also use to make odd files.

Determinism: every random choice comes from a `numpy.random.Generator` seeded with (seed, purpose,
class, index), so a video does not depend on worker count or order; per-pixel maths uses only IEEE-exact
operations (+, *, sqrt, comparisons; trigonometry only on scalars), and ffmpeg runs with bitexact flags
and a fixed thread count, so the same seed gives the same bytes.
"""

from __future__ import annotations

import colorsys
import concurrent.futures as cf
import functools
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import ffmpeg
import numpy as np
from tqdm import tqdm

from wlasl_shards import storage
from wlasl_shards.preprocess.build import worker_processes
from wlasl_shards.preprocess.sources import CLASS_LIST, VIDEO_DIR, WLASL_JSON
from wlasl_shards.shards import SPLITS
from wlasl_shards.video import ffmpeg_binary, run_ffmpeg

log = logging.getLogger(__name__)

RGB = tuple[int, int, int]
FpsLike = str | int | float | Fraction


class EncodeError(RuntimeError):
    """ffmpeg could not write a video; the message ends with the tail of its stderr."""


# Seconds one video's encoding (rendering included: frames are made as ffmpeg takes them) may take
# before ffmpeg is killed; synth's videos take a small fraction of it.
ENCODE_TIMEOUT = 600.0


# ---------------------------------------------------------------------------------------- write_video


MAX_FPS = 240  # frame rates above are typos (1e9 would make ffmpeg write frames without end)
MAX_SIDE = 4096  # video sides; larger ones are typos, and each frame is rendered in memory
MAX_VIDEO_FRAMES = 100_000  # frames per video, the same reason


def parse_fps(fps: FpsLike) -> Fraction:
    """25, 29.97, "25", "30000/1001" or a Fraction -> an exact positive Fraction (ValueError otherwise)."""
    try:
        rate = Fraction(fps) if not isinstance(fps, float) else Fraction(fps).limit_denominator(1_000_000)
    except (ValueError, TypeError, ZeroDivisionError, OverflowError):  # OverflowError: inf
        raise ValueError(f"fps must be a number or a ratio like '30000/1001' (finite), got {fps!r}") from None
    if rate <= 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")
    if rate > MAX_FPS:
        raise ValueError(f"fps must be <= {MAX_FPS}, got {fps!r}")
    return rate


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: FpsLike, **options: Any) -> None:
    """Encode (H, W, 3) uint8 RGB frames, all the same size, to `path` (the container follows its suffix).
    `options` are `encode_raw`'s: codec, pix_fmt, extra_output_args, timeout.

    Raw rgb24 is piped into ffmpeg (an argument list, no shell). Output is byte-deterministic for the same
    input: bitexact container and codec flags (no version strings), no metadata, and one encoder thread
    unless `extra_output_args` says otherwise, because x264/mpeg4/vpx bitstreams depend on the thread count
    and the default (all cores) would tie the bytes to the machine. `extra_output_args` are ffmpeg output
    options as ffmpeg-python keywords, e.g. {"qp": 0}, {"preset": "veryfast"}, {"q:v": 3}; they override
    the defaults. The file is written under a temporary name and renamed, so a failure leaves nothing.
    Raises ValueError for bad frames and EncodeError (with ffmpeg's stderr tail) when ffmpeg fails or
    runs past `timeout` seconds.
    """
    stream = iter(frames)
    first = next(stream, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    first = _check_frame(first, 0, None)
    size = first.shape[:2]

    def chunks() -> Iterator[memoryview]:
        yield np.ascontiguousarray(first).data
        for i, frame in enumerate(stream, 1):
            yield np.ascontiguousarray(_check_frame(frame, i, size)).data

    encode_raw(path, chunks(), size[1], size[0], fps, "rgb24", **options)


def encode_raw(
    path: str | Path,
    chunks: Iterable[bytes | memoryview],
    width: int,
    height: int,
    fps: FpsLike,
    in_pix_fmt: str,
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    extra_output_args: dict[str, Any] | None = None,
    timeout: float = ENCODE_TIMEOUT,
) -> None:
    """`write_video` for frames already packed in ffmpeg's raw `in_pix_fmt` (one bytes-like per frame,
    e.g. the three planes of a yuv420p frame), so a caller that has them skips ffmpeg's conversion."""
    path = Path(path)
    rate = parse_fps(fps)
    args: dict[str, Any] = {
        "c:v": codec, "pix_fmt": pix_fmt, "threads": 1,
        "fflags": "+bitexact", "flags:v": "+bitexact", "map_metadata": -1,
        "an": None, "sn": None, "dn": None,
    }
    args.update(extra_output_args or {})
    # The temporary name keeps the suffix: ffmpeg picks the container from it.
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    out = (ffmpeg.input("pipe:", format="rawvideo", pix_fmt=in_pix_fmt, s=f"{width}x{height}", framerate=str(rate))
           .output(str(tmp), **args))
    cmd = [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y", *out.compile(cmd=ffmpeg_binary())[1:]]
    count = 0
    try:
        with run_ffmpeg(cmd, timeout, stdin=True) as run:
            try:
                for chunk in chunks:
                    run.stdin.write(chunk)
                    count += 1
            except BrokenPipeError:
                pass  # ffmpeg exited early (or was killed at the timeout); its stderr says why
    except BaseException:  # a bad frame, a failing generator, Ctrl-C: ffmpeg is stopped, then re-raise
        tmp.unlink(missing_ok=True)
        raise
    err = run.stderr
    if run.timed_out or run.returncode != 0:
        tmp.unlink(missing_ok=True)
        why = f"timed out after {timeout:g} s" if run.timed_out else f"failed (exit {run.returncode})"
        tail = "\n".join(_reasons(err)[-10:]) or "no message"
        raise EncodeError(
            f"ffmpeg {why} writing {path} ({width}x{height} {in_pix_fmt}, {count} frames sent, "
            f"codec {codec}, pix_fmt {pix_fmt}):\n{tail}"
        )
    os.replace(tmp, path)
    if err.strip():
        log.debug("ffmpeg said while writing %s: %s", path, err.strip())


# ffmpeg's follow-on lines after a failure; without them the tail shows the cause (e.g. "width not
# divisible by 2") instead of ten lines about threads shutting down.
_CASCADE = re.compile(r"Task finished with error code|Terminating thread with return code|Nothing was written "
                      r"into output file|Could not open encoder before EOF|Error sending frames to consumers")


def _reasons(stderr: str) -> list[str]:
    lines = (re.sub(r" @ 0x[0-9a-f]+", "", ln.strip()) for ln in stderr.splitlines())
    return [ln for ln in lines if ln and not _CASCADE.search(ln)]


def _check_frame(frame: Any, index: int, size: tuple[int, int] | None) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame {index}: expected (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}")
    if size is not None and frame.shape[:2] != size:
        raise ValueError(f"frame {index}: size {frame.shape[1]}x{frame.shape[0]} differs from the first "
                         f"frame's {size[1]}x{size[0]}")
    return frame


# ------------------------------------------------------------------------------------------- classes

# The first glosses of WLASL's own class list, so demos read like the real thing; then sign_NNN.
GLOSSES = (
    "book", "drink", "computer", "before", "chair", "go", "clothes", "who", "candy", "cousin",
    "deaf", "fine", "help", "no", "thin", "walk", "year", "yes", "all", "black",
    "cool", "finish", "hot", "like", "many", "mother", "now", "orange", "table", "thanksgiving",
    "what", "woman",
)

# Every shape is its own mirror image and no trajectory's mirror image is another trajectory (the
# circle, spiral and square all run clockwise; there is one diagonal), so a horizontal flip, which
# training uses as augmentation, never turns one class into another.
SHAPES = ("disc", "square", "triangle", "plus", "ring", "diamond", "bar", "x")
TRAJECTORIES = ("circle", "sweep", "bounce", "diagonal", "figure8", "zigzag", "spiral", "tap", "box", "vfigure8")
HUES = (0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0)  # hand colour per class, degrees
MAX_CLASSES = len(SHAPES) * len(TRAJECTORIES) * len(HUES)  # 640 distinct (shape, path, colour) triples
MAX_VIDEOS = 99_999  # video ids are 5-digit strings, 00001..99999


@dataclass(frozen=True)
class ClassStyle:
    """What makes a gloss recognisable: the hand's shape, its path and its colour."""

    shape: str  # one of SHAPES
    trajectory: str  # one of TRAJECTORIES
    hue: float  # degrees, one of HUES


def class_style(label: int) -> ClassStyle:
    """Class index -> style. A bijection on 0..MAX_CLASSES-1; among the first 40 classes any two differ
    in at least two of shape, path and colour (the first 8 in all three), so small demos are easy."""
    if not 0 <= label < MAX_CLASSES:
        raise ValueError(f"class index must be in 0..{MAX_CLASSES - 1}, got {label}")
    # r -> (shape, path) is a bijection onto the 8 x 10 pairs (CRT on 40 plus a parity shift for r >= 40);
    # the colour index then separates the 8 blocks of 80 and is skewed so that consecutive classes differ.
    block, r = divmod(label, len(SHAPES) * len(TRAJECTORIES))
    shape = r % len(SHAPES)
    path = (r + r // 40) % len(TRAJECTORIES)
    hue = (block + r + r // len(SHAPES)) % len(HUES)
    return ClassStyle(SHAPES[shape], TRAJECTORIES[path], HUES[hue])


def glosses(n: int) -> list[str]:
    """The first n gloss names: WLASL's own first ones, then sign_032, sign_033, ..."""
    return [GLOSSES[i] if i < len(GLOSSES) else f"sign_{i:03d}" for i in range(n)]


# -------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SynthConfig:
    """Options of `wlasl-shards synth`."""

    classes: int = 10  # glosses (1..MAX_CLASSES); each has its own hand shape, path and colour
    videos_per_class: int = 12  # split per class ~2/3 train, 1/6 val, 1/6 test (8/2/2 for 12; 1/1/1 for 3)
    seed: int = 0  # >= 0; the same seed (and options) gives byte-identical files
    # (width, height) choices, one per video; even sides >= 64 (4:2:0 H.264)
    sizes: tuple[tuple[int, int], ...] = ((320, 240), (640, 480), (960, 540), (1280, 720))
    fps_choices: tuple[str, ...] = ("25", "30", "30000/1001")  # frame rate choices (ffmpeg rationals)
    min_frames: int = 40  # shortest video, frames
    max_frames: int = 80  # longest video, frames
    signers: int = 6  # distinct signer ids; a signer keeps skin tone, proportions and handedness
    workers: int | None = None  # processes writing videos; None = all cores, 0 = none (same bytes either way)
    x264_preset: str = "ultrafast"  # fastest to write; "medium" writes streams like web video's (see x264_args)

    def check(self) -> None:
        """Raise ValueError naming the first bad option."""
        if not 1 <= self.classes <= MAX_CLASSES:
            raise ValueError(f"classes must be in 1..{MAX_CLASSES} (distinct hand styles), got {self.classes}")
        if self.videos_per_class < 1:
            raise ValueError(f"videos_per_class must be >= 1, got {self.videos_per_class}")
        if self.classes * self.videos_per_class > MAX_VIDEOS:
            raise ValueError(f"classes x videos_per_class must be <= {MAX_VIDEOS} (5-digit video ids), "
                             f"got {self.classes} x {self.videos_per_class}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not self.sizes:
            raise ValueError("sizes must name at least one (width, height)")
        for size in self.sizes:
            if len(size) != 2 or any(not isinstance(v, (int, float)) or not math.isfinite(v) or int(v) != v
                                     or not 64 <= v <= MAX_SIDE or v % 2 for v in size):
                raise ValueError(f"sizes must be (width, height) pairs of even integers >= 64 and <= {MAX_SIDE} "
                                 f"(H.264 4:2:0 needs even sides), got {size!r}")
        if not self.fps_choices:
            raise ValueError("fps_choices must name at least one frame rate")
        for fps in self.fps_choices:
            parse_fps(fps)
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError(f"need 1 <= min_frames <= max_frames, got {self.min_frames} and {self.max_frames}")
        if self.max_frames > MAX_VIDEO_FRAMES:
            raise ValueError(f"max_frames must be <= {MAX_VIDEO_FRAMES}, got {self.max_frames}")
        if not 1 <= self.signers <= MAX_VIDEOS:
            raise ValueError(f"signers must be >= 1 and <= {MAX_VIDEOS}, got {self.signers}")
        if self.workers is not None and not 0 <= self.workers <= 1024:
            raise ValueError(f"workers must be >= 0 and <= 1024, got {self.workers}")
        if self.x264_preset not in X264_PRESETS:
            raise ValueError(f"x264_preset must be one of {', '.join(X264_PRESETS)}, got {self.x264_preset!r}")


# x264 settings for the dataset's videos. The default preset, ultrafast: x264 is most of synth's time, and
# ultrafast is its quickest preset; B-frames (free at this preset, which otherwise has none) keep the
# streams as reordered as real uploads. Ultrafast streams lack CABAC and deblocking, which web video has;
# `x264_preset="medium"` (x264's and so ffmpeg's default, what WLASL's own conversion script produced)
# writes them as real uploads are, for benchmarks of decoding (bench_loader measures the difference). A
# fixed thread count, so the bytes do not depend on the machine's cores; 2 lets one video use both cores
# of a small CI machine while this process renders the next frames.
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def x264_args(preset: str) -> dict[str, Any]:
    """ffmpeg output options for synth's videos at an x264 preset (see X264_PRESETS)."""
    args: dict[str, Any] = {"preset": preset, "crf": 23, "threads": 2}
    if preset == "ultrafast":
        args["x264-params"] = "bframes=2"
    return args


def split_counts(n: int) -> tuple[int, int, int]:
    """(train, val, test) for n videos of a class: 1/6 each for val and test, at least 1 each from n = 3."""
    if n >= 3:
        held = max(1, round(n / 6))
        return n - 2 * held, held, held
    return (1, 1, 0) if n == 2 else (n, 0, 0)


# ------------------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class Signer:
    """A person: what stays the same across their videos."""

    signer_id: int  # as written to WLASL_v0.3.json
    skin: RGB  # head and neck
    head_scale: float  # head radius, x the standard 0.105 of the signer box
    shoulder_scale: float  # torso width, x the standard
    left_handed: bool  # the arm comes from the image's right shoulder instead of the left


@dataclass(frozen=True)
class VideoSpec:
    """Everything that decides one video's pixels and metadata. Class-dependent looks (hand shape, path,
    colour) are derived from `label` when rendering, so `dataclasses.replace(spec, label=k)` changes the
    class and nothing else."""

    video_id: str  # 5-digit id, also the file name
    label: int  # class index
    split: str  # train | val | test
    instance_id: int  # index among the gloss's instances
    signer: Signer  # who signs
    width: int  # frame size, pixels
    height: int
    fps: str  # ffmpeg rational, e.g. "30000/1001"
    frames: int  # frame count
    box: tuple[float, float, float]  # (x, y, side): the square, in pixels, that the body layout fills
    shirt: RGB  # torso and arm colour
    background: tuple[RGB, RGB]  # the gradient's two ends
    bg_angle: float  # gradient direction, radians
    speed: float  # x the class's base rate (0.7..1.3)
    phase: float  # radians, where on its path the hand starts
    amplitude: float  # x the class's path size (0.85..1.15)
    hand_scale: float  # x the standard hand radius (0.9..1.1)
    hand_tint: tuple[float, float, float]  # (hue shift in degrees, saturation, value) of the class colour


def draw_signers(rng: np.random.Generator, count: int) -> list[Signer]:
    """`count` signers with ids 1..count."""
    out = []
    for i in range(count):
        tone = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
        skin = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in tone)
        out.append(Signer(i + 1, skin, float(rng.uniform(0.9, 1.1)), float(rng.uniform(0.9, 1.1)),
                          bool(rng.random() < 0.25)))
    return out


SKIN_TONES: tuple[RGB, ...] = ((255, 219, 180), (234, 192, 134), (198, 134, 66), (141, 85, 36),
                               (96, 57, 30), (224, 172, 105))


def _hsv(h_deg: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb((h_deg / 360.0) % 1.0, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def draw_spec(
    rng: np.random.Generator, label: int, *, size: tuple[int, int], fps: str, frames: int, signer: Signer,
    video_id: str = "00000", split: str = "train", instance_id: int = 0,
) -> VideoSpec:
    """Draw one video's nuisance parameters (everything but the class) from `rng`."""
    width, height = size
    # The signer's square fills 55..95% of the shorter side, at a random place at least 2 px inside.
    side = min(float(rng.uniform(0.55, 0.95)) * min(width, height), min(width, height) - 4.0)
    x = float(rng.uniform(2.0, width - side - 2.0))
    y = float(rng.uniform(2.0, height - side - 2.0))
    # Muted, mid-bright backgrounds and darkish shirts, so the saturated, outlined hand stands out.
    background = tuple(_hsv(rng.uniform(0, 360), rng.uniform(0.1, 0.45), rng.uniform(0.35, 0.85))
                       for _ in range(2))
    shirt = _hsv(rng.uniform(0, 360), rng.uniform(0.15, 0.6), rng.uniform(0.15, 0.5))
    return VideoSpec(
        video_id=video_id, label=label, split=split, instance_id=instance_id, signer=signer,
        width=width, height=height, fps=fps, frames=frames, box=(x, y, side), shirt=shirt,
        background=background, bg_angle=float(rng.uniform(0, 2 * math.pi)),
        speed=float(rng.uniform(0.7, 1.3)), phase=float(rng.uniform(0, 2 * math.pi)),
        amplitude=float(rng.uniform(0.85, 1.15)), hand_scale=float(rng.uniform(0.9, 1.1)),
        hand_tint=(float(rng.uniform(-6, 6)), float(rng.uniform(0.8, 1.0)), float(rng.uniform(0.88, 1.0))),
    )


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def plan(cfg: SynthConfig) -> list[VideoSpec]:
    """All videos of the dataset, in gloss order then instance order (video ids ascend in that order)."""
    cfg.check()
    signers = draw_signers(_rng(cfg.seed, 0), cfg.signers)
    total = cfg.classes * cfg.videos_per_class
    ids = np.sort(_rng(cfg.seed, 1).choice(MAX_VIDEOS, size=total, replace=False) + 1)
    train, val, _ = split_counts(cfg.videos_per_class)
    specs = []
    for label in range(cfg.classes):
        for i in range(cfg.videos_per_class):
            # One generator per video: a video is the same whatever the worker count or the other classes.
            rng = _rng(cfg.seed, 2, label, i)
            size = tuple(int(v) for v in cfg.sizes[int(rng.integers(len(cfg.sizes)))])
            fps = str(cfg.fps_choices[int(rng.integers(len(cfg.fps_choices)))])
            frames = int(rng.integers(cfg.min_frames, cfg.max_frames + 1))
            signer = signers[int(rng.integers(len(signers)))]
            split = "train" if i < train else "val" if i < train + val else "test"
            specs.append(draw_spec(rng, label, size=size, fps=fps, frames=frames, signer=signer,
                                   video_id=f"{ids[len(specs)]:05d}", split=split, instance_id=i))
    return specs


# --------------------------------------------------------------------------------------- geometry

# The body layout, in units of the signer's square (u right, v down, both 0..1).
HEAD = (0.5, 0.2, 0.105)  # centre u, v and radius (x head_scale)
NECK = (0.5, 0.355, 0.045, 0.07)  # ellipse centre u, v and semi-axes
TORSO = (0.5, 0.74, 0.28, 0.25)  # ellipse centre u, v and semi-axes (u axis x shoulder_scale)
SHOULDER = (0.18, 0.55)  # u offset from the middle (x shoulder_scale) and v of the arm's root
ARM_HALF_WIDTH = 0.035
HAND_RADIUS = 0.085  # x hand_scale: the hand is ~17% of the box side, big enough at 64 px crops
OUTLINE = 1.22  # the dark rim around the hand, as a multiple of its radius
PATH_SIZE = 0.27  # x amplitude: how far the hand moves from its path's centre
PERIOD = 1.0  # seconds per cycle of the class path at speed 1


def _tri(a: float) -> float:
    """Triangle wave with period 2 pi, in [-1, 1], equal to 1 at a = 0."""
    x = (a / (2 * math.pi)) % 1.0
    return 1.0 - 4.0 * x if x < 0.5 else -3.0 + 4.0 * x


def _box_path(a: float) -> tuple[float, float]:
    # Clockwise on screen (v down) round a square: top edge left->right, right edge down, ...
    p = 4.0 * ((a / (2 * math.pi)) % 1.0)
    side, f = int(p), p - int(p)
    return [(-1 + 2 * f, -1.0), (1.0, -1 + 2 * f), (1 - 2 * f, 1.0), (-1.0, 1 - 2 * f)][side]


def _spiral(a: float) -> tuple[float, float]:
    r = 0.25 + 0.75 * (0.5 + 0.5 * math.sin(a))
    return r * math.cos(2 * a), r * math.sin(2 * a)


# Each path: angle -> (du, dv) in [-1, 1]^2 (x PATH_SIZE x amplitude), around the centre in PATH_CENTRE.
PATHS: dict[str, Callable[[float], tuple[float, float]]] = {
    "circle": lambda a: (math.cos(a), math.sin(a)),  # clockwise on screen
    "sweep": lambda a: (math.sin(a), 0.0),
    "bounce": lambda a: (0.0, 1.0 - 2.0 * abs(math.sin(a))),  # sharp turn at the bottom, like a ball
    "diagonal": lambda a: (0.85 * math.sin(a), -0.85 * math.sin(a)),  # "/" only: "\" would be its mirror
    "figure8": lambda a: (math.sin(a), 0.55 * math.sin(2 * a)),
    "zigzag": lambda a: (_tri(a), 0.5 * _tri(4 * a)),
    "spiral": _spiral,  # two clockwise turns per cycle while the radius swells and shrinks
    "tap": lambda a: (0.3 * math.sin(a), -0.5 * abs(math.sin(2 * a))),  # small taps up to the chin
    "box": lambda a: (0.8 * _box_path(a)[0], 0.8 * _box_path(a)[1]),
    "vfigure8": lambda a: (0.55 * math.sin(2 * a), math.sin(a)),
}
PATH_CENTRE = {"tap": (0.5, 0.45)}  # others: (0.5, 0.55), chest height
DEFAULT_CENTRE = (0.5, 0.55)


def hand_path(spec: VideoSpec) -> np.ndarray:
    """(T, 2) float64: the hand's centre (x, y) in frame pixels at each frame."""
    style = class_style(spec.label)
    move = PATHS[style.trajectory]
    cu, cv = PATH_CENTRE.get(style.trajectory, DEFAULT_CENTRE)
    bx, by, side = spec.box
    size = PATH_SIZE * spec.amplitude
    rate = float(parse_fps(spec.fps))
    out = np.empty((spec.frames, 2))
    for t in range(spec.frames):
        # Time in seconds, so a class moves alike at 25 and 30 fps.
        du, dv = move(2 * math.pi * spec.speed * (t / rate) / PERIOD + spec.phase)
        out[t] = bx + (cu + size * du) * side, by + (cv + size * dv) * side
    return out


def _shoulder(spec: VideoSpec) -> tuple[float, float]:
    bx, by, side = spec.box
    du = SHOULDER[0] * spec.signer.shoulder_scale
    u = 0.5 + du if spec.signer.left_handed else 0.5 - du
    return bx + u * side, by + SHOULDER[1] * side


def signer_bbox(spec: VideoSpec) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) int pixels, 0 <= x1 < x2 <= width (same for y): the signer's body and the hand's
    whole path (rim included), i.e. every pixel `render_frames` changes from the background."""
    bx, by, side = spec.box
    hu, hv, hr = HEAD
    hr *= spec.signer.head_scale
    tu, tv, ta, tb = TORSO
    ta *= spec.signer.shoulder_scale
    lo = [(hu - hr) * side, (hv - hr) * side, (tu - ta) * side, (tv - tb) * side]
    hi = [(hu + hr) * side, (hv + hr) * side, (tu + ta) * side, (tv + tb) * side]
    x1, y1 = bx + min(lo[0], lo[2]), by + min(lo[1], lo[3])
    x2, y2 = bx + max(hi[0], hi[2]), by + max(hi[1], hi[3])
    path = hand_path(spec)
    reach = HAND_RADIUS * spec.hand_scale * OUTLINE * side  # every shape fits in [-1, 1]^2 x radius
    sx, sy = _shoulder(spec)
    arm = ARM_HALF_WIDTH * side
    x1 = min(x1, path[:, 0].min() - reach, sx - arm)
    y1 = min(y1, path[:, 1].min() - reach, sy - arm)
    x2 = max(x2, path[:, 0].max() + reach, sx + arm)
    y2 = max(y2, path[:, 1].max() + reach, sy + arm)
    # One pixel more for the soft edges; the layout keeps all of it inside the 2 px border of the frame.
    return (max(0, math.floor(x1) - 1), max(0, math.floor(y1) - 1),
            min(spec.width, math.ceil(x2) + 1), min(spec.height, math.ceil(y2) + 1))


# ---------------------------------------------------------------------------------------- rendering

# Fixed low-frequency texture shared by every video (in frame-relative coordinates), so backgrounds are
# not flat without costing the encoder much. Its own seed: it must not change with the dataset seed.
_TEXTURE = [(np.random.default_rng(20240601).uniform(-1, 1, (gh, gw)), amp)
            for gh, gw, amp in ((9, 16, 9.0), (27, 48, 4.0))]


def _resize_bilinear(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """(gh, gw) -> (height, width) float32 by separable linear interpolation. Plain elementwise maths, not
    a matrix product: BLAS kernels differ between CPUs (FMA or not) and would make the bytes differ too."""
    def taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
        pos = (np.arange(n_out, dtype=np.float64) + 0.5) * ((n_in - 1) / n_out)
        i0 = np.minimum(pos.astype(np.int64), n_in - 2)
        return i0, (pos - i0).astype(np.float32)
    g = grid.astype(np.float32)
    i0, f = taps(height, g.shape[0])
    rows = g[i0] * (1 - f)[:, None] + g[i0 + 1] * f[:, None]  # (height, gw)
    j0, f = taps(width, g.shape[1])
    return rows[:, j0] * (1 - f)[None, :] + rows[:, j0 + 1] * f[None, :]


@functools.lru_cache(maxsize=8)
def _texture(height: int, width: int) -> np.ndarray:
    """(H, W) float32, read-only: the fixed texture at one frame size (a dataset uses a handful)."""
    tex = sum(_resize_bilinear(grid, height, width) * np.float32(amp) for grid, amp in _TEXTURE)
    tex.flags.writeable = False
    return tex


def render_background(spec: VideoSpec) -> np.ndarray:
    """(H, W, 3) uint8: the video's linear colour gradient plus the fixed texture."""
    h, w = spec.height, spec.width
    ca, sa = math.cos(spec.bg_angle), math.sin(spec.bg_angle)
    # Position along the gradient, 0..1 over the frame: x * ca + y * sa with x, y in [-1/2, 1/2] stays
    # within (|ca| + |sa|) / 2, so this scale needs no clipping, which keeps the gradient separable:
    # a column term plus a row term, two cheap broadcasts instead of full-frame arithmetic per channel.
    k = 1.0 / (abs(ca) + abs(sa))
    ys = ((np.arange(h, dtype=np.float32) + 0.5) / h - 0.5) * np.float32(sa * k)
    xs = ((np.arange(w, dtype=np.float32) + 0.5) / w - 0.5) * np.float32(ca * k)
    c0, c1 = (np.array(c, np.float32) for c in spec.background)
    d = c1 - c0
    out = np.empty((h, w, 3), np.float32)
    np.add((c0 + 0.5 * d + ys[:, None] * d)[:, None, :], (xs[:, None] * d)[None, :, :], out=out)
    out += _texture(h, w)[..., None]
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


# ITU-R BT.601, limited range: what ffmpeg assumes for untagged yuv420p when it decodes to RGB.
_Y = (65.481 / 255, 128.553 / 255, 24.966 / 255)
_U = (-37.797 / 255, -74.203 / 255, 112.0 / 255)
_V = (112.0 / 255, -93.786 / 255, -18.214 / 255)

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), a window of frame pixels


class _Canvas:
    """The planes a frame is drawn into: RGB (three full-size planes, views of an (H, W, 3) array) or
    yuv420p (Y full size, U and V half size). Drawing straight into yuv420p saves converting every frame;
    blending is linear, so it matches converting the RGB drawing except at the shapes' soft edges, where
    the 2x2-averaged alpha of the chroma planes is a few levels off."""

    def __init__(self, planes: tuple[np.ndarray, ...], yuv: bool) -> None:
        self.planes = planes
        self.yuv = yuv
        self.align = 2 if yuv else 1  # windows start and end on even pixels when chroma is halved
        self.height, self.width = planes[0].shape

    @classmethod
    def rgb(cls, frame: np.ndarray) -> _Canvas:
        return cls((frame[..., 0], frame[..., 1], frame[..., 2]), yuv=False)

    def values(self, color: RGB) -> tuple[float, float, float]:
        """A colour in this canvas's planes."""
        if not self.yuv:
            return tuple(float(c) for c in color)
        return tuple(off + sum(k * c for k, c in zip(ks, color))
                     for ks, off in ((_Y, 16.0), (_U, 128.0), (_V, 128.0)))

    def views(self, box: Box) -> Iterator[tuple[int, np.ndarray]]:
        """(subsampling, plane window) for each plane."""
        y0, y1, x0, x1 = box
        for i, plane in enumerate(self.planes):
            if self.yuv and i > 0:
                yield 2, plane[y0 // 2: y1 // 2, x0 // 2: x1 // 2]
            else:
                yield 1, plane[y0:y1, x0:x1]


def _window(cx: float, cy: float, rx: float, ry: float, canvas: _Canvas) -> tuple[Box, np.ndarray, np.ndarray]:
    """Pixel window around (cx, cy) +- (rx, ry), clipped to the frame and aligned for the canvas, and its
    pixel-centre coordinates relative to (cx, cy): xs (1, w) and ys (h, 1) float32."""
    x0, x1 = _span(cx - rx, cx + rx, canvas.width, canvas.align)
    y0, y1 = _span(cy - ry, cy + ry, canvas.height, canvas.align)
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + np.float32(0.5 - cx)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(0.5 - cy)
    return (y0, y1, x0, x1), xs, ys


def _span(lo: float, hi: float, size: int, align: int) -> tuple[int, int]:
    # One pixel of slack each side for the soft edges; sizes are multiples of `align`.
    a = max(0, math.floor(lo) - 1)
    b = min(size, math.ceil(hi) + 2)
    return a - a % align, min(size, b + (-b) % align)


def _paint(canvas: _Canvas, box: Box, layers: list[tuple[np.ndarray, RGB]]) -> None:
    """Composite `layers` (alpha over the box's pixels, in [0, 1]; colour), bottom first, rounding once.
    Half-size planes take the mean alpha of each 2x2 block."""
    halved = None
    values = [canvas.values(color) for _, color in layers]
    for i, (sub, view) in enumerate(canvas.views(box)):
        if sub == 2:
            if halved is None:
                halved = [(a[0::2, 0::2] + a[0::2, 1::2] + a[1::2, 0::2] + a[1::2, 1::2]) * np.float32(0.25)
                          for a, _ in layers]
            alphas = halved
        else:
            alphas = [a for a, _ in layers]
        px = view.astype(np.float32)
        for alpha, value in zip(alphas, values):
            px += alpha * (np.float32(value[i]) - px)
        view[...] = np.rint(px)


def _restore(canvas: _Canvas, still: _Canvas, box: Box) -> None:
    for (_, view), (_, source) in zip(canvas.views(box), still.views(box)):
        view[...] = source


def _edge(level: float, norm: np.ndarray, scale: float) -> np.ndarray:
    # Soft edge about one pixel wide: norm is in units of `scale` pixels, inside where norm < level.
    return np.clip((level - norm) * np.float32(scale) + np.float32(0.5), 0.0, 1.0)


def _ellipse(canvas: _Canvas, cx: float, cy: float, a: float, b: float, color: RGB) -> None:
    box, xs, ys = _window(cx, cy, a, b, canvas)
    norm = np.sqrt((xs / np.float32(a)) ** 2 + (ys / np.float32(b)) ** 2)
    _paint(canvas, box, [(_edge(1.0, norm, min(a, b)), color)])


ARM_BANDS = 4  # the arm is drawn in this many bands of rows (at least 16 rows each)


def _segment(canvas: _Canvas, p: tuple[float, float], q: tuple[float, float], half: float,
             color: RGB) -> list[Box]:
    """Draw a thick line (round ends) from p to q, `half` pixels each side; return the windows it touched.

    The line is drawn in bands of rows, each only as wide as the line is there: a slanted arm's bounding
    box is mostly empty, and the distance maths over it would cost more than everything else per frame."""
    align = canvas.align
    (px, py), (qx, qy) = p, q
    dx, dy = qx - px, qy - py
    length2 = max(dx * dx + dy * dy, 1e-9)
    reach = half + 1.0
    y_lo, y_hi = _span(min(py, qy) - reach, max(py, qy) + reach, canvas.height, align)
    band = max(16, -(-(y_hi - y_lo) // ARM_BANDS))
    band += (-band) % align
    boxes = []
    for y0 in range(y_lo, y_hi, band):
        y1 = min(y0 + band, y_hi)
        # The part of the line within `reach` of these rows, as a range of the parameter t in [0, 1].
        if abs(dy) > 1e-6:
            ta, tb = sorted(((y0 - reach - py) / dy, (y1 + reach - py) / dy))
            ta, tb = max(ta, 0.0), min(tb, 1.0)
        else:
            ta, tb = 0.0, 1.0
        if ta > tb:
            continue
        x0, x1 = _span(min(px + ta * dx, px + tb * dx) - reach, max(px + ta * dx, px + tb * dx) + reach,
                       canvas.width, align)
        xs = np.arange(x0, x1, dtype=np.float32)[None, :] + np.float32(0.5 - px)
        ys = np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(0.5 - py)
        t = np.clip((xs * np.float32(dx) + ys * np.float32(dy)) / np.float32(length2), 0.0, 1.0)
        dist = np.sqrt((xs - t * np.float32(dx)) ** 2 + (ys - t * np.float32(dy)) ** 2)
        boxes.append((y0, y1, x0, x1))
        _paint(canvas, boxes[-1], [(_edge(half, dist, 1.0), color)])
    return boxes


def _shape_norm(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Gauge of a hand shape, in units of its radius: < 1 inside; homogeneous (doubling (u, v) doubles it)
    for all but the ring, so a level of 1.22 is the same shape 22% bigger (the rim). Each fits in [-1, 1]^2."""
    au, av = np.abs(u), np.abs(v)
    if shape == "disc":
        return np.sqrt(u * u + v * v)
    if shape == "square":
        return np.maximum(au, av) * 1.12
    if shape == "triangle":  # pointing up: apex (0, -1), base corners (+-0.9, 0.65)
        return np.maximum(v / 0.65, (1.65 * au - 0.9 * v) / 0.9)
    if shape == "plus":
        return np.minimum(np.maximum(au, av / 0.35), np.maximum(au / 0.35, av))
    if shape == "ring":
        rho = np.maximum(np.sqrt(u * u + v * v), 1e-3)
        return np.maximum(rho, 0.5 / rho)
    if shape == "diamond":
        return au + av
    if shape == "bar":
        return np.maximum(au, av / 0.45)
    if shape == "x":
        s = np.float32(math.sqrt(0.5))
        a, b = np.abs((u + v) * s), np.abs((u - v) * s)
        return np.minimum(np.maximum(a, b / 0.3), np.maximum(a / 0.3, b))
    raise ValueError(f"unknown shape {shape!r}")


def hand_color(spec: VideoSpec) -> RGB:
    """The class colour with this video's small tint shift: saturated and bright."""
    shift, sat, val = spec.hand_tint
    return _hsv(class_style(spec.label).hue + shift, sat, val)


RIM: RGB = (24, 24, 24)


def render_signer(spec: VideoSpec) -> np.ndarray:
    """(H, W, 3) uint8: background with the still parts of the signer (torso, neck, head)."""
    img = render_background(spec)
    canvas = _Canvas.rgb(img)
    bx, by, side = spec.box
    tu, tv, ta, tb = TORSO
    _ellipse(canvas, bx + tu * side, by + tv * side, ta * spec.signer.shoulder_scale * side, tb * side, spec.shirt)
    nu, nv, na, nb = NECK
    _ellipse(canvas, bx + nu * side, by + nv * side, na * side, nb * side, spec.signer.skin)
    hu, hv, hr = HEAD
    r = hr * spec.signer.head_scale * side
    _ellipse(canvas, bx + hu * side, by + hv * side, r, r, spec.signer.skin)
    return img


def _draw_frames(spec: VideoSpec, canvas: _Canvas, still: _Canvas) -> Iterator[None]:
    """Turn `canvas` (holding `still`, the signer without arm and hand) into each frame in turn, yielding
    after each. Only the arm and hand move, so each step restores the last step's windows from `still`
    and draws the new ones, instead of redrawing whole frames."""
    side = spec.box[2]
    shape = class_style(spec.label).shape
    color = hand_color(spec)
    sleeve = tuple(int(c * 0.8) for c in spec.shirt)
    shoulder = _shoulder(spec)
    radius = HAND_RADIUS * spec.hand_scale * side
    last: list[Box] = []
    for cx, cy in hand_path(spec):
        for box in last:
            _restore(canvas, still, box)
        last = _segment(canvas, shoulder, (cx, cy), ARM_HALF_WIDTH * side, sleeve)
        box, xs, ys = _window(cx, cy, radius * OUTLINE, radius * OUTLINE, canvas)
        norm = _shape_norm(shape, xs / np.float32(radius), ys / np.float32(radius))
        _paint(canvas, box, [(_edge(OUTLINE, norm, radius), RIM), (_edge(1.0, norm, radius), color)])
        last.append(box)
        yield


def render_frames(spec: VideoSpec) -> Iterator[np.ndarray]:
    """Yield the video's `spec.frames` frames, each a new (H, W, 3) uint8 RGB array."""
    still = render_signer(spec)
    frame = still.copy()
    for _ in _draw_frames(spec, _Canvas.rgb(frame), _Canvas.rgb(still)):
        yield frame.copy()


def render_video(spec: VideoSpec) -> np.ndarray:
    """(T, H, W, 3) uint8: all of `render_frames` at once (small videos, tests)."""
    return np.stack(list(render_frames(spec)))


def rgb_to_yuv420(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB, H and W even -> Y (H, W), U (H/2, W/2), V (H/2, W/2) uint8, BT.601 limited
    range; chroma from the mean of each 2x2 block (centred siting, like ffmpeg's default). Elementwise
    float32 maths only (no BLAS), so every CPU rounds alike."""
    x = rgb.astype(np.float32)
    quad = (x[0::2, 0::2] + x[0::2, 1::2] + x[1::2, 0::2] + x[1::2, 1::2]) * np.float32(0.25)
    def mix(px: np.ndarray, k: tuple[float, float, float], offset: float) -> np.ndarray:
        out = px[..., 0] * np.float32(k[0]) + px[..., 1] * np.float32(k[1]) + px[..., 2] * np.float32(k[2])
        out += np.float32(offset)
        np.rint(out, out=out)
        return np.clip(out, 0, 255, out=out).astype(np.uint8)
    return mix(x, _Y, 16.0), mix(quad, _U, 128.0), mix(quad, _V, 128.0)


def render_yuv420(spec: VideoSpec) -> Iterator[memoryview]:
    """Yield each frame as raw yuv420p bytes (Y, then U, then V planes; ONE buffer, rewritten in place).
    The still part is `rgb_to_yuv420` of `render_signer`; the arm and hand are drawn straight into the
    planes (the same as converting `render_frames` but for a few levels of chroma at their edges), which
    spares ffmpeg's RGB converter, the larger part of the work of piping RGB. Needs even sides."""
    h, w = spec.height, spec.width
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs an even frame size, got {w}x{h}")
    buf = np.empty(h * w * 3 // 2, np.uint8)
    planes = (buf[: h * w].reshape(h, w), buf[h * w: h * w * 5 // 4].reshape(h // 2, w // 2),
              buf[h * w * 5 // 4:].reshape(h // 2, w // 2))
    still = rgb_to_yuv420(render_signer(spec))
    for plane, part in zip(planes, still):
        plane[...] = part
    for _ in _draw_frames(spec, _Canvas(planes, yuv=True), _Canvas(still, yuv=True)):
        yield buf.data


# ----------------------------------------------------------------------------------------- metadata


def wlasl_entries(specs: list[VideoSpec], names: list[str]) -> list[dict[str, Any]]:
    """WLASL_v0.3.json's content: one entry per gloss, in class order, with its instances."""
    entries: list[dict[str, Any]] = [{"gloss": name, "instances": []} for name in names]
    for s in specs:
        entries[s.label]["instances"].append({
            "bbox": list(signer_bbox(s)),
            "fps": int(round(parse_fps(s.fps))),  # WLASL stores an int here
            "frame_start": 1,
            "frame_end": -1,  # the Kaggle copy's videos are already cut to the sign
            "instance_id": s.instance_id,
            "signer_id": s.signer.signer_id,
            "source": "synth",
            "split": s.split,
            "url": f"synth://{s.video_id}",
            "variation_id": 0,
            "video_id": s.video_id,
        })
    return entries


def nslt_entries(specs: list[VideoSpec]) -> dict[str, dict[str, Any]]:
    """nslt_<N>.json's content: {video_id: {"subset", "action": [label, 1, frame_count]}}."""
    return {s.video_id: {"subset": s.split, "action": [s.label, 1, s.frames]} for s in specs}


def class_list_text(names: list[str]) -> str:
    """wlasl_class_list.txt's content: `index<TAB>gloss` lines."""
    return "".join(f"{i}\t{name}\n" for i, name in enumerate(names))


# ------------------------------------------------------------------------------------------- synth


def write_spec_video(spec: VideoSpec, path: str | Path, preset: str = "ultrafast") -> None:
    """Render and encode one video (the worker's job) at an x264 preset."""
    encode_raw(path, render_yuv420(spec), spec.width, spec.height, spec.fps, "yuv420p",
               codec="libx264", pix_fmt="yuv420p", extra_output_args=x264_args(preset))


def synth(cfg: SynthConfig, output: Path, progress: bool = True) -> dict[str, Any]:
    """Write the dataset into `output` (created if needed; files of the same names are replaced).

    Returns a summary: {"output", "classes", "videos", "splits": {split: count}, "frames", "seconds"}.
    """
    cfg.check()
    output = Path(output)
    started = time.monotonic()
    specs = plan(cfg)
    names = glosses(cfg.classes)
    videos = output / VIDEO_DIR
    videos.mkdir(parents=True, exist_ok=True)
    stale = sorted(p.name for p in videos.glob("*.mp4") if p.stem not in {s.video_id for s in specs})
    if stale:
        log.warning("%s holds %d videos not in this dataset (e.g. %s); they are left alone",
                    videos, len(stale), stale[0])
    log.info("writing %d videos of %d classes into %s", len(specs), cfg.classes, output)

    # Metadata goes last, and the old one first: a run cut short leaves no JSON listing unwritten videos.
    meta = [output / WLASL_JSON, output / f"nslt_{cfg.classes}.json", output / CLASS_LIST]
    for path in meta:
        path.unlink(missing_ok=True)
    jobs = [(s, videos / f"{s.video_id}.mp4") for s in specs]
    with tqdm(total=len(jobs), unit="video", disable=not progress, dynamic_ncols=True, desc="synth") as bar:
        workers = worker_processes(cfg.workers)
        if workers == 1:
            for spec, path in jobs:
                write_spec_video(spec, path, cfg.x264_preset)
                bar.update()
        else:
            with cf.ProcessPoolExecutor(workers) as pool:
                futures = [pool.submit(write_spec_video, spec, path, cfg.x264_preset) for spec, path in jobs]
                try:
                    for fut in cf.as_completed(futures):
                        fut.result()
                        bar.update()
                except BaseException:
                    pool.shutdown(cancel_futures=True)  # do not encode the rest after a failure or Ctrl-C
                    raise

    storage.write_json(meta[0], wlasl_entries(specs, names))
    storage.write_json(meta[1], nslt_entries(specs))
    storage.write_bytes(meta[2], class_list_text(names).encode("utf-8"))
    splits = {name: sum(s.split == name for s in specs) for name in SPLITS}
    summary = {"output": str(output), "classes": cfg.classes, "videos": len(specs), "splits": splits,
               "frames": sum(s.frames for s in specs), "seconds": round(time.monotonic() - started, 2)}
    log.info("synth done: %s", summary)
    return summary
