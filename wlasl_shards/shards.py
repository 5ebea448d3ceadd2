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
import math
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
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

# What a sample's metadata may claim, decoded ((T, H, W, 3) uint8 bytes): readers refuse more before
# allocating anything, and `build` records a longer video as failed (see video.frame_limit), so
# every sample build writes can be read.
MAX_SAMPLE_BYTES = 4 * 2**30

# The metadata every sample carries (besides `frames`), in this order.
META_FIELDS = (
    "video_id", "gloss", "label", "split", "signer_id", "source_path",
    "source_fps", "source_size", "fps", "num_frames", "crop_box",
)


def sample_key(video_id: str) -> str:
    """Tar-member-safe key: webdataset splits member names at the first dot, so dots must go (and
    slashes, which would be folders). Not injective: `p.q`, `p_q` and `p/q` share a key, so `build`
    refuses such ids before writing anything (`key_collisions`), and readers (`group_members`) keep
    samples apart by their members, not by key alone."""
    return video_id.replace(".", "_").replace("/", "_")


def key_collisions(video_ids: Iterable[str]) -> list[tuple[str, ...]]:
    """The groups of ids (sorted, two or more each) that `sample_key` maps to one key."""
    by_key: dict[str, list[str]] = {}
    for vid in video_ids:
        by_key.setdefault(sample_key(vid), []).append(vid)
    return sorted(tuple(sorted(ids)) for ids in by_key.values() if len(ids) > 1)


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
        try:
            for name, data in members:
                self._tar.addfile(tar_member(name, len(data)), io.BytesIO(data))
        except OSError as e:
            self._failed(e)

    def close(self) -> tuple[int, str]:
        """Finish the archive, fsync, rename to `path`; returns (bytes, sha256 hex) of the file."""
        try:
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.tmp, self.path)
        except OSError as e:
            self._failed(e)
        return self._hashed.size, self._hashed.sha.hexdigest()

    def _failed(self, error: OSError) -> None:
        """A write failed (a full disk): remove the partial `.tmp`, nothing half-written stays, and
        re-raise naming it (a failed write() names no file)."""
        try:
            self._file.close()
        except OSError:
            pass  # the same full disk, flushing what is buffered
        self.tmp.unlink(missing_ok=True)
        if error.filename is None:
            raise OSError(error.errno, error.strerror or str(error), str(self.path)) from None
        raise error

    def abandon(self) -> None:
        """Close without renaming: the `.tmp` stays behind for the next run to discard."""
        self._file.close()


# ----------------------------------------------------------------------------------------- decoding


def frame_count(meta: dict) -> int:
    return int(meta["frames"]["count"])


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_frames_meta(meta: Any) -> dict:
    """The `frames` entry of a sample's parsed metadata, checked before anything is allocated for it:
    codec known, count/height/width positive integers, at most MAX_SAMPLE_BYTES decoded, T + 1
    increasing offsets from 0 for JPEG. Raises ValueError saying what is wrong."""
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), dict):
        raise ValueError("metadata has no 'frames' object")
    fmeta = meta["frames"]
    if fmeta.get("codec") not in CODECS:
        raise ValueError(f"unknown frame codec {fmeta.get('codec')!r}")
    if not _positive_int(fmeta.get("count")):
        raise ValueError(f"frame count {fmeta.get('count')!r} is not a positive integer")
    for name in ("height", "width"):
        if not _positive_int(fmeta.get(name)):
            raise ValueError(f"frame {name} {fmeta.get(name)!r} is not a positive integer")
    count, height, width = fmeta["count"], fmeta["height"], fmeta["width"]
    if count * height * width * 3 > MAX_SAMPLE_BYTES:
        raise ValueError(f"metadata claims {count} frames of {height}x{width}, more than {MAX_SAMPLE_BYTES} "
                         "bytes decoded")
    if fmeta["codec"] == "jpeg":
        offsets = fmeta.get("offsets")
        if (not isinstance(offsets, list) or len(offsets) != count + 1 or offsets[0] != 0
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or any(b <= a for a, b in zip(offsets, offsets[1:]))):
            raise ValueError(f"frame offsets must be {count} + 1 increasing byte offsets from 0")
    return fmeta


