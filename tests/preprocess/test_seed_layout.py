"""The seed's layout: WLASL_v0.3.json + videos/<gloss>/<id>.<ext> + splits/WLASL<N>_<split>.json.

Catalog tests use zero-byte placeholder videos (building a catalog decodes nothing); the last test builds
real tiny videos through the CLI.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.conftest import wlasl_json, write_quadrants
from wlasl_shards import shards
from wlasl_shards.cli import main
from wlasl_shards.preprocess.sources import PROBLEMS, SourceError, load_catalog, read_split_file

# gloss -> [(video id, split in WLASL_v0.3.json)]
GLOSSES = {
    "book": [("00001", "train"), ("00002", "val"), ("00003", "test")],
    "drink": [("00004", "train"), ("00005", "train"), ("00006", "test")],
    "computer": [("00007", "train")],
}
LABEL = {vid: label for label, insts in enumerate(GLOSSES.values()) for vid, _ in insts}
GLOSS = {vid: gloss for gloss, insts in GLOSSES.items() for vid, _ in insts}
# what splits/ says: 00005 is train in WLASL_v0.3.json but val here
SPLITS = {"train": ["00001", "00004", "00007"], "val": ["00002", "00005"], "test": ["00003", "00006"]}


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_wlasl(root: Path, glosses: dict[str, list[tuple[str, str]]] = GLOSSES) -> None:
    wlasl_json(root, {g: [{"video_id": v, "split": s, "bbox": [1, 2, 30, 40], "frame_start": 3, "frame_end": 9}
                          for v, s in insts] for g, insts in glosses.items()})


def shaped(shape: str, split: str, ids: list[str]) -> Any:
    """One split file's content in one of the three shapes found in the wild."""
    if shape == "ids":
        return ids
    if shape == "objects":
        return [{"video_id": v, "gloss": GLOSS[v], "label": LABEL[v]} for v in ids]
    return {v: {"subset": split, "action": [LABEL[v], 1, -1]} for v in ids}


def write_splits(root: Path, n: int | str, content: dict[str, Any]) -> list[Path]:
    paths = []
    for split, data in content.items():
        path = root / "splits" / f"WLASL{n}_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        paths.append(path)
    return paths


def write_class_list(root: Path) -> None:
    """GLOSSES then g3..g99: nslt_100.json needs 100 gloss names."""
    glosses = [*GLOSSES, *(f"g{i}" for i in range(3, 100))]
    (root / "wlasl_class_list.txt").write_text("".join(f"{i}\t{g}\n" for i, g in enumerate(glosses)))


def seed_tree(root: Path, shape: str = "ids", n: int | str = 100) -> Path:
    write_wlasl(root)
    write_splits(root, n, {split: shaped(shape, split, ids) for split, ids in SPLITS.items()})
    for gloss, insts in GLOSSES.items():
        for vid, _ in insts:
            _touch(root / "videos" / gloss / f"{vid}.mp4")
    return root


@pytest.mark.parametrize("shape", ["ids", "objects", "nslt"])
def test_split_files_of_each_shape_decide_membership_and_split(tmp_path, shape):
    seed_tree(tmp_path, shape)
    assert read_split_file(tmp_path / "splits" / "WLASL100_val.json")[1].video_id == "00005"
    cat = load_catalog(tmp_path, "100")
    assert cat.layout == "wlasl+splits" and cat.classes == ("book", "drink", "computer")
    split_files = [str(tmp_path / "splits" / f"WLASL100_{s}.json") for s in ("train", "val", "test")]
    assert cat.splits_from == tuple(split_files)
    assert cat.files == (str(tmp_path / "WLASL_v0.3.json"), *split_files)
    got = {it.video_id: (it.split, it.label) for it in cat.items}
    assert got == {v: (s, LABEL[v]) for s, ids in SPLITS.items() for v in ids}
    # splits/ wins over WLASL_v0.3.json's split field, and says so
    assert got["00005"] == ("val", 1)
    assert cat.problems == {"split_overridden": ("00005",)}
    assert cat.notes == (f"split_overridden (1 video): {PROBLEMS['split_overridden']}: "
                         "00005 (WLASL100_val.json; WLASL_v0.3.json: 'train')",)
    # boxes, signers and frame ranges still come from WLASL_v0.3.json; videos from per-gloss folders
    for it in cat.items:
        assert (it.bbox, it.frame_range, it.signer_id) == ((1.0, 2.0, 30.0, 40.0), (3, 9), 1)
        assert it.path == str(tmp_path / "videos" / GLOSS[it.video_id] / f"{it.video_id}.mp4")


