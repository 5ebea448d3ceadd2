"""Dataset sources -> a catalog of items (one per video) to build.

Four kinds of source, detected from what SOURCE holds:
- WLASL: `WLASL_v0.3.json` + `videos/` (the common Kaggle copy); `--subset N` keeps the first N glosses.
- seed layout: `WLASL_v0.3.json` + `splits/WLASL<N>_{train,val,test}.json` + `videos/`; the three split
  files of the chosen subset decide which videos are built and in which split, WLASL_v0.3.json gives
  labels (the gloss's index in WLASL order), signer boxes, signer ids and frame ranges.
- nslt: `nslt_<N>.json` (+ `wlasl_class_list.txt`), found beside it for the chosen subset or named with
  `split_file`; it decides which videos are built, their split and label. WLASL_v0.3.json, when present,
  still contributes signer boxes and signer ids.
- manifest: a CSV or JSON Lines file with `path,label,split[,start,end,bbox,video_id,signer_id]`.

What decides the splits, first match wins: an explicit `split_file` (nslt), then `splits/WLASL<N>_*.json`
(an `nslt_<N>.json` beside them is then ignored, with a note), then `nslt_<N>.json`, then the `split`
fields of WLASL_v0.3.json. With `--subset all`, N is the number of glosses (2000 for the real dataset).
Videos are found by id anywhere below `videos/` (flat or per-gloss folders), in one walk.

Every problem with the metadata itself raises SourceError (the CLI turns it into a one-line message and
exit status 2); videos that are listed but absent are items with `path=None`, counted, not errors.
Disagreements about single videos (see PROBLEMS) are not errors either: they are resolved as PROBLEMS
says, listed by id in Catalog.problems and described in Catalog.notes, never resolved silently.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from wlasl_shards.shards import SPLITS

log = logging.getLogger(__name__)

WLASL_JSON = "WLASL_v0.3.json"
CLASS_LIST = "wlasl_class_list.txt"
VIDEO_DIR = "videos"
SPLIT_DIR = "splits"  # seed layout: splits/WLASL<N>_<split>.json
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".avi")
SUBSETS = ("100", "300", "1000", "2000", "all")
PROBLEM_IDS_LOGGED = 10  # ids named per problem kind in a warning; the rest are counted
PROBLEM_IDS_STORED = 50  # ids kept per problem kind in dataset.json

# Disagreements about single videos: kind -> what happened to a video and what is done about it.
# A video excluded for several reasons is reported under the first kind here that excludes it.
PROBLEMS = {
    "split_conflict": "listed in more than one split file; built in none of those splits, so that no test "
                      "video can leak into train",
    "unknown_id": "listed in a split file but not in WLASL_v0.3.json; not built",
    "outside_subset": "listed in a split file, but its gloss in WLASL_v0.3.json is not in the subset; not built",
    "listed_twice": "listed twice in one split file; the first entry is used",
    "label_mismatch": "label or gloss in a split file disagrees with WLASL_v0.3.json; WLASL_v0.3.json's "
                      "label is used",
    "subset_mismatch": "its own split/subset field disagrees with the split file it is in; the file decides",
    "split_overridden": "in another split in splits/ than in WLASL_v0.3.json; splits/ decides",
    "duplicate_video": "several files below videos/ have this id; the first in sorted path order is used",
}


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
    layout: str  # "wlasl", "wlasl+splits", "nslt", "wlasl+nslt" or "manifest"
    files: tuple[str, ...]  # the metadata files read
    notes: tuple[str, ...] = field(default=())  # things worth telling the user, e.g. dropped entries
    splits_from: tuple[str, ...] = field(default=())  # the files that decided membership and splits
    # kind (a key of PROBLEMS, in that order) -> the video ids concerned; only kinds that occurred
    problems: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def problem_summary(self, limit: int = PROBLEM_IDS_STORED) -> dict[str, dict]:
        """{kind: {"count": n, "ids": the first `limit` ids}} for dataset.json; {} when all agreed."""
        return {kind: {"count": len(ids), "ids": list(ids[:limit])} for kind, ids in self.problems.items()}


# ------------------------------------------------------------------------------------------ helpers


def _read_text(path: Path) -> str:
    """A metadata file's text; SourceError naming the file when it cannot be read or is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise SourceError(f"{path}: not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at offset {e.start}, "
                          f"line {line}); save it as UTF-8") from None


def _read_json(path: Path) -> Any:
    text = _read_text(path)
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


