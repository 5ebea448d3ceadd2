"""A local cache of remote shards (`--cache-dir`, `--cache-limit`): a bucket is read once, not once an epoch.

* A remote shard read for the first time is written to the cache while it is streamed (a tee into a
  temporary beside the cache's files, hashed on the way); when the stream is complete and its sha256
  and size are dataset.json's record it is renamed into place as `<sha256>.tar`. A reader that stops
  early (a part cut short by the plan) reads the rest of the shard on close, so the copy completes.
* A cached copy is hashed again before every use, through the handle it is then read from (an eviction
  by another process meanwhile cannot pull it away); a mismatch (a disk error, a hand edit) is
  deleted, counted (`corrupt`) and the shard streamed again from its URL.
* Least recently used copies go once the cache passes `limit` bytes (use = open; the file's mtime).
  A shard larger than the limit is streamed without being kept.
* Ranks and workers on one machine share one directory: every writer has its own temporary and the
  rename is atomic, so readers that miss the same shard at once each download it (at most one
  download per reader at a time) and the last rename wins with identical bytes.
* dataset.json is kept too (per dataset URL): when the server cannot be reached, the copy of the last
  successful read stands in (with a warning), so later epochs and evaluation run from the cache alone.

Shards without a sha256 in dataset.json (none of ours; hand-made indexes) are streamed, not cached:
there would be nothing to check a copy against.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
import uuid
from collections import Counter
from typing import BinaryIO

from wlasl_shards import storage

log = logging.getLogger(__name__)

SUFFIX = ".tar"
INDEXES = "indexes"  # subfolder holding the dataset.json copies
STALE_TEMPORARY_S = 3600.0  # a temporary this old belongs to a killed reader (no live download lasts this long)
COUNTS = ("hits", "fetched", "corrupt", "evicted", "uncached")


class ShardCache:
    """A cache directory and its byte limit (None: no limit); picklable (loader worker processes
    get a copy). `counts`: this process's hits, fetched, corrupt, evicted and uncached shards."""

    def __init__(self, directory: str | os.PathLike, limit: int | None = None):
        if limit is not None and limit < 1:
            raise ValueError(f"--cache-limit must be > 0, got {limit}")
        if storage.is_remote(directory):
            raise ValueError(f"--cache-dir must be a local directory, got {os.fspath(directory)!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.limit = limit
        self.counts: Counter = Counter()
        self._swept = False

    def __getstate__(self) -> dict:
        return {**self.__dict__, "counts": Counter()}  # each process counts its own

    def path(self, sha: str) -> str:
        return os.path.join(self.directory, sha + SUFFIX)

    def _prepare(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        if not self._swept:
            storage.sweep_temporaries(self.directory, older_than=STALE_TEMPORARY_S)
            self._swept = True

    # ------------------------------------------------------------------------------------ shards

    def open(self, url: str, nbytes: int | None, sha: str | None) -> BinaryIO:
        """A binary stream of the shard at `url`: the cached copy when it checks out against
        (`sha`, `nbytes`) from dataset.json, else the remote object, teed into the cache."""
        if not storage.is_remote(url):
            return storage.open_read(url, nbytes)
        if sha is None or nbytes is None or (self.limit is not None and nbytes > self.limit):
            self.counts["uncached"] += 1
            if self.counts["uncached"] == 1:
                log.warning("%s: not cached (%s)", url, "larger than --cache-limit" if sha and nbytes else
                            "dataset.json has no sha256 and size to check a copy against")
            return storage.open_read(url, nbytes)
        self._prepare()
        cached = self._open_cached(url, nbytes, sha)
        if cached is not None:
            self.counts["hits"] += 1
            return cached
        self.counts["fetched"] += 1
        return io.BufferedReader(_Tee(storage.open_read(url, nbytes), self, url, nbytes, sha),
                                 buffer_size=storage.MiB)

    def _open_cached(self, url: str, nbytes: int, sha: str) -> BinaryIO | None:
        path = self.path(sha)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return None
        digest, size = hashlib.sha256(), 0
        while chunk := f.read(storage.MiB):
            digest.update(chunk)
            size += len(chunk)
        if size == nbytes and digest.hexdigest() == sha:
            f.seek(0)
            try:
                os.utime(path)  # most recently used
            except FileNotFoundError:
                pass  # evicted by another reader meanwhile; our handle still reads it
            return f
        f.close()
        self.counts["corrupt"] += 1
        log.warning("cached copy of %s is damaged (%d bytes, sha256 %s..., expected %d bytes, %s...): "
                    "deleted, reading the shard again", url, size, digest.hexdigest()[:12], nbytes, sha[:12])
        storage.remove(path)
        return None

    def _keep(self, temp: str, sha: str) -> None:
        """Rename a verified temporary into place, then evict down to the limit."""
        os.replace(temp, self.path(sha))
        self.evict(keep=sha)

    def evict(self, keep: str | None = None) -> list[str]:
        """Delete least recently used copies until the cache holds at most `limit` bytes (never the
        copy `keep`); returns the deleted file names."""
        if self.limit is None:
            return []
        entries = []
        for name in os.listdir(self.directory):
            if name.endswith(SUFFIX) and not name.startswith("."):
                try:
                    st = os.stat(os.path.join(self.directory, name))
                except FileNotFoundError:
                    continue
                entries.append((st.st_mtime_ns, name, st.st_size))
        total = sum(e[2] for e in entries)
        gone = []
        for _, name, size in sorted(entries):
            if total <= self.limit:
                break
            if name == (keep or "") + SUFFIX:
                continue
            storage.remove(os.path.join(self.directory, name))
            total -= size
            gone.append(name)
        self.counts["evicted"] += len(gone)
        if gone:
            log.info("cache %s: evicted %d least recently used shard(s) to stay under %d bytes", self.directory,
                     len(gone), self.limit)
        return gone

    # ------------------------------------------------------------------------------ dataset.json

    def load_index(self, dataset: str | os.PathLike) -> dict:
        """`storage.load_index`, keeping a copy of a remote dataset.json; when the server cannot be
        reached (`storage.Unreachable`: retries ran out) the last copy stands in, with a warning; a
        server that answers no (no such object, refused credentials) is an error as without a cache."""
        url = storage.dataset_url(dataset)
        if not storage.is_remote(url):
            return storage.load_index(dataset)
        copy = os.path.join(self.directory, INDEXES, hashlib.sha256(url.encode()).hexdigest() + ".json")
        try:
            raw = storage.read_bytes(url)
        except storage.Unreachable as e:
            try:
                with open(copy, "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                raise ValueError(str(e)) from None
            log.warning("%s; using the copy in the cache from %s", e,
                        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.stat(copy).st_mtime)))
            return storage.parse_index(raw, url)
        except storage.StorageError as e:  # a server that answered no (missing, credentials): as without a cache
            raise storage.index_error(url, e) from None
        index = storage.parse_index(raw, url)
        os.makedirs(os.path.dirname(copy), exist_ok=True)
        storage.write_bytes(copy, json.dumps(index).encode())
        return index


def make(directory: str | os.PathLike | None, limit: int | None) -> ShardCache | None:
    """The cache of a config's `cache_dir` and `cache_limit` (None without a directory)."""
    if directory is None:
        if limit is not None:
            raise ValueError("--cache-limit needs --cache-dir")
        return None
    return ShardCache(directory, limit)


def load_index(dataset: str | os.PathLike, cache: ShardCache | None) -> dict:
    """dataset.json through `cache` when there is one."""
    return storage.load_index(dataset) if cache is None else cache.load_index(dataset)


def open_shard(url: str, nbytes: int | None, sha: str | None, cache: ShardCache | None) -> BinaryIO:
    """A shard's stream, through `cache` when there is one."""
    return storage.open_read(url, nbytes) if cache is None else cache.open(url, nbytes, sha)


class _Tee(io.RawIOBase):
    """A remote shard's stream that writes what it reads into a cache temporary; on close (after
    reading the rest), kept when whole and matching dataset.json, else deleted."""

    def __init__(self, source: BinaryIO, cache: ShardCache, url: str, nbytes: int, sha: str):
        super().__init__()
        self.source, self.cache, self.url, self.nbytes, self.sha = source, cache, url, nbytes, sha
        # storage.sweep_temporaries' pattern, so a killed reader's temporary is swept later.
        self.temp = os.path.join(cache.directory, f".{sha}{SUFFIX}.{uuid.uuid4().hex[:12]}.tmp")
        self.out = open(self.temp, "wb")
        self.digest, self.size, self.failed = hashlib.sha256(), 0, False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            n = self.source.readinto(b)
        except BaseException:
            self.failed = True
            raise
        if n:
            view = memoryview(b)[:n]
            self.out.write(view)
            self.digest.update(view)
            self.size += n
        return n

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self.failed:
                while chunk := self.source.read(storage.MiB):  # the rest, so that the copy is whole
                    self.out.write(chunk)
                    self.digest.update(chunk)
                    self.size += len(chunk)
            self.out.close()
            if not self.failed and self.size == self.nbytes and self.digest.hexdigest() == self.sha:
                self.cache._keep(self.temp, self.sha)
            else:
                if not self.failed:
                    log.warning("%s: read %d bytes, sha256 %s..., but dataset.json says %d bytes, %s...: "
                                "not cached", self.url, self.size, self.digest.hexdigest()[:12], self.nbytes,
                                self.sha[:12])
                storage.remove(self.temp)
        except Exception as e:  # noqa: BLE001 - the server gone while reading the rest: no copy, no error
            log.info("%s: not cached (%s: %s)", self.url, type(e).__name__, e)
            self.out.close()
            storage.remove(self.temp)
        finally:
            self.source.close()
            super().close()


__all__ = ["COUNTS", "ShardCache", "load_index", "make", "open_shard"]
