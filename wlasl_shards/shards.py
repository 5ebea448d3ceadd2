"""The shard contract: the only thing `preprocess` (writer) and `train` (reader) share.

A dataset is a directory (or URL prefix) holding `dataset.json` and `<split>/shard-NNNNNN.tar`.
Each shard is a plain POSIX tar (readable by `webdataset`, `tar`, anything) of samples, one per video,
whose members share the sample key (the video id, dots replaced) and differ by extension:

    <key>.json   UTF-8 JSON metadata (META_FIELDS below, plus `frames`: how the frames are stored)
    <key>.cls    the class index as ASCII decimal
    <key>.jpgs   codec "jpeg": the JPEG files of all frames, concatenated; meta["frames"]["offsets"]
                 holds T + 1 byte offsets, so frame i is data[offsets[i]:offsets[i + 1]]
    <key>.npy    codec "npy": one (T, H, W, 3) uint8 array in NumPy's .npy format (no pickle)

Frames are RGB uint8, T >= 1, at the dataset's output fps. No member is ever pickled, and readers
must not unpickle: `decode_frames` below uses `np.load(allow_pickle=False)` and a JPEG decoder only.

Version history: 1 = first release.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import simplejpeg

FORMAT_NAME = "wlasl-shards"
FORMAT_VERSION = 1
INDEX_NAME = "dataset.json"
SPLITS = ("train", "val", "test")
CODECS = ("jpeg", "npy")
SHARD_PATTERN = "shard-{:06d}.tar"

EXT_META = "json"
EXT_LABEL = "cls"
EXT_FRAMES = {"jpeg": "jpgs", "npy": "npy"}

# The metadata every sample carries (besides `frames`), in this order.
META_FIELDS = (
    "video_id", "gloss", "label", "split", "signer_id", "source_path",
    "source_fps", "source_size", "fps", "num_frames", "crop_box",
)


def sample_key(video_id: str) -> str:
    """Tar-member-safe key: webdataset splits member names at the first dot, so dots must go."""
    return video_id.replace(".", "_").replace("/", "_")


def shard_name(split: str, index: int) -> str:
    """Path of a shard relative to the dataset root."""
    return f"{split}/{SHARD_PATTERN.format(index)}"


# ----------------------------------------------------------------------------------------- encoding


def pack_jpegs(jpegs: Sequence[bytes]) -> tuple[bytes, list[int]]:
    """T JPEG files -> (the `.jpgs` blob: them concatenated, the T + 1 byte offsets of `frames_meta`),
    so frame i is blob[offsets[i]:offsets[i + 1]]. Any baseline JPEG is a valid frame."""
    offsets = [0]
    for jpeg in jpegs:
        offsets.append(offsets[-1] + len(jpeg))
    return b"".join(jpegs), offsets


def npy_bytes(array: np.ndarray) -> bytes:
    """Any array -> .npy bytes, never pickled (features shards store float32 arrays this way)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_npy(frames: np.ndarray) -> bytes:
    """(T, H, W, 3) uint8 -> .npy bytes."""
    return npy_bytes(np.asarray(frames, dtype=np.uint8))


def frames_meta(codec: str, count: int, height: int, width: int, offsets: Sequence[int] | None) -> dict:
    """The `frames` entry of a sample's metadata."""
    meta: dict[str, Any] = {"codec": codec, "count": count, "height": height, "width": width}
    if codec == "jpeg":
        meta["offsets"] = list(offsets)
    return meta


def sample_members(key: str, meta: dict, frames_blob: bytes) -> list[tuple[str, bytes]]:
    """The (member name, bytes) of one sample, in a fixed order."""
    codec = meta["frames"]["codec"]
    return [
        (f"{key}.{EXT_FRAMES[codec]}", frames_blob),
        (f"{key}.{EXT_LABEL}", str(int(meta["label"])).encode()),
        (f"{key}.{EXT_META}", json.dumps(meta, sort_keys=False, separators=(",", ":")).encode()),
    ]


