"""shards.py's tar writer and storage.sha256, on their own (build and features use them for every shard)."""

from __future__ import annotations

import hashlib
import tarfile

from wlasl_shards import shards, storage


def test_tar_writer_renames_only_when_closed_and_reports_size_and_sha(tmp_path):
    final, tmp = tmp_path / "a.tar", tmp_path / "a.tar.tmp"
    writer = shards.TarWriter(final)
    writer.add([("k.json", b"{}"), ("k.cls", b"3")])
    assert writer.offset == 2 * (512 + 512)  # a header and one padded data block per member
    assert tmp.exists() and not final.exists()  # a crash now leaves no file under the shard's name
    size, sha = writer.close()
    raw = final.read_bytes()
    assert not tmp.exists()
    assert (size, sha) == (len(raw), hashlib.sha256(raw).hexdigest()) == (len(raw), storage.sha256(final)[0])
    assert storage.sha256(final) == (sha, size)
    with tarfile.open(final) as tar:
        members = tar.getmembers()
        assert [(m.name, m.mtime, m.uid, m.mode) for m in members] == [("k.json", 0, 0, 0o644), ("k.cls", 0, 0, 0o644)]
        assert tar.extractfile(members[1]).read() == b"3"
    again = shards.TarWriter(tmp_path / "b.tar")
    again.add([("k.json", b"{}"), ("k.cls", b"3")])
    assert again.close() == (size, sha)  # fixed headers: the same members give the same bytes
    dropped = shards.TarWriter(tmp_path / "c.tar")
    dropped.add([("x.cls", b"1")])
    dropped.abandon()
    assert (tmp_path / "c.tar.tmp").exists() and not (tmp_path / "c.tar").exists()


# ------------------------------------------------------------------------ issue 12: hostile shards


def _sample(key: str, label: int, count: int = 2, side: int = 8) -> list[tuple[str, bytes]]:
    import numpy as np

    meta = {"video_id": key, "label": label, "frames": shards.frames_meta("npy", count, side, side, None)}
    return shards.sample_members(key, meta, shards.encode_npy(np.full((count, side, side, 3), label, np.uint8)))


def test_samples_sharing_a_key_are_read_as_two_never_merged_or_dropped(tmp_path):
    # p.q and p_q: one key in shards from before build refused them; adjacent, then the rest of the shard
    writer = shards.TarWriter(tmp_path / "s.tar")
    for label, key in enumerate(["p_q", "p_q", "r", "p_q"]):
        writer.add(_sample(key, label))
    writer.add([("stray", b"x")])  # a member with no extension: a sample of its own, refused by check_sample
    writer.close()
    with open(tmp_path / "s.tar", "rb") as f:
        got = list(shards.read_samples(f))
    assert [(s["__key__"], s.get("cls")) for s in got] == [("p_q", b"0"), ("p_q", b"1"), ("r", b"2"), ("p_q", b"3"),
                                                           ("stray", None)]
    assert [int(shards.decode_frames(s)[0, 0, 0, 0]) for s in got[:4]] == [0, 1, 2, 3]
    import pytest

    with pytest.raises(ValueError, match="missing member .json"):
        shards.check_sample(got[4])


def test_metadata_claims_are_bounded_before_anything_is_allocated():
    import json

    import numpy as np
    import pytest

    good = dict(_sample_dict(count=3))
    assert shards.check_sample(good)["frames"]["count"] == 3
    for change, message in [
        ({"count": 30_000_000, "height": 256, "width": 256}, "claims 30000000 frames of 256x256, more than"),
        ({"count": "3"}, "frame count '3' is not a positive integer"),
        ({"height": True}, "frame height True is not a positive integer"),
        ({"codec": "pickle"}, "unknown frame codec 'pickle'"),
    ]:
        meta = json.loads(good["json"])
        meta["frames"].update(change)
        with pytest.raises(ValueError, match=message):
            shards.check_sample({**good, "json": json.dumps(meta).encode()})
        with pytest.raises(ValueError, match=message):
            shards.decode_frames({**good, "json": json.dumps(meta).encode()})
    # an npy whose header claims more than its bytes: refused from the header alone
    lying = np.lib.format.header_data_from_array_1_0(np.zeros((3, 8, 8, 3), np.uint8))
    buf = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(buf, {**lying, "shape": (3, 8, 8, 3)})
    with pytest.raises(ValueError, match="npy frames: 0 data bytes"):
        shards.check_sample({**good, "npy": buf.getvalue()})
    # JPEG offsets that do not fit the blob
    meta = {"frames": shards.frames_meta("jpeg", 2, 8, 8, [0, 10, 5])}
    with pytest.raises(ValueError, match="frame offsets must be 2 \\+ 1 increasing"):
        shards.check_sample({"json": json.dumps(meta).encode(), "jpgs": b"x" * 10, "cls": b"0"})


def _sample_dict(count: int) -> dict:
    return {name.partition(".")[2]: data for name, data in _sample("k", 1, count)}


def test_a_malformed_index_names_the_file_and_the_field(tmp_path):
    import json

    import pytest

    def index(**change) -> dict:
        base = {"format": shards.FORMAT_NAME, "format_version": shards.FORMAT_VERSION, "classes": ["a"],
                "params": {}, "splits": {"train": {"samples": 1, "shards": [
                    {"name": "train/shard-000000.tar", "samples": 1, "frames": 3, "bytes": 10, "sha256": "ab"}]}}}
        return {**base, **change}

    shards.check_index(index(), "here")
    rec = {"name": "train/shard-000000.tar", "samples": 1, "bytes": 10}
    for bad, message in [
        (index(splits={"train": {"shards": "abc"}}), "field splits.train.shards must be a list of shard records, "
                                                     "got str 'abc'"),
        (index(splits="abc"), "field splits must be an object"),
        (index(classes="abc"), "field classes must be a list"),
        (index(classes=[1]), r"field classes\[0\] must be a string"),
        (index(splits={"train": {"shards": [{**rec, "samples": "1"}]}}),
         r"field splits.train.shards\[0\].samples must be an integer >= 0, got str '1'"),
        (index(splits={"train": {"shards": [{**rec, "name": "../../etc/passwd"}]}}),
         r"field splits.train.shards\[0\].name must be a path inside the dataset"),
        (index(splits={"train": {"shards": [{"name": "x"}]}}), r"missing field splits.train.shards\[0\].samples"),
        (index(params=[]), "field params must be an object"),
        (index(failed=[{"reason": 3}]), r"field failed\[0\] must be an object"),
    ]:
        (tmp_path / "dataset.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=f"^{tmp_path / 'dataset.json'}: .*{message}"):
            storage.load_index(tmp_path)
    (tmp_path / "dataset.json").write_bytes(b'{"format": "\xff"}')
    with pytest.raises(ValueError, match="dataset.json: not valid JSON"):
        storage.load_index(tmp_path)
