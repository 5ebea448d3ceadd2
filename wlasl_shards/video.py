"""ffmpeg: find the binary, probe a file, decode it to fixed-rate, fixed-size RGB frames.

Used by `preprocess` (build, synth) and by `train` (predict), so both see identical pixels.
Every ffmpeg process of the package starts in `run_ffmpeg`: an argument list (ffmpeg-python builds
it), never a shell, killed after a timeout, its stderr drained and kept for the error message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import ffmpeg
import numpy as np

FFMPEG_ENV = "WLASL_SHARDS_FFMPEG"
# Frames one video may decode to, at the output fps: 60 s at 25 fps, generous for a sign. A file whose
# timestamps span hours (a few frames, a huge pts gap) would otherwise be resampled into a sample of
# hundreds of thousands of frames. `build` records such a video as failed; predict and features use
# the same bound.
DEFAULT_MAX_FRAMES = 1500


class VideoError(Exception):
    """A video could not be converted; the message is the reason that goes into the index."""


@functools.lru_cache(maxsize=1)
def ffmpeg_binary() -> str:
    """Path of the ffmpeg to run: $WLASL_SHARDS_FFMPEG, else the system one, else imageio-ffmpeg's."""
    explicit = os.environ.get(FFMPEG_ENV)
    if explicit:
        if not shutil.which(explicit):
            raise RuntimeError(f"${FFMPEG_ENV} points to {explicit!r}, which is not an executable")
        return explicit
    system = shutil.which("ffmpeg")
    if system:
        return system
    try:
        import imageio_ffmpeg
    except ImportError:
        imageio_ffmpeg = None
    if imageio_ffmpeg is not None:
        try:
            return imageio_ffmpeg.get_ffmpeg_exe()
        except RuntimeError:
            pass
    raise RuntimeError(
        "no ffmpeg found: install one (apt-get install ffmpeg) or `pip install imageio-ffmpeg`, "
        f"or set ${FFMPEG_ENV} to its path"
    )


# ---------------------------------------------------------------------------------------------- probe

_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: (?P<codec>\w+).*?, (?P<pix>[a-z0-9_]+)(?:\([^)]*\))?, "
                     r"(?P<w>\d+)x(?P<h>\d+)")
_FPS = re.compile(r"([\d.]+)(k?) (fps|tbr)")
_ROTATION = re.compile(r"display ?matrix: rotation of (-?[\d.]+) degrees", re.IGNORECASE)
_DURATION = re.compile(r"Duration: (\d+):(\d+):([\d.]+)")
_SAR = re.compile(r"\[SAR (\d+):(\d+) DAR")


@dataclass(frozen=True)
class VideoInfo:
    """What `ffmpeg -i` says of a file's first video stream; width/height are as displayed (rotation applied)."""

    width: int
    height: int
    fps: float | None  # the stream's average frame rate (tbr when no fps is given); None if unknown
    rotation: int  # display rotation in degrees from the container's display matrix, 0 if none
    codec: str
    pix_fmt: str
    duration: float | None  # seconds; None if unknown
    sar: tuple[int, int] = (1, 1)  # sample aspect ratio of a decoded (rotated) pixel, width:height

    @property
    def square_size(self) -> tuple[int, int]:
        """(width, height) with square pixels: the axis that the sample aspect ratio stretches grows
        (never shrinks), as a player shows the video."""
        return square_size(self.width, self.height, self.sar)