def _check_npy_header(blob: bytes, shape: tuple[int, ...]) -> None:
    """ValueError unless `blob` is a .npy of uint8 `shape` with all its bytes there (read from the
    header alone, before anything is allocated)."""
    buf = io.BytesIO(blob)
    try:
        version = np.lib.format.read_magic(buf)
        header = np.lib.format.read_array_header_1_0(buf) if version == (1, 0) else \
            np.lib.format.read_array_header_2_0(buf)
    except ValueError as e:
        raise ValueError(f"npy frames: bad header ({e})") from None
    got, fortran, dtype = header
    if dtype != np.uint8 or tuple(got) != shape:
        raise ValueError(f"npy frames are {tuple(got)} {dtype}, metadata says {shape}")
    if len(blob) - buf.tell() < math.prod(shape):
        raise ValueError(f"npy frames: {len(blob) - buf.tell()} data bytes, {shape} needs {math.prod(shape)}")


def check_sample(sample: dict) -> dict:
    """The parsed metadata of a raw sample (extension -> bytes), checked enough that only the frame
    data itself can fail to decode: JSON object, `check_frames_meta`, frames and label members
    present, the frames member as long as the metadata says. Raises ValueError saying what is wrong."""
    raw = sample.get(EXT_META)
    if raw is None:
        raise ValueError(f"missing member .{EXT_META}")
    meta = json.loads(raw) if isinstance(raw, (bytes, bytearray, str)) else raw
    fmeta = check_frames_meta(meta)
    ext = EXT_FRAMES[fmeta["codec"]]
    if ext not in sample:
        raise ValueError(f"missing member .{ext}")
    if fmeta["codec"] == "jpeg" and fmeta["offsets"][-1] != len(sample[ext]):
        raise ValueError(f"frame offsets end at byte {fmeta['offsets'][-1]}, the .{ext} member has "
                         f"{len(sample[ext])}")
    if fmeta["codec"] == "npy":
        _check_npy_header(sample[ext], (fmeta["count"], fmeta["height"], fmeta["width"], 3))
    if EXT_LABEL not in sample:
        raise ValueError(f"missing member .{EXT_LABEL}")
    return meta


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
    fmeta = check_frames_meta(meta)
    count, height, width = fmeta["count"], fmeta["height"], fmeta["width"]
    if indices is None:
        indices = range(count)
    if len(indices) * height * width * 3 > MAX_SAMPLE_BYTES:
        raise ValueError(f"{len(indices)} frames of {height}x{width} would be more than {MAX_SAMPLE_BYTES} bytes")
    y, x, h, w = (box[0], box[1], box[2], box[2]) if box is not None else (0, 0, height, width)
    if not (0 <= y <= height - h and 0 <= x <= width - w):
        raise ValueError(f"crop {w}x{h} at (y={y}, x={x}) leaves {height}x{width} frames")
    for i in indices:
        if not 0 <= i < count:
            raise IndexError(f"frame {i} out of range for a {count}-frame sample")
    if fmeta["codec"] == "npy":
        blob = sample[EXT_FRAMES["npy"]]
        _check_npy_header(blob, (count, height, width, 3))  # before np.load allocates what the header says
        arr = np.load(io.BytesIO(blob), allow_pickle=False)
        if arr.dtype != np.uint8 or arr.shape != (count, height, width, 3):
            raise ValueError(f"npy frames are {arr.shape} {arr.dtype}, metadata says ({count}, {height}, {width}, 3)")
        arr = arr[np.asarray(list(indices), dtype=np.int64), y:y + h, x:x + w]
        return np.ascontiguousarray(arr if channels == "RGB" else arr[..., ::-1])
    blob = sample[EXT_FRAMES["jpeg"]]
    offsets = fmeta["offsets"]
    if offsets[-1] != len(blob):
        raise ValueError(f"frame offsets end at byte {offsets[-1]}, the .{EXT_FRAMES['jpeg']} member has {len(blob)}")
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