def test_videos_are_found_flat_or_per_gloss_in_every_container_with_one_walk(tmp_path, monkeypatch):
    write_wlasl(tmp_path)
    write_splits(tmp_path, 100, SPLITS)
    placed = {
        "00001": "videos/00001.mp4",
        "00002": "videos/book/00002.mkv",
        "00003": "videos/00003.webm",
        "00004": "videos/drink/00004.MOV",
        "00005": "videos/drink/deeper/00005.avi",
        "00006": "videos/drink/00006.txt",  # not a video: listed but absent
    }
    for rel in placed.values():
        _touch(tmp_path / rel)
    walks = []
    real_walk = os.walk

    def counting_walk(top, *args, **kwargs):
        walks.append(str(top))
        yield from real_walk(top, *args, **kwargs)

    monkeypatch.setattr(os, "walk", counting_walk)
    cat = load_catalog(tmp_path, "100")
    assert walks == [str(tmp_path / "videos")]
    paths = {it.video_id: it.path for it in cat.items}
    assert paths == {**{v: str(tmp_path / rel) for v, rel in placed.items() if v != "00006"},
                     "00006": None, "00007": None}


def test_each_problem_is_reported_by_id_counted_and_resolved_as_documented(tmp_path):
    # 101 glosses: g<i> has one video, id i + 1; WLASL100 = g0..g99, so 00101 (g100) is outside it.
    write_wlasl(tmp_path, {f"g{i}": [(f"{i + 1:05d}", "train")] for i in range(101)})
    write_splits(tmp_path, 100, {
        "train": [
            {"video_id": "00001", "label": 0, "gloss": "g0"},  # agrees
            {"video_id": "00002", "label": 5},  # label_mismatch (class index)
            {"video_id": "00003", "gloss": "g9"},  # label_mismatch (gloss)
            {"video_id": "00004", "label": "g3"},  # a gloss name as label that agrees
            {"video_id": "00005", "split": "test"},  # subset_mismatch: the file decides
            {"video_id": "00006"}, {"video_id": "00006"},  # listed_twice
            {"video_id": "00007"},  # also in test: split_conflict
            {"video_id": "77777"},  # unknown_id
            {"video_id": "00101"},  # outside_subset
        ],
        "val": ["00008", 99999],  # 00008: split_overridden (train in WLASL); an integer id, unknown
        "test": {"00007": {"subset": "test", "action": [6, 1, -1]}},
    })
    _touch(tmp_path / "videos" / "g0" / "00001.mp4")
    _touch(tmp_path / "videos" / "00001.mkv")  # duplicate_video
    cat = load_catalog(tmp_path, "100")
    assert cat.problems == {
        "split_conflict": ("00007",),
        "unknown_id": ("77777", "99999"),
        "outside_subset": ("00101",),
        "listed_twice": ("00006",),
        "label_mismatch": ("00002", "00003"),
        "subset_mismatch": ("00005",),
        "split_overridden": ("00008",),
        "duplicate_video": ("00001",),
    }
    assert list(cat.problems) == [k for k in PROBLEMS if k in cat.problems]  # a stable order
    summary = cat.problem_summary()
    assert {k: v["count"] for k, v in summary.items()} == {
        "split_conflict": 1, "unknown_id": 2, "outside_subset": 1, "listed_twice": 1, "label_mismatch": 2,
        "subset_mismatch": 1, "split_overridden": 1, "duplicate_video": 1}
    assert summary["unknown_id"]["ids"] == ["77777", "99999"]
    got = {it.video_id: (it.split, it.label) for it in cat.items}
    # excluded: the conflict (from both splits), the unknown ids and the one outside WLASL100
    assert got == {"00001": ("train", 0), "00002": ("train", 1), "00003": ("train", 2), "00004": ("train", 3),
                   "00005": ("train", 4), "00006": ("train", 5), "00008": ("val", 7)}
    assert cat.classes == tuple(f"g{i}" for i in range(100))
    notes = "\n".join(cat.notes)
    for kind, ids in cat.problems.items():
        assert f"{kind} ({len(ids)} video" in notes and all(v in notes for v in ids)
    assert "00002 (WLASL100_train.json: label 5; WLASL_v0.3.json: 'g1', class 1)" in notes
    assert "00003 (WLASL100_train.json: gloss 'g9'; WLASL_v0.3.json: 'g2', class 2)" in notes
    assert "00007 (WLASL100_train.json and WLASL100_test.json)" in notes
    # g8..g99 have videos (00009..00100) that no split file lists: counted, not built
    assert "92 videos of the subset's glosses in WLASL_v0.3.json in none of WLASL100_train.json" in notes


