"""Dataset sources -> a catalog of items (one per video) to build.

Three kinds of source, detected from what SOURCE holds:
- WLASL: `WLASL_v0.3.json` + `videos/` (the common Kaggle copy); `--subset N` keeps the first N glosses.
- nslt: `nslt_<N>.json` (+ `wlasl_class_list.txt`), found beside it for the chosen subset or named with
  `split_file`; it decides which videos are built, their split and label. WLASL_v0.3.json, when present,
  still contributes signer boxes and signer ids.
- manifest: a CSV or JSON Lines file with `path,label,split[,start,end,bbox,video_id,signer_id]`.

Every problem with the metadata itself raises SourceError (the CLI turns it into a one-line message and
exit status 2); videos that are listed but absent are items with `path=None`, counted, not errors.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from wlasl_shards.shards import SPLITS

log = logging.getLogger(__name__)

WLASL_JSON = "WLASL_v0.3.json"
CLASS_LIST = "wlasl_class_list.txt"
VIDEO_DIR = "videos"
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".avi")
SUBSETS = ("100", "300", "1000", "2000", "all")


class SourceError(ValueError):
    """The dataset's metadata is unusable; the message names the file and the problem."""


@dataclass(frozen=True)
class Item:
    """One video to build."""

    video_id: str
    split: str  # train | val | test
    label: int  # index into Catalog.classes
    path: str | None  # the video file; None when it is listed but absent
    signer_id: int | None = None
    bbox: tuple[float, float, float, float] | None = None  # signer box (x1, y1, x2, y2), source pixels
    frame_range: tuple[int, int] | None = None  # (first, last), 1-indexed, last -1 = to the end


@dataclass(frozen=True)
class Catalog:
    """What a source lists: classes (index -> gloss) and items in source order."""

    classes: tuple[str, ...]
    items: tuple[Item, ...]
    layout: str  # "wlasl", "nslt", "wlasl+nslt" or "manifest"
    files: tuple[str, ...]  # the metadata files read
    notes: tuple[str, ...] = field(default=())  # things worth telling the user, e.g. dropped entries


# ------------------------------------------------------------------------------------------ helpers


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def _check_split(split: Any, where: str) -> str:
    if split not in SPLITS:
        raise SourceError(f"{where}: split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def _frame_range(start: Any, end: Any, where: str) -> tuple[int, int] | None:
    if start in (None, "") and end in (None, ""):
        return None
    try:
        first = int(start) if start not in (None, "") else 1
        last = int(end) if end not in (None, "") else -1
    except (TypeError, ValueError):
        raise SourceError(f"{where}: frame range must be integers, got start={start!r} end={end!r}") from None
    if first < 1 or (last != -1 and last < first):
        raise SourceError(f"{where}: bad frame range [{first}, {last}] (1-indexed, end -1 = to the end)")
    return first, last


def _bbox(value: Any, where: str) -> tuple[float, float, float, float] | None:
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        value = value.strip()
        value = json.loads(value) if value.startswith("[") else re.split(r"[\s,;]+", value)
    try:
        box = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise SourceError(f"{where}: bbox must be 4 numbers x1 y1 x2 y2, got {value!r}") from None
    if len(box) != 4:
        raise SourceError(f"{where}: bbox must be 4 numbers x1 y1 x2 y2, got {value!r}")
    return box


def index_videos(video_dir: Path) -> dict[str, str]:
    """video id (file stem) -> path for every video file below `video_dir`, in one walk.

    Flat (`videos/<id>.mp4`) and per-gloss (`videos/<gloss>/<id>.mp4`) trees both work. When an id has
    several files, the first in sorted path order wins, so the choice is deterministic.
    """
    found: dict[str, str] = {}
    if not video_dir.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(video_dir):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTS:
                found.setdefault(stem, os.path.join(dirpath, name))
    return found


def _unique(items: Iterable[Item], where: str) -> tuple[Item, ...]:
    seen: dict[str, Item] = {}
    for item in items:
        if item.video_id in seen:
            raise SourceError(f"{where}: video id {item.video_id!r} is listed twice")
        seen[item.video_id] = item
    return tuple(seen.values())


# -------------------------------------------------------------------------------------------- WLASL


def read_wlasl_json(path: Path) -> list[dict]:
    """Parse and shape-check WLASL_v0.3.json: a list of {gloss, instances: [{video_id, split, ...}]}."""
    data = _read_json(path)
    if not isinstance(data, list):
        raise SourceError(f"{path}: expected a list of {{gloss, instances}} entries, got {type(data).__name__}")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("gloss"), str) \
                or not isinstance(entry.get("instances"), list):
            raise SourceError(f"{path}: entry {i} is not a {{gloss: str, instances: list}} object")
        for j, inst in enumerate(entry["instances"]):
            if not isinstance(inst, dict) or "video_id" not in inst:
                raise SourceError(f"{path}: entry {i} ({entry['gloss']!r}) instance {j} has no video_id")
    return data