def parse_probe(text: str) -> VideoInfo:
    """Parse ffmpeg's stderr banner for an input. Raises VideoError when there is no video stream."""
    for line in text.splitlines():
        m = _STREAM.search(line)
        if m and "Input" not in line:
            break
    else:
        reason = _last_error_line(text)
        if "Audio:" in text:
            raise VideoError("no video stream (audio only)")
        raise VideoError(f"not a readable video: {reason}" if reason else "no video stream")
    width, height = int(m["w"]), int(m["h"])
    rates = {kind: float(v) * (1000 if k else 1) for v, k, kind in _FPS.findall(line)}
    fps = rates.get("fps") or rates.get("tbr")
    rot = _ROTATION.search(text)
    rotation = int(round(float(rot[1]))) % 360 if rot else 0
    if rotation in (90, 270):
        width, height = height, width
    dur = _DURATION.search(text)
    duration = int(dur[1]) * 3600 + int(dur[2]) * 60 + float(dur[3]) if dur else None
    sar_m = _SAR.search(line)
    sar = (1, 1)
    if sar_m and int(sar_m[1]) > 0 and int(sar_m[2]) > 0 and sar_m[1] != sar_m[2]:  # 0:1 means unknown: square
        sar = (int(sar_m[1]), int(sar_m[2]))
        if rotation in (90, 270):  # ffmpeg's autorotate transposes the pixels, and their aspect with them
            sar = sar[::-1]
    return VideoInfo(width, height, fps, rotation, m["codec"], m["pix"], duration, sar)