def _field_error(where: str, field: str, expected: str, value: Any) -> ValueError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return ValueError(f"{where}: field {field} must be {expected}, got {type(value).__name__} {shown}")


def _need(where: str, obj: dict, field: str, name: str, kind: type | tuple[type, ...], expected: str) -> Any:
    """obj[name], which must exist and be of `kind` (bool is not an int here); ValueError naming `field`."""
    if name not in obj:
        raise ValueError(f"{where}: missing field {field}")
    value = obj[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise _field_error(where, field, expected, value)
    return value


def check_index(index: Any, where: str = INDEX_NAME) -> dict:
    """Validate a parsed dataset.json: the version, and the type of every field a reader uses (classes,
    params, splits with their counts and shard records, failed). Returns it; raises ValueError naming
    the file and the field, never a TypeError or KeyError later."""
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
    classes = _need(where, index, "classes", "classes", list, "a list of class names")
    for i, name in enumerate(classes):
        if not isinstance(name, str):
            raise _field_error(where, f"classes[{i}]", "a string", name)
    _need(where, index, "params", "params", dict, "an object")
    splits = _need(where, index, "splits", "splits", dict, "an object {split: {...}}")
    for split, entry in splits.items():
        field = f"splits.{split}"
        if not isinstance(entry, dict):
            raise _field_error(where, field, "an object", entry)
        for name in ("samples", "frames", "bytes"):
            if name in entry:
                _need(where, entry, f"{field}.{name}", name, int, "an integer")
        records = _need(where, entry, f"{field}.shards", "shards", list, "a list of shard records")
        for i, rec in enumerate(records):
            rfield = f"{field}.shards[{i}]"
            if not isinstance(rec, dict):
                raise _field_error(where, rfield, "an object", rec)
            name = _need(where, rec, f"{rfield}.name", "name", str, "a path like train/shard-000000.tar")
            if name.startswith("/") or ".." in name.split("/"):
                raise _field_error(where, f"{rfield}.name", "a path inside the dataset", name)
            for count in ("samples", "bytes"):
                if _need(where, rec, f"{rfield}.{count}", count, int, "an integer >= 0") < 0:
                    raise _field_error(where, f"{rfield}.{count}", "an integer >= 0", rec[count])
            if "frames" in rec:
                _need(where, rec, f"{rfield}.frames", "frames", int, "an integer")
            if "sha256" in rec:
                _need(where, rec, f"{rfield}.sha256", "sha256", str, "a hex string")
    if "failed" in index:
        failed = _need(where, index, "failed", "failed", list, "a list of failures")
        for i, f in enumerate(failed):
            if not isinstance(f, dict) or not isinstance(f.get("reason", ""), str):
                raise _field_error(where, f"failed[{i}]", "an object with a string reason", f)
    return index


def group_members(members: Iterable[tuple[str, bytes]]) -> Iterator[dict]:
    """(member name, bytes) in tar order -> samples: dicts of extension -> bytes plus `__key__`.

    Members of one sample are adjacent and share a key (the name up to its first dot, folders
    included), as `build` writes them and webdataset expects. A member whose extension the current
    sample already has starts a new sample of the same key: shards written before `build` refused
    colliding ids (`p.q` and `p_q` both `p_q`) keep both samples instead of merging them or losing
    the rest of the shard. A member without an extension becomes a sample of its own, with no
    members, which `check_sample` refuses (and a reader counts) rather than dropping it unseen."""
    current: dict = {}
    for name, data in members:
        key, dot, ext = name.partition(".") if "/" not in name else _split_path(name)
        if current and (current["__key__"] != key or ext in current or not dot):
            yield current
            current = {}
        current["__key__"] = key
        if dot:
            current[ext] = data
    if current:
        yield current


def _split_path(name: str) -> tuple[str, str, str]:
    folder, _, base = name.rpartition("/")
    key, dot, ext = base.partition(".")
    return f"{folder}/{key}", dot, ext


def read_samples(fileobj) -> Iterator[dict]:
    """Samples of a shard read sequentially from a file object (see `group_members`)."""
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        yield from group_members((m.name, tar.extractfile(m).read()) for m in tar if m.isfile())
