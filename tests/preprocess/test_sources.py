"""sources.py: WLASL json, nslt (the real split files), manifests, and every metadata error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, REFERENCE, wlasl_json
from wlasl_shards.preprocess.sources import SourceError, from_manifest, index_videos, load_catalog, read_class_list


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_wlasl_subset_keeps_the_first_glosses(tmp_path):
    wlasl_json(tmp_path, {
        "book": [{"video_id": "00001", "bbox": [1, 2, 30, 40], "frame_start": 5, "frame_end": 20}],
        "drink": [{"video_id": "00002", "split": "val"}, {"video_id": "00003", "split": "test"}],
        "go": [{"video_id": "00004"}],
    })
    _touch(tmp_path / "videos" / "00001.mp4")
    _touch(tmp_path / "videos" / "drink" / "00002.mkv")  # per-gloss folder, other container
    cat = load_catalog(tmp_path, "all")
    assert cat.layout == "wlasl" and cat.classes == ("book", "drink", "go")
    by_id = {it.video_id: it for it in cat.items}
    assert by_id["00001"].bbox == (1.0, 2.0, 30.0, 40.0) and by_id["00001"].frame_range == (5, 20)
    assert by_id["00002"].path.endswith("drink/00002.mkv") and by_id["00002"].split == "val"
    assert by_id["00003"].path is None and by_id["00004"].label == 2
    # WLASL-N = the first N glosses; asking for more than there are keeps them all.
    wlasl_json(tmp_path, {f"g{i}": [{"video_id": f"{i:05d}"}] for i in range(150)})
    assert len(load_catalog(tmp_path, "100").classes) == 100
    assert {it.label for it in load_catalog(tmp_path, "100").items} == set(range(100))
    assert len(load_catalog(tmp_path, "300").classes) == 150


def test_fixture_nslt_decides_membership_split_and_label(tmp_path):
    root = tmp_path
    for name in ("nslt_4.json", "wlasl_class_list.txt"):
        (root / name).write_text((FIXTURES / name).read_text())
    nslt = json.loads((FIXTURES / "nslt_4.json").read_text())
    vid = next(iter(nslt))
    _touch(root / "videos" / f"{vid}.mp4")
    cat = load_catalog(root, "all")
    assert cat.layout == "nslt" and len(cat.classes) == 4
    assert len(cat.items) == len(nslt)
    for it in cat.items:
        assert (it.split, it.label) == (nslt[it.video_id]["subset"], nslt[it.video_id]["action"][0])
        assert it.frame_range == tuple(nslt[it.video_id]["action"][1:])
    assert [it.video_id for it in cat.items if it.path] == [vid]


@pytest.mark.parametrize("n, entries", [(100, 2038), (300, 5118), (1000, 13174), (2000, 21095)])
def test_real_nslt_split_files(tmp_path, n, entries):
    ref = REFERENCE / "wlasl"
    if not ref.is_dir():
        pytest.skip("../shared/reference is not beside this checkout")
    for name in (f"nslt_{n}.json", "wlasl_class_list.txt"):
        (tmp_path / name).write_text((ref / name).read_text())
    nslt = json.loads((ref / f"nslt_{n}.json").read_text())
    ids = sorted(nslt)[:3]
    for vid in ids:
        _touch(tmp_path / "videos" / f"{vid}.mp4")
    cat = load_catalog(tmp_path, str(n))
    assert len(cat.items) == entries and len(cat.classes) == n
    assert cat.classes[:3] == ("book", "drink", "computer")
    assert {it.label for it in cat.items} <= set(range(n))
    assert {it.split for it in cat.items} == {"train", "val", "test"}
    assert sorted(it.video_id for it in cat.items if it.path) == ids
    # WLASL_v0.3.json beside it contributes boxes; ids it lacks are reported, not errors.
    wlasl_json(tmp_path, {"book": [{"video_id": ids[0], "bbox": [1, 1, 9, 9]}]})
    cat = load_catalog(tmp_path, str(n))
    assert cat.layout == "wlasl+nslt"
    assert {it.video_id: it.bbox for it in cat.items}[ids[0]] == (1.0, 1.0, 9.0, 9.0)
    assert f"{entries - 1} ids" in cat.notes[0]


def test_manifest_csv_and_jsonl(tmp_path):
    _touch(tmp_path / "clips" / "a.mp4")
    _touch(tmp_path / "clips" / "b.mp4")
    (tmp_path / "m.csv").write_text(
        "path,label,split,start,end,bbox\n"
        "clips/a.mp4,hello,train,3,40,10 20 110 120\n"
        "clips/b.mp4,bye,val,,,\n"
        "clips/c.mp4,hello,test,,,\n")
    cat = load_catalog(tmp_path / "m.csv")
    assert cat.layout == "manifest" and cat.classes == ("bye", "hello")
    a, b, c = cat.items
    assert (a.video_id, a.label, a.frame_range, a.bbox) == ("a", 1, (3, 40), (10.0, 20.0, 110.0, 120.0))
    assert (b.label, b.split, b.frame_range, b.bbox) == (0, "val", None, None)
    assert c.path is None
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"path": "clips/a.mp4", "label": 2, "split": "train", "bbox": [1, 2, 3, 4]}) + "\n"
        + json.dumps({"path": str(tmp_path / "clips/b.mp4"), "label": 0, "split": "test",
                      "video_id": "bee", "signer_id": 7}) + "\n")
    cat = from_manifest(tmp_path / "m.jsonl")
    assert cat.classes == ("0", "1", "2")
    assert [(it.video_id, it.label, it.signer_id) for it in cat.items] == [("a", 2, None), ("bee", 0, 7)]


@pytest.mark.parametrize("content, message", [
    ("[{\"gloss\": \"a\", ", "not valid JSON"),
    ("{\"gloss\": \"a\"}", "expected a list"),
    ("[{\"gloss\": \"a\", \"instances\": [{\"split\": \"train\"}]}]", "has no video_id"),
    ("[{\"gloss\": \"a\", \"instances\": [{\"video_id\": \"1\", \"split\": \"dev\"}]}]", "split must be one of"),
    ("[{\"gloss\": \"a\", \"instances\": [{\"video_id\": \"1\", \"split\": \"train\", \"bbox\": [1, 2]}]}]",
     "bbox must be 4 numbers"),
    ("[{\"gloss\": \"a\", \"instances\": [{\"video_id\": \"1\", \"split\": \"train\"}, "
     "{\"video_id\": \"1\", \"split\": \"val\"}]}]", "listed twice"),
])
def test_bad_wlasl_json_names_the_problem(tmp_path, content, message):
    (tmp_path / "WLASL_v0.3.json").write_text(content)
    with pytest.raises(SourceError, match=message) as e:
        load_catalog(tmp_path, "all")
    assert "WLASL_v0.3.json" in str(e.value)


def test_other_source_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        load_catalog(tmp_path / "nope")
    with pytest.raises(SourceError, match="no WLASL_v0.3.json, nslt"):
        load_catalog(tmp_path, "all")
    (tmp_path / "nslt_2.json").write_text(json.dumps({"1": {"subset": "train", "action": [5, 1, 9]}}))
    (tmp_path / "wlasl_class_list.txt").write_text("0\ta\n1\tb\n")
    with pytest.raises(SourceError, match="label 5 is outside 0..1"):
        load_catalog(tmp_path, "all", tmp_path / "nslt_2.json")
    (tmp_path / "nslt_2.json").write_text(json.dumps({"1": {"subset": "train", "action": [1]}}))
    with pytest.raises(SourceError, match="needs \"action\""):
        load_catalog(tmp_path, "all", tmp_path / "nslt_2.json")
    (tmp_path / "bad.csv").write_text("path,label\nx.mp4,a\n")
    with pytest.raises(SourceError, match="line 2: missing 'split'"):
        load_catalog(tmp_path / "bad.csv")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(SourceError, match="must be .csv or .jsonl"):
        load_catalog(tmp_path / "m.txt")
    (tmp_path / "wlasl_class_list.txt").write_text("0\ta\n2\tb\n")
    with pytest.raises(SourceError, match="line 2 must be '1<TAB>gloss'"):
        read_class_list(tmp_path / "wlasl_class_list.txt")


def test_index_videos_walks_once_and_prefers_sorted_first(tmp_path):
    _touch(tmp_path / "b" / "00001.webm")
    _touch(tmp_path / "a" / "00001.mp4")
    _touch(tmp_path / "a" / "notes.txt")
    _touch(tmp_path / "00002.MOV")
    found, copies = index_videos(tmp_path)
    assert set(found) == {"00001", "00002"}
    assert found["00001"].endswith("a/00001.mp4")
    assert copies == {"00001": [str(tmp_path / "a" / "00001.mp4"), str(tmp_path / "b" / "00001.webm")]}
    assert index_videos(tmp_path / "absent") == ({}, {})


def test_duplicate_video_files_are_reported_in_every_wlasl_layout(tmp_path):
    wlasl_json(tmp_path, {"book": [{"video_id": "00001"}, {"video_id": "00002"}]})
    _touch(tmp_path / "videos" / "book" / "00001.mp4")
    _touch(tmp_path / "videos" / "drink" / "00001.mkv")  # same id in the wrong gloss folder
    _touch(tmp_path / "videos" / "00002.mp4")
    _touch(tmp_path / "videos" / "99999.mp4")  # not listed: its copies do not matter
    _touch(tmp_path / "videos" / "x" / "99999.mp4")
    cat = load_catalog(tmp_path, "all")
    assert cat.layout == "wlasl" and cat.problems == {"duplicate_video": ("00001",)}
    assert cat.problem_summary() == {"duplicate_video": {"count": 1, "ids": ["00001"]}}
    assert {it.video_id: it.path for it in cat.items}["00001"].endswith("book/00001.mp4")
    (note,) = cat.notes
    assert note.startswith("duplicate_video (1 video): ") and "book/00001.mp4" in note and "drink/00001.mkv" in note


@pytest.mark.parametrize("name", ["WLASL_v0.3.json", "nslt_100.json", "wlasl_class_list.txt", "m.csv", "m.jsonl"])
def test_non_utf8_metadata_names_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b'[{"gloss": "caf\xe9"}]\n')  # Latin-1, not UTF-8
    if name == "wlasl_class_list.txt":
        with pytest.raises(SourceError, match=f"^{path}: not UTF-8 text .*line 1"):
            read_class_list(path)
        return
    with pytest.raises(SourceError, match=f"^{path}: not UTF-8 text"):
        load_catalog(path if name.startswith("m.") else tmp_path, "100")