def square_size(width: int, height: int, sar: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """A `width`x`height` frame of `sar` (width:height) pixels as square pixels: the stretched axis grows."""
    num, den = sar
    if num > den:
        return max(1, int(round(width * num / den))), height
    if num < den:
        return width, max(1, int(round(height * den / num)))
    return width, height


_GENERIC = ("At least one output file", "Error opening input file", "Error opening input files")
_COMPONENT = re.compile(r"^\[[^\]]+ @ [^\]]+\]\s*")


def _last_error_line(text: str) -> str:
    """The most telling of ffmpeg's error lines: the first two specific messages, component prefixes
    ("[in#0 @ 0x55...]") dropped, generic trailers ("Error opening input files") skipped."""
    messages: list[str] = []
    for line in text.splitlines():
        msg = _COMPONENT.sub("", line.strip())
        if msg and not msg.startswith(_GENERIC) and msg not in messages:
            messages.append(msg)
    return "; ".join(messages[:2])


def probe(path: str | Path, timeout: float = 30.0) -> VideoInfo:
    """Read a file's header with `ffmpeg -i` (no ffprobe needed: imageio-ffmpeg ships none)."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise VideoError("empty file (0 bytes)")
    with run_ffmpeg([ffmpeg_binary(), "-hide_banner", "-nostdin", "-i", str(path)], timeout) as run:
        pass
    if run.timed_out:
        raise VideoError(f"ffmpeg probe timed out after {timeout:g} s")
    return parse_probe(run.stderr)


# --------------------------------------------------------------------------------------------- runner


class FfmpegRun:
    """A running ffmpeg (see `run_ffmpeg`): `stdin`/`stdout` are its pipes when asked for; once the
    `with` block has ended, `returncode`, `stderr` (all of it, decoded) and `timed_out` say how it ended."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.stdin: BinaryIO | None = proc.stdin
        self.stdout: BinaryIO | None = proc.stdout
        self.returncode: int | None = None
        self.stderr = ""
        self.timed_out = False


@contextlib.contextmanager
def run_ffmpeg(cmd: list[str], timeout: float, stdin: bool = False, stdout: bool = False) -> Iterator[FfmpegRun]:
    """Start `cmd` (an argument list, no shell), with pipes to its stdin and from its stdout when asked
    (else /dev/null), for the body of the `with` block to use. Its stderr is read by a thread from the
    start (a chatty ffmpeg would otherwise block on a full pipe) and kept whole. A timer kills it after
    `timeout` seconds, whatever the body is doing. When the body ends, stdin is closed and ffmpeg
    waited for; when the body raises (or a generator around it is closed early), ffmpeg is killed first.
    Errors are the caller's to raise, from `returncode`, `stderr` and `timed_out`."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL, stderr=subprocess.PIPE)
    run = FfmpegRun(proc)
    err_chunks: list[bytes] = []
    drain = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
    drain.start()

    def kill() -> None:
        run.timed_out = True
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        yield run
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg exited early; its stderr says why
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
        run.returncode = proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass
        drain.join(timeout=10)
        proc.stderr.close()
        run.stderr = b"".join(err_chunks).decode("utf-8", "replace")


# ------------------------------------------------------------------------------------------- geometry

CROP_MODES = ("bbox", "center", "none")


@dataclass(frozen=True)
class Geometry:
    """Where to crop (x, y, w, h in displayed source pixels, square ones; None = whole frame) and the
    output size (square pixels)."""

    crop: tuple[int, int, int, int] | None
    out_width: int
    out_height: int
    note: str = ""  # why the requested crop was not used as is, e.g. a box outside the frame
    # The decoded frame, when its pixels are not square: (width, height, sar). The crop is mapped back
    # to its pixels, so one scale both crops square on screen and resamples (no second resize).
    source: tuple[int, int, tuple[int, int]] | None = None

    def pixel_crop(self) -> tuple[int, int, int, int] | None:
        """`crop` in the decoded frame's own (non-square) pixels."""
        if self.crop is None or self.source is None:
            return self.crop
        width, height, sar = self.source
        sw, sh = square_size(width, height, sar)
        x, y, w, h = self.crop
        px, py = min(int(round(x * width / sw)), width - 1), min(int(round(y * height / sh)), height - 1)
        return (px, py, max(1, min(int(round(w * width / sw)), width - px)),
                max(1, min(int(round(h * height / sh)), height - py)))


def square_around_box(
    bbox: tuple[float, float, float, float], width: int, height: int, margin: float
) -> tuple[int, int, int, int] | None:
    """Square (x, y, side, side) centred on `bbox` (x1, y1, x2, y2), grown by `margin` of its longer
    side, shrunk to fit the frame and shifted inside it. None when the box misses the frame or a
    coordinate is not a finite number (NaN would otherwise clamp to 0: a silent top-left crop)."""
    if not all(math.isfinite(float(v)) for v in bbox):
        return None
    x1, y1, x2, y2 = (max(0.0, min(float(v), lim)) for v, lim in zip(bbox, (width, height, width, height)))
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    side = min(max(x2 - x1, y2 - y1) * (1 + margin), width, height)
    side_i = max(1, int(round(side)))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    x = int(round(min(max(cx - side_i / 2, 0), width - side_i)))
    y = int(round(min(max(cy - side_i / 2, 0), height - side_i)))
    return x, y, side_i, side_i


def plan_geometry(
    width: int, height: int, mode: str, size: int,
    bbox: tuple[float, float, float, float] | None = None, margin: float = 0.1, sar: tuple[int, int] = (1, 1),
) -> Geometry:
    """Crop and output size for a `width`x`height` frame of `sar` pixels (VideoInfo.sar).

    bbox: square around the signer's box, resized to size x size (center when there is no usable box);
    center: the largest centred square, resized to size x size; none: the whole frame, shorter side = size.
    Squares are square on screen: with non-square pixels, planning is done on the frame's square-pixel
    size (`square_size`) and the box (in the frame's pixels, as WLASL gives it) is mapped to it.
    """
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")
    sw, sh = square_size(width, height, sar)
    if (sw, sh) != (width, height):
        if bbox is not None:
            fx, fy = sw / width, sh / height
            bbox = (bbox[0] * fx, bbox[1] * fy, bbox[2] * fx, bbox[3] * fy)
        return dataclasses.replace(plan_geometry(sw, sh, mode, size, bbox, margin), source=(width, height, sar))
    note = ""
    if mode == "bbox":
        if bbox is None:
            note = "no bbox: center crop"
        else:
            box = square_around_box(bbox, width, height, margin)
            if box is not None:
                return Geometry(box, size, size)
            where = "not finite" if not all(math.isfinite(float(v)) for v in bbox) else \
                f"outside the {width}x{height} frame"
            note = f"bbox {list(bbox)} {where}: center crop"
        mode = "center"
    if mode == "center":
        side = min(width, height)
        return Geometry(((width - side) // 2, (height - side) // 2, side, side), size, size, note)
    if width <= height:
        return Geometry(None, size, max(1, int(round(height * size / width))))
    return Geometry(None, max(1, int(round(width * size / height))), size)


# --------------------------------------------------------------------------------------------- decode


def _command(path: str | Path, geometry: Geometry, fps: float, frame_range: tuple[int, int] | None,
             threads: int, output: dict) -> list[str]:
    """The ffmpeg argument list: trim -> fps -> crop -> scale -> `output` (ffmpeg-python kwargs)."""
    stream = ffmpeg.input(str(path), threads=threads).video
    if frame_range is not None:
        first, last = frame_range
        trim = {"start_frame": max(0, first - 1)}
        if last != -1:
            trim["end_frame"] = last
        stream = stream.filter("trim", **trim).filter("setpts", "PTS-STARTPTS")
    stream = stream.filter("fps", fps=fps)
    if geometry.crop is not None:
        x, y, w, h = geometry.pixel_crop()
        stream = stream.filter("crop", w, h, x, y)
    stream = stream.filter("scale", geometry.out_width, geometry.out_height, flags="area")
    if geometry.source is not None:
        stream = stream.filter("setsar", "1")
    if threads:  # the encoder (mjpeg) too, so one video is one core's work
        output = {**output, "threads": threads}
    out = stream.output("pipe:", an=None, sn=None, dn=None, **output)
    # ffmpeg-python appends global args after the output, where ffmpeg ignores them: put them first.
    glob = ["-nostdin", "-hide_banner", "-v", "error"]
    if threads:
        glob += ["-filter_complex_threads", str(threads)]
    return [ffmpeg_binary(), *glob, *out.compile(cmd=ffmpeg_binary())[1:]]


def frame_limit(geometry: Geometry, max_frames: int | None = DEFAULT_MAX_FRAMES,
                max_bytes: int | None = None) -> int | None:
    """The most frames a decode to `geometry` may yield: `max_frames`, and as many (H, W, 3) uint8
    frames as fit in `max_bytes` (decoded size; shards.MAX_SAMPLE_BYTES is what readers accept).
    None when neither bounds it."""
    limits = [n for n in (max_frames, None if max_bytes is None else
                          max_bytes // (geometry.out_height * geometry.out_width * 3)) if n is not None]
    return min(limits) if limits else None


def _stream(cmd: list[str], chunks: Callable[[BinaryIO], Iterator], timeout: float,
            frame_range: tuple[int, int] | None, warnings: list[str] | None, limit: int | None = None,
            fps: float = 0.0) -> Iterator:
    """Run ffmpeg, yield what `chunks` reads from its stdout, and turn every failure into VideoError.
    More than `limit` frames: ffmpeg is killed at the first one past it (VideoError "too long")."""
    count = 0
    with run_ffmpeg(cmd, timeout, stdout=True) as run:
        for item in chunks(run.stdout):
            count += 1
            if limit is not None and count > limit:
                raise VideoError(f"too long: more than {limit} frames at {fps:g} fps (max_frames; a long "
                                 "video, or timestamps that span far more time than its frames)")
            yield item
    rc, err = run.returncode, run.stderr
    if run.timed_out:
        raise VideoError(f"ffmpeg timed out after {timeout:g} s")
    if rc != 0:
        raise VideoError(f"ffmpeg failed (exit {rc}): {_last_error_line(err) or 'no message'}")
    if "partial file" in err:
        # A cut-off download: the clip would miss the end of the sign, so it is not kept.
        raise VideoError(f"truncated file: ffmpeg reports a partial file after {count} frames")
    if err.strip() and warnings is not None:
        lines = [_COMPONENT.sub("", ln.strip()) for ln in err.splitlines() if ln.strip()]
        warnings.extend(list(dict.fromkeys(lines))[:5])  # first five distinct messages
    if frame_range is not None and count == 0:
        raise VideoError(f"frame range {list(frame_range)} selects no frames: the video ends before frame "
                         f"{frame_range[0]}")


def _decoded(
    path: str | Path,
    geometry: Geometry,
    fps: float,
    output: dict[str, Any],
    frames: Callable[[BinaryIO], Iterator],
    frame_range: tuple[int, int] | None = None,
    timeout: float = 300.0,
    threads: int = 0,
    warnings: list[str] | None = None,
    max_frames: int | None = DEFAULT_MAX_FRAMES,
    max_bytes: int | None = None,
) -> Iterator:
    """The frames `frames(stdout)` reads from ffmpeg writing `output`, the options of `decode` and
    `decode_jpeg` applied: `frame_range` (first, last) source frames, 1-indexed, last -1 = to the end;
    ffmpeg is killed past `timeout` seconds; `threads` of its decoder (0 = its choice); its error lines
    on a successful decode go to `warnings`; VideoError ("too long") at the first frame past
    `frame_limit(geometry, max_frames, max_bytes)` (None: no bound)."""
    cmd = _command(path, geometry, fps, frame_range, threads, output)
    return _stream(cmd, frames, timeout, frame_range, warnings, frame_limit(geometry, max_frames, max_bytes), fps)


def decode(path: str | Path, geometry: Geometry, fps: float, **options: Any) -> Iterator[np.ndarray]:
    """Yield the video's frames resampled to `fps`, cropped and resized per `geometry`:
    each (out_height, out_width, 3) uint8 RGB. `options`: frame_range, timeout, threads, warnings,
    max_frames, max_bytes (see `_decoded`).

    Frames stream from ffmpeg's stdout one at a time, so memory does not grow with video length.
    Raises VideoError (with ffmpeg's reason) when ffmpeg fails, runs past the timeout or past the bound.
    """
    h, w = geometry.out_height, geometry.out_width

    def frames(pipe: BinaryIO) -> Iterator[np.ndarray]:
        while len(buf := pipe.read(h * w * 3)) == h * w * 3:
            yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)

    return _decoded(path, geometry, fps, {"format": "rawvideo", "pix_fmt": "rgb24"}, frames, **options)


def decode_jpeg(path: str | Path, geometry: Geometry, fps: float, qscale: int = 3, **options: Any) -> Iterator[bytes]:
    """Like `decode`, but yield each frame as a baseline JPEG (4:2:0, full range) that ffmpeg encodes
    straight from the decoded YUV planes at `qscale` (2 = best .. 31). That skips the RGB conversion
    and a second encoder pass in Python. The options are `decode`'s (`max_bytes` counts the frames
    decoded, as a reader will hold them).
    """
    # No JPEG of a frame comes near this (it is three raw frames): a stream without an end marker
    # in sight is refused, not buffered.
    most = 9 * geometry.out_height * geometry.out_width + (1 << 20)

    def frames(pipe: BinaryIO) -> Iterator[bytes]:
        buf = b""
        while chunk := pipe.read(1 << 16):
            buf += chunk
            if len(buf) > most:
                raise VideoError(f"ffmpeg's JPEG stream has a frame of more than {most} bytes")
            start = 0
            while (end := jpeg_end(buf, start)) is not None:
                yield buf[start:end]
                start = end
            buf = buf[start:]

    output = {"format": "image2pipe", "vcodec": "mjpeg", "pix_fmt": "yuvj420p", "q:v": qscale,
              "fflags": "+bitexact", "flags:v": "+bitexact"}
    return _decoded(path, geometry, fps, output, frames, **options)


_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # markers without a length field (TEM, RSTn)


def jpeg_end(buf: bytes, start: int = 0) -> int | None:
    """End offset of the complete JPEG that starts at `buf[start]`, or None if it is not all there.

    Walks the marker segments by their lengths and scans entropy-coded data for the next real marker
    (0xFF followed by anything but a stuffed 0x00 or a restart marker), so no table byte or
    coefficient can be mistaken for an end-of-image.
    """
    n = len(buf)
    if n - start < 4:
        return None
    if buf[start:start + 2] != b"\xff\xd8":
        raise VideoError(f"ffmpeg's JPEG stream is out of step at byte {start}")
    i = start + 2
    while i + 2 <= n:
        if buf[i] != 0xFF:
            raise VideoError(f"ffmpeg's JPEG stream has no marker at byte {i}")
        marker = buf[i + 1]
        if marker == 0xD9:
            return i + 2
        if marker in _STANDALONE or marker == 0xFF:
            i += 2 if marker != 0xFF else 1
            continue
        if i + 4 > n:
            return None
        i += 2 + int.from_bytes(buf[i + 2:i + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next real marker
            while True:
                i = buf.find(b"\xff", i)
                if i < 0 or i + 1 >= n:
                    return None
                if buf[i + 1] != 0x00 and buf[i + 1] not in _STANDALONE:
                    break
                i += 2
    return None