def tar_member(name: str, size: int) -> tarfile.TarInfo:
    """A TarInfo with fixed owner, mode and time, so identical content gives identical bytes."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _HashingFile(io.RawIOBase):
    """File wrapper that hashes and counts what is written through it."""

    def __init__(self, f: BinaryIO):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.f.write(b)


class TarWriter:
    """One tar shard, written as `<path>.tmp` and renamed into place after fsync by `close`: a crash
    never leaves a truncated file under a shard's name (webdataset's ShardWriter writes the final name
    directly). Members get `tar_member`'s fixed headers; the bytes are hashed as they are written."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self._file = open(self.tmp, "wb")
        self._hashed = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hashed, mode="w", format=tarfile.PAX_FORMAT)

    @property
    def offset(self) -> int:
        """Bytes of the archive so far (headers and padded data; not yet the two end blocks)."""
        return self._tar.offset

    def add(self, members: Sequence[tuple[str, bytes]]) -> None:
        for name, data in members:
            self._tar.addfile(tar_member(name, len(data)), io.BytesIO(data))

    def close(self) -> tuple[int, str]:
        """Finish the archive, fsync, rename to `path`; returns (bytes, sha256 hex) of the file."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        return self._hashed.size, self._hashed.sha.hexdigest()

    def abandon(self) -> None:
        """Close without renaming: the `.tmp` stays behind for the next run to discard."""
        self._file.close()


# ----------------------------------------------------------------------------------------- decoding


def frame_count(meta: dict) -> int:
    return int(meta["frames"]["count"])


def decode_frames(sample: dict, indices: Sequence[int] | None = None,
                  box: tuple[int, int, int] | None = None, channels: str = "RGB") -> np.ndarray:
    """Frames of a raw webdataset sample (member extension -> bytes, `json` parsed or not).

    Returns (len(indices), H, W, 3) uint8 (all frames when `indices` is None), or with `box` = (y, x,
    size) the size x size square at row y, column x of each: cropping while decoding saves a copy of
    every full frame. `channels` "RGB" or "BGR" orders the last axis. For JPEG only the requested
    frames are decoded (libjpeg-turbo through simplejpeg). Never unpickles.
    """
    if channels not in ("RGB", "BGR"):
        raise ValueError(f"channels must be 'RGB' or 'BGR', got {channels!r}")
    meta = sample[EXT_META]
    if isinstance(meta, (bytes, bytearray)):
        meta = json.loads(meta)
    fmeta = meta["frames"]
    count, height, width = int(fmeta["count"]), int(fmeta["height"]), int(fmeta["width"])
    if indices is None:
        indices = range(count)
    y, x, h, w = (box[0], box[1], box[2], box[2]) if box is not None else (0, 0, height, width)
    if not (0 <= y <= height - h and 0 <= x <= width - w):
        raise ValueError(f"crop {w}x{h} at (y={y}, x={x}) leaves {height}x{width} frames")
    for i in indices:
        if not 0 <= i < count:
            raise IndexError(f"frame {i} out of range for a {count}-frame sample")
    if fmeta["codec"] == "npy":
        arr = np.load(io.BytesIO(sample[EXT_FRAMES["npy"]]), allow_pickle=False)
        if arr.dtype != np.uint8 or arr.shape != (count, height, width, 3):
            raise ValueError(f"npy frames are {arr.shape} {arr.dtype}, metadata says ({count}, {height}, {width}, 3)")
        arr = arr[np.asarray(list(indices), dtype=np.int64), y:y + h, x:x + w]
        return np.ascontiguousarray(arr if channels == "RGB" else arr[..., ::-1])
    if fmeta["codec"] != "jpeg":
        raise ValueError(f"unknown frame codec {fmeta['codec']!r}")
    blob = sample[EXT_FRAMES["jpeg"]]
    offsets = fmeta["offsets"]
    out = np.empty((len(indices), h, w, 3), np.uint8)
    for j, i in enumerate(indices):
        frame = simplejpeg.decode_jpeg(blob[offsets[i]:offsets[i + 1]], colorspace=channels)
        if frame.shape != (height, width, 3):
            raise ValueError(f"frame {i} decodes to {frame.shape}, metadata says ({height}, {width}, 3)")
        out[j] = frame[y:y + h, x:x + w]
    return out


# -------------------------------------------------------------------------------------------- index


@dataclass(frozen=True)
class ShardRecord:
    """One finished shard as listed in dataset.json."""

    name: str  # relative to the dataset root, e.g. "train/shard-000003.tar"
    samples: int
    frames: int
    bytes: int
    sha256: str

    def to_json(self) -> dict:
        return {"name": self.name, "samples": self.samples, "frames": self.frames,
                "bytes": self.bytes, "sha256": self.sha256}


def check_index(index: Any, where: str = INDEX_NAME) -> dict:
    """Validate the shape of a parsed dataset.json; returns it. Raises ValueError naming the problem."""
    if not isinstance(index, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(index).__name__}")
    if index.get("format") != FORMAT_NAME:
        raise ValueError(f"{where}: not a {FORMAT_NAME} index (format={index.get('format')!r})")
    version = index.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{where}: format version {version!r}, this tool reads version {FORMAT_VERSION}")
    for field in ("classes", "splits", "params"):
        if field not in index:
            raise ValueError(f"{where}: missing field {field!r}")
    return index


def read_samples(fileobj) -> Iterator[dict]:
    """Samples of a shard read sequentially from a file object: dicts of extension -> bytes plus
    `__key__`. Members of one sample are adjacent, as `build` writes them (and webdataset expects)."""
    current: dict = {}
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.rpartition("/")[2].partition(".")
            if current and current["__key__"] != key:
                yield current
                current = {}
            current["__key__"] = key
            current[ext] = tar.extractfile(member).read()
    if current:
        yield current