def index_videos(video_dir: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(video id (file stem) -> path, id -> all its paths for ids with several files), in one walk.

    Flat (`videos/<id>.mp4`) and per-gloss (`videos/<gloss>/<id>.mp4`) trees both work, so a video is
    found by its id wherever it is, without a search per video. When an id has several files, the first
    in sorted path order wins, so the choice is deterministic; the second dict lets callers report it.
    """
    found: dict[str, list[str]] = {}
    if not video_dir.is_dir():
        return {}, {}
    for dirpath, dirnames, filenames in os.walk(video_dir):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTS:
                found.setdefault(stem, []).append(os.path.join(dirpath, name))
    return ({vid: paths[0] for vid, paths in found.items()},
            {vid: paths for vid, paths in found.items() if len(paths) > 1})


class _Problems:
    """Collects (kind, video id, detail) while a source is read; becomes Catalog.problems and notes."""

    def __init__(self) -> None:
        self.ids: dict[str, list[str]] = {}
        self.details: dict[tuple[str, str], str] = {}

    def add(self, kind: str, vid: str, detail: str = "") -> None:
        self.ids.setdefault(kind, []).append(vid)
        if detail:
            self.details[(kind, vid)] = detail

    def by_kind(self) -> dict[str, tuple[str, ...]]:
        return {kind: tuple(self.ids[kind]) for kind in PROBLEMS if kind in self.ids}

    def notes(self) -> list[str]:
        """One warning per kind, naming the first ids (with what disagreed) and counting the rest."""
        notes = []
        for kind, ids in self.by_kind().items():
            shown = [f"{vid} ({self.details[(kind, vid)]})" if (kind, vid) in self.details else vid
                     for vid in ids[:PROBLEM_IDS_LOGGED]]
            more = f" and {len(ids) - len(shown)} more" if len(ids) > len(shown) else ""
            notes.append(f"{kind} ({len(ids)} video{'s' if len(ids) != 1 else ''}): {PROBLEMS[kind]}: "
                         f"{', '.join(shown)}{more}")
        return notes


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
    for n, line in enumerate(_read_text(path).splitlines(), 1):
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


# ------------------------------------------------------------------------------------- split files


@dataclass(frozen=True)
class SplitEntry:
    """One entry of a splits/WLASL<N>_<split>.json file, whatever its shape."""

    video_id: str
    label: int | str | None  # the file's label (a class index or a gloss), None when it gives none
    gloss: str | None  # the file's gloss, None when it gives none
    split: str | None  # the entry's own split/subset field, None when it has none


def split_file_paths(root: Path, n: int) -> dict[str, Path]:
    """{split: root/splits/WLASL<n>_<split>.json} for the three splits, whether they exist or not."""
    return {split: root / SPLIT_DIR / f"WLASL{n}_{split}.json" for split in SPLITS}


def _entry_id(value: Any, where: str) -> str:
    # Integers are accepted as written: a file of [1, 2] names videos "1" and "2", and if WLASL calls
    # them "00001" they are reported as unknown ids rather than guessed at.
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise SourceError(f"{where}: a video id must be a string or an integer, got {value!r}")
    return str(value)


def _parse_split_entry(vid: Any, fields: dict, label: Any, where: str) -> SplitEntry:
    vid = _entry_id(vid, where)
    if label is not None and (isinstance(label, bool) or not isinstance(label, (int, str))):
        raise SourceError(f"{where}: video {vid}: label must be a class index or a gloss, got {label!r}")
    gloss = fields.get("gloss")
    if gloss is not None and not isinstance(gloss, str):
        raise SourceError(f"{where}: video {vid}: gloss must be a string, got {gloss!r}")
    split = fields.get("split", fields.get("subset"))
    return SplitEntry(vid, label, gloss, None if split is None else str(split))


def read_split_file(path: Path) -> list[SplitEntry]:
    """Entries of one split file, in file order. Three shapes are accepted, as found in the wild:
    - a list of video ids: `["00001", "00002"]`
    - a list of objects: `[{"video_id": "00001", "gloss": "book", "label": 0}]` (gloss, label optional)
    - nslt style: `{"00001": {"subset": "train", "action": [label, frame_start, frame_end]}}`
    """
    data = _read_json(path)
    entries = []
    if isinstance(data, dict):
        for vid, fields in data.items():
            where = f"{path}: entry {vid!r}"
            if not isinstance(fields, dict):
                raise SourceError(f"{where} must be an object like {{\"subset\": ..., \"action\": [label, start, "
                                  f"end]}}, got {type(fields).__name__}")
            action = fields.get("action")
            if action is not None and (not isinstance(action, list) or not action):
                raise SourceError(f"{where}: \"action\" must be [label, frame_start, frame_end], got {action!r}")
            label = action[0] if action is not None else fields.get("label")
            entries.append(_parse_split_entry(vid, fields, label, where))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            where = f"{path}: entry {i}"
            if isinstance(value, dict):
                if "video_id" not in value:
                    raise SourceError(f"{where} has no \"video_id\" (keys: {', '.join(sorted(value))})")
                entries.append(_parse_split_entry(value["video_id"], value, value.get("label"), where))
            else:
                entries.append(SplitEntry(_entry_id(value, where), None, None, None))
    else:
        raise SourceError(f"{path}: expected a list of video ids, a list of {{\"video_id\": ...}} objects or an "
                          f"nslt-style {{video_id: {{subset, action}}}} object, got {type(data).__name__}")
    return entries


def _from_split_files(entries: list[dict], n: int | None, paths: dict[str, Path], videos: dict[str, str],
                      wlasl_path: Path, problems: _Problems) -> tuple[list[str], list[Item], list[str]]:
    """(classes, items, notes) of the seed layout: the split files decide membership and split,
    WLASL_v0.3.json everything else. Disagreements go to `problems`, resolved as PROBLEMS says."""
    classes = [e["gloss"] for e in entries][:n]
    known: dict[str, tuple[int, dict]] = {}
    for label, entry in enumerate(entries):
        for inst in entry["instances"]:
            vid = str(inst["video_id"])
            if vid in known:
                raise SourceError(f"{wlasl_path}: video id {vid!r} is listed twice")
            known[vid] = (label, inst)

    placed: dict[str, tuple[str, SplitEntry]] = {}  # id -> (split, entry) of its first file
    conflicts: dict[str, list[str]] = {}  # id -> names of all the split files listing it
    for split, path in paths.items():
        here: set[str] = set()
        for entry in read_split_file(path):
            vid = entry.video_id
            if vid in here:
                problems.add("listed_twice", vid, path.name)
                continue
            here.add(vid)
            if vid in placed:
                conflicts.setdefault(vid, [paths[placed[vid][0]].name]).append(path.name)
            else:
                placed[vid] = (split, entry)

    items = []
    for vid, (split, entry) in placed.items():
        path = paths[split]
        if vid in conflicts:
            problems.add("split_conflict", vid, " and ".join(conflicts[vid]))
            continue
        if vid not in known:
            problems.add("unknown_id", vid, path.name)
            continue
        label, inst = known[vid]
        gloss = entries[label]["gloss"]
        if label >= len(classes):
            problems.add("outside_subset", vid, f"{path.name}; WLASL_v0.3.json: {gloss!r}, class {label}")
            continue
        if entry.split is not None and entry.split != split:
            problems.add("subset_mismatch", vid, f"{path.name} says {entry.split!r}")
        # A file's label is a class index or a gloss name; either way WLASL's order decides the label.
        said = []
        if entry.label is not None and entry.label != (label if isinstance(entry.label, int) else gloss):
            said.append(f"label {entry.label!r}")
        if entry.gloss is not None and entry.gloss != gloss:
            said.append(f"gloss {entry.gloss!r}")
        if said:
            problems.add("label_mismatch", vid,
                         f"{path.name}: {', '.join(said)}; WLASL_v0.3.json: {gloss!r}, class {label}")
        if inst.get("split") != split:
            problems.add("split_overridden", vid, f"{path.name}; WLASL_v0.3.json: {inst.get('split')!r}")
        where = f"{wlasl_path}: video {vid}"
        items.append(Item(
            video_id=vid, split=split, label=label, path=videos.get(vid),
            signer_id=inst.get("signer_id"), bbox=_bbox(inst.get("bbox"), where),
            frame_range=_frame_range(inst.get("frame_start"), inst.get("frame_end"), where),
        ))
    unlisted = sum(str(inst["video_id"]) not in placed
                   for entry in entries[: len(classes)] for inst in entry["instances"])
    notes = []
    if unlisted:
        notes.append(f"{unlisted} video{'s' if unlisted != 1 else ''} of the subset's glosses in {WLASL_JSON} "
                     f"in none of {', '.join(p.name for p in paths.values())}: not built")
    return classes, items, notes


# ------------------------------------------------------------------------- WLASL root: what decides


def from_wlasl(root: Path, subset: str, split_file: Path | None = None) -> Catalog:
    """Catalog of a WLASL-layout root (WLASL_v0.3.json, splits/, nslt_<N>.json, videos/).

    What decides membership and splits, first match wins: `split_file` (nslt), splits/WLASL<N>_*.json,
    nslt_<N>.json beside WLASL_v0.3.json, WLASL_v0.3.json's split fields. N is the subset, or for
    "all" the number of glosses.
    """
    if subset not in SUBSETS:
        raise SourceError(f"--subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
    wlasl_path = root / WLASL_JSON
    entries = read_wlasl_json(wlasl_path) if wlasl_path.is_file() else None
    class_path = root / CLASS_LIST
    glosses = read_class_list(class_path) if class_path.is_file() else None
    if glosses is None and entries is not None:
        glosses = [e["gloss"] for e in entries]
    n = None if subset == "all" else int(subset)
    n_files = n if n is not None else len(glosses or [])  # the N in nslt_<N>.json and WLASL<N>_*.json
    notes: list[str] = []

    split_paths = split_file_paths(root, n_files)
    have = [p for p in split_paths.values() if p.is_file()]
    if split_file is not None:
        if have:
            notes.append(f"{split_file.name} (--split-file) decides the splits; "
                         f"{', '.join(f'{SPLIT_DIR}/{p.name}' for p in have)} ignored")
        have = []
    elif have and len(have) < len(split_paths):
        missing = [f"{SPLIT_DIR}/{p.name}" for p in split_paths.values() if not p.is_file()]
        raise SourceError(f"{root / SPLIT_DIR}: has {', '.join(p.name for p in have)} but not "
                          f"{', '.join(missing)}; WLASL{n_files}'s three split files go together")
    elif have and entries is None:
        raise SourceError(f"{root / SPLIT_DIR}: split files need {WLASL_JSON} beside {SPLIT_DIR}/ "
                          "(labels, boxes and frame ranges come from it)")
    elif not have and (root / SPLIT_DIR).is_dir():
        others = sorted({m[1] for f in (root / SPLIT_DIR).iterdir()
                         if (m := re.fullmatch(r"(WLASL\d+)_(train|val|test)\.json", f.name))})
        notes.append(f"{SPLIT_DIR}/ has no WLASL{n_files}_*.json (has: {', '.join(others) or 'none'}); "
                     "splits come from the other metadata")

    nslt_path = split_file
    if nslt_path is None:
        guess = root / f"nslt_{n_files}.json"
        nslt_path = guess if guess.is_file() and not have else None
        if guess.is_file() and have:
            notes.append(f"{guess.name} ignored: {SPLIT_DIR}/ decides the splits "
                         f"(pass --split-file {guess.name} to use it instead)")
    if entries is None and nslt_path is None:
        raise SourceError(f"{root}: no {WLASL_JSON}, nslt_<N>.json or manifest found")
    videos, copies = index_videos(root / VIDEO_DIR)
    problems = _Problems()

    if have:
        classes, items, more = _from_split_files(entries, n, split_paths, videos, wlasl_path, problems)
        catalog = Catalog(tuple(classes), tuple(items), "wlasl+splits", (str(wlasl_path), *map(str, have)),
                          tuple(more), splits_from=tuple(map(str, have)))
    elif nslt_path is None:
        classes = [e["gloss"] for e in entries][:n]
        items = [
            _instance_item(inst, label, videos, str(wlasl_path))
            for label, entry in enumerate(entries[: len(classes)])
            for inst in entry["instances"]
        ]
        files = tuple(str(p) for p in (wlasl_path, class_path) if p.is_file())
        catalog = Catalog(tuple(classes), _unique(items, str(wlasl_path)), "wlasl", files,
                          splits_from=(str(wlasl_path),))
    else:
        catalog = _from_nslt(nslt_path, n, glosses, entries, videos, [wlasl_path, class_path])

    for item in catalog.items:
        if item.video_id in copies:
            problems.add("duplicate_video", item.video_id, ", ".join(copies[item.video_id]))
    return replace(catalog, notes=(*notes, *catalog.notes, *problems.notes()), problems=problems.by_kind())


def _from_nslt(nslt_path: Path, n: int | None, glosses: list[str] | None, entries: list[dict] | None,
               videos: dict[str, str], beside: list[Path]) -> Catalog:
    """Catalog when an nslt file decides membership, split and label."""
    nslt = read_nslt(nslt_path)
    files = [str(p) for p in beside if p.is_file()] + [str(nslt_path)]
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
    return Catalog(tuple(classes), _unique(items, str(nslt_path)), layout, tuple(files), tuple(notes),
                   splits_from=(str(nslt_path),))


# ----------------------------------------------------------------------------------------- manifest


def _manifest_rows(path: Path) -> list[tuple[str, dict]]:
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
        if not reader.fieldnames:
            raise SourceError(f"{path}: empty CSV (expected a header line path,label,split,...)")
        return [(f"{path}: line {n}", row) for n, row in enumerate(reader, 2)]
    rows = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
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
    return Catalog(tuple(classes), _unique(items, str(path)), "manifest", (str(path),), splits_from=(str(path),))


def load_catalog(source: Path, subset: str = "all", split_file: Path | None = None) -> Catalog:
    """Detect the kind of source and read it. Raises SourceError with a one-line reason."""
    if not source.exists():
        raise SourceError(f"SOURCE {str(source)!r} does not exist")
    if source.is_file():
        catalog = from_manifest(source)
    elif split_file is not None and not split_file.is_file():
        raise SourceError(f"split file {str(split_file)!r} does not exist")
    else:
        catalog = from_wlasl(source, subset, split_file)
    # Said here rather than by each caller, so the detected layout is always on record.
    log.info("source %s: layout %s, splits from %s", source, catalog.layout, ", ".join(catalog.splits_from))
    return catalog