def test_long_problem_lists_are_bounded(tmp_path):
    write_wlasl(tmp_path, {"book": [("00001", "train")]})
    write_splits(tmp_path, 100, {"train": ["00001", *(f"9{i:04d}" for i in range(13))], "val": [], "test": []})
    cat = load_catalog(tmp_path, "100")
    (note,) = cat.notes
    assert note.startswith("unknown_id (13 videos): ") and note.endswith("90009 (WLASL100_train.json) and 3 more")
    assert all(f"9{i:04d} (WLASL100_train.json)" in note for i in range(10)) and "90010" not in note
    assert cat.problem_summary(limit=4)["unknown_id"] == {"count": 13, "ids": ["90000", "90001", "90002", "90003"]}
    assert cat.problem_summary()["unknown_id"]["count"] == 13


def test_precedence_split_file_then_splits_dir_then_nslt_then_wlasl(tmp_path):
    seed_tree(tmp_path)
    write_class_list(tmp_path)
    nslt = {"00001": {"subset": "test", "action": [0, 1, -1]}, "00004": {"subset": "val", "action": [1, 1, -1]}}
    (tmp_path / "nslt_100.json").write_text(json.dumps(nslt))
    # splits/ wins over an nslt_<N>.json beside it, which is then named as ignored
    cat = load_catalog(tmp_path, "100")
    assert cat.layout == "wlasl+splits" and len(cat.items) == 7
    assert str(tmp_path / "nslt_100.json") not in cat.files
    assert "nslt_100.json ignored: splits/ decides the splits (pass --split-file nslt_100.json" in cat.notes[0]
    # an explicit --split-file wins over splits/
    cat = load_catalog(tmp_path, "100", tmp_path / "nslt_100.json")
    assert cat.layout == "wlasl+nslt" and cat.splits_from == (str(tmp_path / "nslt_100.json"),)
    assert {it.video_id: it.split for it in cat.items} == {"00001": "test", "00004": "val"}
    assert cat.notes[0].startswith("nslt_100.json (--split-file) decides the splits; splits/WLASL100_train.json")
    # splits/ without files for this subset: nslt_<N>.json as before, then WLASL_v0.3.json's splits
    for path in (tmp_path / "splits").iterdir():
        path.rename(path.with_name(path.name.replace("WLASL100", "WLASL300")))
    cat = load_catalog(tmp_path, "100")
    assert cat.layout == "wlasl+nslt"
    assert cat.notes[0] == "splits/ has no WLASL100_*.json (has: WLASL300); splits come from the other metadata"
    (tmp_path / "nslt_100.json").unlink()
    cat = load_catalog(tmp_path, "100")
    assert cat.layout == "wlasl" and cat.splits_from == (str(tmp_path / "WLASL_v0.3.json"),)
    assert {it.video_id: it.split for it in cat.items}["00005"] == "train"
    # --subset 300 now finds them
    assert load_catalog(tmp_path, "300").layout == "wlasl+splits"


def test_subset_all_uses_the_gloss_count(tmp_path):
    seed_tree(tmp_path, n=3)  # 3 glosses: WLASL3_*.json
    cat = load_catalog(tmp_path, "all")
    assert cat.layout == "wlasl+splits" and cat.splits_from[0].endswith("splits/WLASL3_train.json")
    assert load_catalog(tmp_path, "100").layout == "wlasl"  # WLASL100_* are not there


def test_layout_and_split_files_are_logged(tmp_path, caplog):
    seed_tree(tmp_path)
    with caplog.at_level(logging.INFO, logger="wlasl_shards.preprocess.sources"):
        load_catalog(tmp_path, "100")
    assert f"source {tmp_path}: layout wlasl+splits, splits from {tmp_path}/splits/WLASL100_train.json, " \
           f"{tmp_path}/splits/WLASL100_val.json, {tmp_path}/splits/WLASL100_test.json" in caplog.messages


def test_missing_split_file_is_named(tmp_path):
    seed_tree(tmp_path)
    (tmp_path / "splits" / "WLASL100_val.json").unlink()
    with pytest.raises(SourceError, match=r"has WLASL100_train.json, WLASL100_test.json but not "
                                          r"splits/WLASL100_val.json; WLASL100's three split files go together"):
        load_catalog(tmp_path, "100")
    # an explicit --split-file does not need splits/ to be complete
    write_class_list(tmp_path)
    (tmp_path / "nslt_100.json").write_text(json.dumps({"00001": {"subset": "val", "action": [0, 1, -1]}}))
    cat = load_catalog(tmp_path, "100", tmp_path / "nslt_100.json")
    assert cat.layout == "wlasl+nslt" and [(it.video_id, it.split) for it in cat.items] == [("00001", "val")]


def test_split_files_need_wlasl_json(tmp_path):
    write_splits(tmp_path, 100, SPLITS)
    (tmp_path / "wlasl_class_list.txt").write_text("0\tbook\n")
    with pytest.raises(SourceError, match="split files need WLASL_v0.3.json beside splits/"):
        load_catalog(tmp_path, "100")