def read_class_list(path: Path) -> list[str]:
    """wlasl_class_list.txt: `index<TAB>gloss` lines with indices 0, 1, 2, ... in order."""
    glosses = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(glosses):
            raise SourceError(f"{path}: line {n} must be '{len(glosses)}<TAB>gloss', got {line!r}")
        glosses.append(parts[1].strip())
    return glosses


def read_nslt(path: Path) -> dict[str, dict]:
    """nslt_<N>.json: {video_id: {"subset": split, "action": [label, frame_start, frame_end]}}."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected an object {{video_id: {{subset, action}}}}, got {type(data).__name__}")
    for vid, entry in data.items():
        action = entry.get("action") if isinstance(entry, dict) else None
        if not isinstance(action, list) or len(action) != 3 or not all(isinstance(a, int) for a in action):
            raise SourceError(f"{path}: entry {vid!r} needs \"action\": [label, frame_start, frame_end]")
        _check_split(entry.get("subset"), f"{path}: entry {vid!r}")
    return data


def _instance_item(inst: dict, label: int, videos: dict[str, str], where: str) -> Item:
    vid = str(inst["video_id"])
    return Item(
        video_id=vid,
        split=_check_split(inst.get("split"), f"{where}: video {vid}"),
        label=label,
        path=videos.get(vid),
        signer_id=inst.get("signer_id"),
        bbox=_bbox(inst.get("bbox"), f"{where}: video {vid}"),
        frame_range=_frame_range(inst.get("frame_start"), inst.get("frame_end"), f"{where}: video {vid}"),
    )


def from_wlasl(root: Path, subset: str, split_file: Path | None = None) -> Catalog:
    """Catalog of a WLASL-layout root (WLASL_v0.3.json and/or nslt_<N>.json, videos/)."""
    if subset not in SUBSETS:
        raise SourceError(f"--subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
    wlasl_path = root / WLASL_JSON
    entries = read_wlasl_json(wlasl_path) if wlasl_path.is_file() else None
    class_path = root / CLASS_LIST
    glosses = read_class_list(class_path) if class_path.is_file() else None
    if glosses is None and entries is not None:
        glosses = [e["gloss"] for e in entries]
    n = None if subset == "all" else int(subset)
    nslt_path = split_file
    if nslt_path is None:
        guess = root / f"nslt_{n if n is not None else len(glosses or [])}.json"
        nslt_path = guess if guess.is_file() else None
    if entries is None and nslt_path is None:
        raise SourceError(f"{root}: no {WLASL_JSON}, nslt_<N>.json or manifest found")
    videos = index_videos(root / VIDEO_DIR)
    files = [str(p) for p in (wlasl_path, class_path) if p.is_file()]

    if nslt_path is None:
        classes = [e["gloss"] for e in entries][:n]
        items = [
            _instance_item(inst, label, videos, str(wlasl_path))
            for label, entry in enumerate(entries[: len(classes)])
            for inst in entry["instances"]
        ]
        return Catalog(tuple(classes), _unique(items, str(wlasl_path)), "wlasl", tuple(files))

    nslt = read_nslt(nslt_path)
    files.append(str(nslt_path))
    labels = [e["action"][0] for e in nslt.values()]
    named = re.fullmatch(r"nslt_(\d+)\.json", nslt_path.name)
    if n is not None:
        num_classes = n
    elif named:  # nslt_<N>.json covers WLASL-N, whatever labels it happens to hold
        num_classes = int(named[1])
    else:
        num_classes = max(labels) + 1 if labels else 0
    if glosses is None:
        raise SourceError(f"{nslt_path}: needs {CLASS_LIST} or {WLASL_JSON} beside it for the gloss names")
    if len(glosses) < num_classes:
        raise SourceError(f"{nslt_path}: {num_classes} classes, but only {len(glosses)} glosses are known")
    classes = glosses[:num_classes]
    instances = {str(i["video_id"]): i for e in (entries or []) for i in e["instances"]}
    items = []
    for vid, entry in nslt.items():
        label, start, end = entry["action"]
        where = f"{nslt_path}: entry {vid!r}"
        if not 0 <= label < num_classes:
            raise SourceError(f"{where}: label {label} is outside 0..{num_classes - 1}")
        inst = instances.get(vid, {})
        items.append(Item(
            video_id=vid, split=entry["subset"], label=label, path=videos.get(vid),
            signer_id=inst.get("signer_id"), bbox=_bbox(inst.get("bbox"), where),
            frame_range=_frame_range(start, end, where),
        ))
    notes = []
    absent = sum(vid not in instances for vid in nslt) if entries is not None else 0
    if absent:
        notes.append(f"{absent} ids of {nslt_path.name} are not in {WLASL_JSON} (no signer box for them)")
    layout = "wlasl+nslt" if entries is not None else "nslt"
    return Catalog(tuple(classes), _unique(items, str(nslt_path)), layout, tuple(files), tuple(notes))


# ----------------------------------------------------------------------------------------- manifest


def _manifest_rows(path: Path) -> list[tuple[str, dict]]:
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise SourceError(f"{path}: empty CSV (expected a header line path,label,split,...)")
            return [(f"{path}: line {n}", row) for n, row in enumerate(reader, 2)]
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SourceError(f"{path}: line {n} is not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise SourceError(f"{path}: line {n} must be a JSON object, got {type(row).__name__}")
        rows.append((f"{path}: line {n}", row))
    return rows


def from_manifest(path: Path) -> Catalog:
    """Catalog of a CSV / JSON Lines manifest. Relative paths are relative to the manifest's folder.

    Labels that are all non-negative integers are class indices (glosses "0", "1", ...); otherwise they
    are class names, indexed in sorted order.
    """
    if path.suffix.lower() not in (".csv", ".jsonl", ".ndjson"):
        raise SourceError(f"{path}: a manifest must be .csv or .jsonl, got {path.suffix!r}")
    rows = _manifest_rows(path)
    if not rows:
        raise SourceError(f"{path}: the manifest lists no videos")
    for where, row in rows:
        for column in ("path", "label", "split"):
            if row.get(column) in (None, ""):
                raise SourceError(f"{where}: missing {column!r} (columns: path, label, split[, start, end, bbox])")
    raw = [str(row["label"]).strip() for _, row in rows]
    if all(s.isdigit() for s in raw):
        classes = [str(i) for i in range(max(int(s) for s in raw) + 1)]
        label_of = {s: int(s) for s in raw}
    else:
        classes = sorted(set(raw))
        label_of = {name: i for i, name in enumerate(classes)}
    items = []
    for (where, row), label in zip(rows, raw):
        video = Path(row["path"])
        video = video if video.is_absolute() else path.parent / video
        signer = row.get("signer_id")
        items.append(Item(
            video_id=str(row.get("video_id") or video.stem),
            split=_check_split(row["split"], where),
            label=label_of[label],
            path=str(video) if video.is_file() else None,
            signer_id=int(signer) if signer not in (None, "") else None,
            bbox=_bbox(row.get("bbox"), where),
            frame_range=_frame_range(row.get("start", row.get("frame_start")),
                                     row.get("end", row.get("frame_end")), where),
        ))
    return Catalog(tuple(classes), _unique(items, str(path)), "manifest", (str(path),))


def load_catalog(source: Path, subset: str = "all", split_file: Path | None = None) -> Catalog:
    """Detect the kind of source and read it. Raises SourceError with a one-line reason."""
    if not source.exists():
        raise SourceError(f"SOURCE {str(source)!r} does not exist")
    if source.is_file():
        return from_manifest(source)
    if split_file is not None and not split_file.is_file():
        raise SourceError(f"split file {str(split_file)!r} does not exist")
    return from_wlasl(source, subset, split_file)
