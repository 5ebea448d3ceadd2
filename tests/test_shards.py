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