@pytest.mark.parametrize("content, message", [
    (3, "expected a list of video ids, a list of"),
    ([{"id": "00001"}], r"entry 0 has no \"video_id\" \(keys: id\)"),
    ([["00001"]], r"entry 0: a video id must be a string or an integer, got \['00001'\]"),
    ([1.5], "entry 0: a video id must be a string or an integer, got 1.5"),
    ([{"video_id": "00001", "label": 1.0}], "video 00001: label must be a class index or a gloss, got 1.0"),
    ([{"video_id": "00001", "label": True}], "video 00001: label must be a class index or a gloss, got True"),
    ([{"video_id": "00001", "gloss": 7}], "video 00001: gloss must be a string, got 7"),
    ({"00001": [0, 1, -1]}, r"entry '00001' must be an object like"),
    ({"00001": {"subset": "train", "action": 0}}, r"\"action\" must be \[label, frame_start, frame_end\]"),
])
def test_bad_split_files_name_the_file_and_entry(tmp_path, content, message):
    seed_tree(tmp_path)
    (tmp_path / "splits" / "WLASL100_train.json").write_text(json.dumps(content))
    with pytest.raises(SourceError, match=message) as e:
        load_catalog(tmp_path, "100")
    assert str(e.value).startswith(str(tmp_path / "splits" / "WLASL100_train.json"))


def test_build_a_seed_layout_end_to_end(tmp_path, caplog):
    src, out = tmp_path / "wlasl-processed", tmp_path / "shards"
    src.mkdir()
    write_wlasl(src, {"book": [("00001", "train"), ("00002", "val"), ("00003", "test")],
                      "drink": [("00004", "train"), ("00005", "test"), ("00006", "train")]})
    write_splits(src, 100, {
        "train": [{"video_id": "00001", "gloss": "book"}, {"video_id": "00002", "gloss": "book"},
                  {"video_id": "00004", "gloss": "book"}],  # 00002 was val; 00004 is drink's
        "val": {"00005": {"subset": "val", "action": [1, 1, -1]}},  # was test
        "test": ["00003", "99999"],  # 99999 is unknown; 00006 is in no split file
    })
    for _vid, rel in [("00001", "book/00001.mp4"), ("00002", "book/00002.mkv"), ("00003", "book/00003.mp4"),
                      ("00004", "drink/00004.mp4"), ("00005", "drink/00005.mp4"), ("00006", "drink/00006.mp4")]:
        write_quadrants(src / "videos" / rel, 48, 64, 12)
    caplog.set_level(logging.INFO)
    result = CliRunner().invoke(main, ["build", str(src), str(out), "--subset", "100", "--size", "32",
                                       "--crop", "center", "--workers", "1", "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    index = json.loads((out / "dataset.json").read_text())
    assert index["classes"] == ["book", "drink"]
    split_files = [f"splits/WLASL100_{s}.json" for s in ("train", "val", "test")]
    assert index["source"] == {
        "layout": "wlasl+splits",
        "files": ["WLASL_v0.3.json", *split_files],
        "splits_from": split_files,
        "problems": {"unknown_id": {"count": 1, "ids": ["99999"]},
                     "label_mismatch": {"count": 1, "ids": ["00004"]},
                     "split_overridden": {"count": 2, "ids": ["00002", "00005"]}},
    }
    assert {s: (v["samples"], v["videos_listed"]) for s, v in index["splits"].items()} == {
        "train": (3, 3), "val": (1, 1), "test": (1, 1)}
    assert index["totals"]["samples"] == 5 and index["failed"] == [] and index["missing"] == []
    built = {}
    for split, entry in index["splits"].items():
        for record in entry["shards"]:
            with open(out / record["name"], "rb") as f:
                for sample in shards.read_samples(f):
                    meta = json.loads(sample["json"])
                    built[meta["video_id"]] = (split, meta["split"], meta["label"], meta["gloss"], int(sample["cls"]))
    # splits/ decided the split (00002, 00005), WLASL_v0.3.json the label (00004 is drink's, whatever the file says)
    assert built == {"00001": ("train", "train", 0, "book", 0), "00002": ("train", "train", 0, "book", 0),
                     "00004": ("train", "train", 1, "drink", 1), "00005": ("val", "val", 1, "drink", 1),
                     "00003": ("test", "test", 0, "book", 0)}
    assert "layout wlasl+splits" in caplog.text and "splits/WLASL100_test.json" in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("label_mismatch (1 video)") and "00004" in w for w in warnings)
    assert any("1 video of the subset's glosses" in w for w in warnings)
