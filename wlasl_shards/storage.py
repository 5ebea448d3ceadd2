"""Where datasets live: local paths, file://, s3://, gs:// and http(s):// URLs. The one module that opens them.

Local paths go through plain `open`; everything else through fsspec (s3fs for S3 and S3-compatible
stores, gcsfs for GCS, aiohttp for HTTP), configured here so that no request can hang:

* S3 credentials come from the standard AWS chain (environment, ~/.aws, instance role) and the
  endpoint from `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`), as every AWS tool reads them.
* Every request has a connect and a read timeout (`IOPolicy`); a failed request is retried with
  exponential backoff until a deadline, then raises `StorageError` naming the URL. Missing objects
  and refused credentials are not retried. With the defaults a stalled or dead server ends in an
  error within 30 s (webdataset's curl opener and s3fs's own defaults can wait for minutes).
* Remote objects are streamed in chunks (one ranged GET each, the next ones fetched in a background
  thread while the current one is consumed): the reader rarely waits on the network, and a broken
  connection costs one chunk's retry, not the shard. A short object is caught by its size.
* A missing file or object raises `NotFound` (a `StorageError` and a `FileNotFoundError`).
  Programming errors (`TypeError`, `AttributeError`, ...) propagate as themselves.

`register_webdataset()` installs the same opener for webdataset's `gopen` (s3://, gs://, http(s)://),
so a plain `wds.WebDataset(urls)` gets the timeouts too. Call it once before such a pipeline: no import
patches webdataset's globals (our own loaders read through `open_read` and do not need it).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import hashlib
import io
import json
import logging
import os
import posixpath
import random
import re
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from wlasl_shards import shards

log = logging.getLogger(__name__)

T = TypeVar("T")
REMOTE_SCHEMES = ("s3", "gs", "gcs", "http", "https")
MiB = 1 << 20


class StorageError(OSError):
    """A URL could not be read or written; the message names it and says why."""


class NotFound(StorageError, FileNotFoundError):
    """The file or object does not exist. Callers that treat a missing file apart catch this class (or
    FileNotFoundError, which it is), never the message text."""


class Unreachable(StorageError):
    """Retries ran out (timeouts, refused connections, server errors): the server could not be reached,
    as opposed to one that answered no (NotFound, refused credentials: plain StorageError)."""


class NoSpace(StorageError):
    """A local write ran out of disk space (ENOSPC); the message is one line naming the device and the
    file (`no_space_message`), and what was being written has been removed or cut back."""


def _device(path: str) -> str:
    """The mount point holding `path` and, from /proc/mounts where there is one, its device."""
    point = os.path.abspath(path)
    while not os.path.ismount(point) and os.path.dirname(point) != point:
        point = os.path.dirname(point)
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
            devices = {fields[1]: fields[0] for fields in (line.split() for line in f) if len(fields) > 1}
    except OSError:
        return point
    return f"{point} ({devices[point]})" if point in devices else point


def no_space_message(path: str | os.PathLike) -> str:
    """'no space left on DEVICE writing PATH' for a write to `path` that failed with ENOSPC."""
    return f"no space left on {_device(os.fspath(path))} writing {os.fspath(path)}"


def is_no_space(error: BaseException) -> bool:
    return isinstance(error, NoSpace) or (isinstance(error, OSError) and error.errno == errno.ENOSPC)


@dataclass(frozen=True)
class IOPolicy:
    """Timeouts and retries of every remote request (environment: WLASL_SHARDS_IO_<FIELD>, e.g.
    WLASL_SHARDS_IO_READ_TIMEOUT=5)."""

    connect_timeout: float = 4.0  # seconds to open a connection
    read_timeout: float = 8.0  # seconds without a byte before a request is abandoned
    deadline: float = 20.0  # seconds from an operation's first attempt within which every retry must end
    backoff: float = 0.5  # first wait between attempts, doubled each time (with jitter)
    chunk: int = 8 * MiB  # bytes per ranged GET when streaming an object
    prefetch: int = 2  # chunks fetched ahead of the reader

    @classmethod
    def from_env(cls) -> IOPolicy:
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = os.environ.get(f"WLASL_SHARDS_IO_{f.name.upper()}")
            if value is not None:
                try:
                    kw[f.name] = type(getattr(cls, f.name))(float(value))
                except ValueError:
                    raise ValueError(f"WLASL_SHARDS_IO_{f.name.upper()} must be a number, got {value!r}") from None
        policy = cls(**kw)
        if min(policy.connect_timeout, policy.read_timeout, policy.deadline) <= 0 or policy.chunk < 1:
            raise ValueError(f"WLASL_SHARDS_IO_* must be > 0, got {policy}")
        return policy


def policy() -> IOPolicy:
    return IOPolicy.from_env()


# ---------------------------------------------------------------------------------------- names


def scheme(location: str | os.PathLike) -> str:
    """"s3", "gs", "http", ... for a remote URL; "" for a local path or file:// URL."""
    text = os.fspath(location)
    parsed = urllib.parse.urlparse(text)
    name = parsed.scheme.lower()
    if name == "file" or len(name) <= 1:  # one letter: a Windows drive
        return ""
    if name not in REMOTE_SCHEMES:
        raise ValueError(f"{text!r}: unsupported URL scheme {name}:// (use a local path, file://, "
                         f"{', '.join(s + '://' for s in REMOTE_SCHEMES)})")
    return "gs" if name == "gcs" else name


def is_remote(location: str | os.PathLike) -> bool:
    return scheme(location) != ""


def local_path(location: str | os.PathLike) -> str:
    """A local path or file:// URL as a plain path."""
    text = os.fspath(location)
    parsed = urllib.parse.urlparse(text)
    return urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else text


def join(base: str | os.PathLike, *names: str) -> str:
    """`base`/`names` for a path or a URL (URLs keep their scheme, host and query)."""
    if not is_remote(base):
        return os.path.join(local_path(base), *names)
    parsed = urllib.parse.urlparse(os.fspath(base))
    return urllib.parse.urlunparse(parsed._replace(path=posixpath.join(parsed.path or "/", *names)))


def parent(location: str | os.PathLike) -> str:
    if not is_remote(location):
        return os.path.dirname(os.path.abspath(local_path(location)))
    parsed = urllib.parse.urlparse(os.fspath(location))
    return urllib.parse.urlunparse(parsed._replace(path=posixpath.dirname(parsed.path.rstrip("/"))))


def dataset_root(dataset: str | os.PathLike) -> str:
    """The root of a dataset given as its directory (path or URL) or its dataset.json."""
    text = os.fspath(dataset)
    if is_remote(text):
        path = urllib.parse.urlparse(text).path
        return parent(text) if posixpath.basename(path) == shards.INDEX_NAME else text.rstrip("/")
    path = Path(local_path(text))
    return str(path.parent if path.name == shards.INDEX_NAME or path.is_file() else path)


def dataset_url(dataset: str | os.PathLike, name: str = shards.INDEX_NAME) -> str:
    """Where the file `name` (relative to the dataset root, "/"-separated) of `dataset` is."""
    return join(dataset_root(dataset), *name.split("/"))


# ---------------------------------------------------------------------------------- filesystems


_fs_lock = threading.Lock()
_fs_cache: dict[tuple, Any] = {}


def _filesystem(kind: str, pol: IOPolicy):
    """The fsspec filesystem for a scheme with our timeouts (one per process and policy)."""
    # Credentials and endpoint are read when the filesystem is made: a change makes a new one.
    key = (kind, pol, os.getpid(), tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))))
    with _fs_lock:
        if key in _fs_cache:
            return _fs_cache[key]
        import fsspec

        if kind == "s3":
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
            fs = fsspec.filesystem(
                "s3", skip_instance_cache=True, endpoint_url=endpoint, session=_aio_session(key[3]),
                config_kwargs={"connect_timeout": pol.connect_timeout, "read_timeout": pol.read_timeout,
                               "retries": {"total_max_attempts": 1, "mode": "standard"}})
            # Our own retry loop (with its deadline) is the only one: s3fs's (5 attempts) and botocore's
            # would multiply the attempts and the time a dead server can hold us. botocore's
            # "max_attempts" counts retries, not attempts: 1 there doubled every stalled read (2 x 8 s).
            fs.retries = 1
            # botocore sends PUTs with "Expect: 100-continue" and waits for the interim reply with no
            # timeout: a stalled server would hold an upload forever. Without it the body goes at once
            # and the read timeout covers the wait for the answer.
            from botocore.handlers import add_expect_header

            fs.connect()
            fs.s3.meta.events.unregister("before-call.s3", add_expect_header)
        elif kind == "gs":
            fs = fsspec.filesystem("gs", skip_instance_cache=True, timeout=pol.connect_timeout + pol.read_timeout)
        else:
            import aiohttp

            fs = fsspec.filesystem("http", skip_instance_cache=True, client_kwargs={
                "timeout": aiohttp.ClientTimeout(total=None, sock_connect=pol.connect_timeout,
                                                 sock_read=pol.read_timeout)})
        _fs_cache[key] = fs
        return fs


_sessions: dict[tuple, Any] = {}


def _aio_session(env: tuple) -> Any:
    """One aiobotocore session per AWS environment, made before DataLoader workers fork and inherited
    by them: a worker's S3 client then skips loading botocore's service models again (a large part of
    its per-epoch set-up). Sessions hold no connections, so sharing one across fork is safe."""
    if env not in _sessions:
        import aiobotocore.session

        _sessions[env] = aiobotocore.session.AioSession()
    return _sessions[env]


def _fs_path(url: str, pol: IOPolicy) -> tuple[Any, str]:
    kind = scheme(url)
    fs = _filesystem(kind, pol)
    return fs, (url if kind in ("http", "https") else fs._strip_protocol(url))


# Not worth a retry: the object is missing, access is refused, or the request is malformed.
_FINAL = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError)
# Bugs, not storage failures: raised as themselves, at once, with their traceback.
_BUGS = (TypeError, AttributeError, NameError, ImportError, AssertionError)


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, PermissionError):
        return f"access denied ({text}): check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws)"
    if isinstance(error, FileNotFoundError):
        return "no such object"
    if isinstance(error, (TimeoutError, concurrent.futures.TimeoutError)) or "timeout" in type(error).__name__.lower():
        return f"timed out ({type(error).__name__})"
    return f"{type(error).__name__}: {text}"


def with_retries(url: str, what: str, fn: Callable[[], T], pol: IOPolicy | None = None) -> T:
    """fn() retried with exponential backoff on transient errors (timeouts, refused or dropped
    connections, server errors) as long as another attempt can end within `pol.deadline` seconds of
    the first; then, or at once for a missing object (NotFound) / refused credentials, a StorageError
    naming `url`. Programming errors (`_BUGS`) propagate unchanged."""
    pol = pol or policy()
    start = time.monotonic()
    attempt = 0
    longest = 0.0  # the slowest failed attempt so far: what the next one may cost
    while True:
        t0 = time.monotonic()
        try:
            return fn()
        except _BUGS:
            raise
        except _FINAL as e:
            if isinstance(e, FileNotFoundError):
                raise NotFound(f"{url}: {what}: no such object") from None
            raise StorageError(f"{url}: {what}: {_describe(e)}") from None
        except Exception as e:  # noqa: BLE001 - network errors come in many types; all are retried
            now = time.monotonic()
            longest = max(longest, now - t0)
            wait = pol.backoff * 2 ** attempt * (0.75 + 0.5 * random.random())
            attempt += 1
            if now + wait + longest - start > pol.deadline:
                raise Unreachable(f"{url}: {what} failed {attempt} time(s) in {now - start:.0f} s: "
                                   f"{_describe(e)}") from None
            log.warning("%s: %s failed (%s); retry %d in %.1f s", url, what, _describe(e), attempt, wait)
            time.sleep(wait)


def _remote(url: str | os.PathLike, what: str, op: Callable[[Any, str], T]) -> T:
    """op(filesystem, path) for a remote URL, with our timeouts and `with_retries` (`what` names the
    operation in errors)."""
    text = os.fspath(url)
    fs, path = _fs_path(text, policy())
    return with_retries(text, what, lambda: op(fs, path))


def _open_local(url: str | os.PathLike) -> BinaryIO:
    """A local file opened for reading; a missing one raises NotFound with `open`'s own message."""
    try:
        return open(local_path(url), "rb")
    except FileNotFoundError as e:
        raise NotFound(e.errno, e.strerror, e.filename) from None


# -------------------------------------------------------------------------------------- reading


class ChunkedReader(io.RawIOBase):
    """A remote object as a sequential binary stream: ranged GETs of `policy.chunk` bytes, the next
    `policy.prefetch` of them fetched in a background thread, each retried on its own."""

    def __init__(self, url: str, size: int | None = None, pol: IOPolicy | None = None):
        super().__init__()
        self.url = url
        self.pol = pol or policy()
        self._fs, self._path = _fs_path(url, self.pol)
        if size is None:  # one HEAD; with the size known (dataset.json), a short object shows in its last GET
            actual = with_retries(url, "size", lambda: self._fs.size(self._path), self.pol)
            size = int(actual) if actual is not None else None
        self.size = size
        self._pos = 0  # bytes handed to the reader
        self._next = 0  # offset of the next chunk to request
        self._buf = memoryview(b"")
        self._ahead: list[concurrent.futures.Future] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wlasl-shards-io")
        self._eof_at: int | None = None

    def readable(self) -> bool:
        return True

    def _fetch(self, start: int) -> bytes:
        end = start + self.pol.chunk if self.size is None else min(start + self.pol.chunk, self.size)

        data = with_retries(self.url, f"read bytes {start}-{end}",
                            lambda: self._fs.cat_file(self._path, start=start, end=end), self.pol)
        if self.size is not None and len(data) != end - start:
            # A dropped connection raises; a short answer means the object itself is shorter.
            raise StorageError(f"{self.url}: object is {start + len(data)} bytes, expected {self.size} "
                               f"(truncated or replaced?)")
        return data

    def _fill(self) -> None:
        while len(self._ahead) < 1 + self.pol.prefetch and (self.size is None or self._next < self.size) \
                and self._eof_at is None:
            self._ahead.append(self._pool.submit(self._fetch, self._next))
            self._next += self.pol.chunk

    def readinto(self, b) -> int:
        while not self._buf:
            if (self.size is not None and self._pos >= self.size) or self._eof_at is not None:
                return 0
            self._fill()
            data = self._ahead.pop(0).result()
            if len(data) < self.pol.chunk and self.size is None:
                self._eof_at = self._pos + len(data)  # unknown size (HTTP without length): a short chunk ends it
                for f in self._ahead:
                    f.cancel()
                self._ahead.clear()
            self._buf = memoryview(data)
            if not data:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            for f in self._ahead:
                f.cancel()
            self._ahead.clear()
            self._pool.shutdown(wait=False, cancel_futures=True)
        super().close()


def open_read(url: str | os.PathLike, size: int | None = None) -> BinaryIO:
    """A buffered binary stream of a path or URL, read sequentially. `size` (bytes, e.g. from
    dataset.json) is checked against a remote object's. Raises StorageError (an OSError) naming the
    URL; NotFound for a missing file or object."""
    if not is_remote(url):
        return _open_local(url)
    return io.BufferedReader(ChunkedReader(os.fspath(url), size), buffer_size=1 * MiB)


def sha256(url: str | os.PathLike, size: int | None = None) -> tuple[str, int]:
    """(sha256 hex digest, byte count) of a file or object, streamed; `size` as for `open_read`."""
    digest, count = hashlib.sha256(), 0
    with open_read(url, size) as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
            count += len(chunk)
    return digest.hexdigest(), count


def read_bytes(url: str | os.PathLike) -> bytes:
    """The whole object (small files: dataset.json, journals), with retries."""
    if not is_remote(url):
        with _open_local(url) as f:
            return f.read()
    return _remote(url, "read", lambda fs, path: fs.cat_file(path))


def exists(url: str | os.PathLike) -> bool:
    if not is_remote(url):
        return os.path.exists(local_path(url))
    return _remote(url, "exists", lambda fs, path: fs.exists(path))


def load_index(dataset: str | os.PathLike) -> dict:
    """The parsed and checked dataset.json of `dataset` (its directory or the file, a path or URL);
    ValueError naming what is wrong."""
    url = dataset_url(dataset)
    try:
        raw = read_bytes(url)
    except (StorageError, IsADirectoryError) as e:
        raise index_error(url, e) from None
    return parse_index(raw, url)


def index_error(url: str, error: OSError) -> ValueError:
    """The ValueError for a dataset.json at `url` that could not be read (`error`)."""
    if isinstance(error, (NotFound, IsADirectoryError)):
        what = "a dataset" if is_remote(url) else "a directory"
        return ValueError(f"no {shards.INDEX_NAME} at {url}: expected {what} written by `wlasl-shards build`, "
                          f"or its {shards.INDEX_NAME}")
    return ValueError(str(error))


def parse_index(raw: bytes, url: str) -> dict:
    """dataset.json's bytes, read from `url`, parsed and checked; ValueError naming what is wrong."""
    try:
        index = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{url}: not valid JSON ({e})") from None
    return shards.check_index(index, url)


# -------------------------------------------------------------------------------------- writing


def write_atomic(url: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write a whole file atomically through `write(fileobj)`: locally a temp file of its own beside
    the target (writers on other machines may write the same file at once), fsynced and renamed into
    place, removed on any error; remotely one PUT of what `write` wrote (an object store never shows a
    partly written object). The one atomic writer of the package: JSON, checkpoints, pictures."""
    if not is_remote(url):
        path = Path(local_path(url))
        path.parent.mkdir(parents=True, exist_ok=True)
        # open(..., "xb"), not mkstemp: the file gets the umask's permissions, not 0600.
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(tmp, "xb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            if is_no_space(e) and not isinstance(e, NoSpace):
                raise NoSpace(no_space_message(path)) from None
            raise
        return
    buf = io.BytesIO()
    write(buf)
    write_bytes(url, buf.getvalue())


def write_bytes(url: str | os.PathLike, data: bytes) -> None:
    """Write `data` as a whole file atomically (see `write_atomic`)."""
    if not is_remote(url):
        write_atomic(url, lambda f: f.write(data))
        return
    _remote(url, "write", lambda fs, path: fs.pipe_file(path, data))


def write_json(url: str | os.PathLike, obj: Any, indent: int = 1, default: Callable[[Any], Any] | None = None) -> None:
    """Write `obj` as a whole JSON file atomically, ending in a newline. NaN and infinity are refused
    (ValueError): they are not JSON, and a reader of the file would fail on them."""
    try:
        text = json.dumps(obj, indent=indent, allow_nan=False, default=default)
    except ValueError as e:
        raise ValueError(f"{os.fspath(url)}: not written, {e}") from None
    write_bytes(url, (text + "\n").encode("utf-8"))


def append_line(path: str | os.PathLike, entry: Any) -> None:
    """Append `entry` as one JSON line to a local journal and fsync it. A torn last line (a kill during
    an earlier append: no final newline) is cut off first, so it never runs into the new line and
    every line but perhaps a torn last one is complete."""
    path = local_path(path)
    line = (json.dumps(entry) + "\n").encode("utf-8")
    with open(path, "ab+") as f:
        _repair_torn_tail(f)
        end = f.tell()
        try:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        except OSError as e:
            if not is_no_space(e):
                raise
            f.truncate(end)  # no torn line left behind: the journal stays as it was
            raise NoSpace(no_space_message(path)) from None


def _repair_torn_tail(f: BinaryIO) -> None:
    """Truncate a journal opened "ab+" back to just after its last newline."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    # Scan back in blocks for the newline ending the last complete line (journal lines are short).
    end = size
    keep = 0
    while end > 0:
        start = max(0, end - 64 * 1024)
        f.seek(start)
        found = f.read(end - start).rfind(b"\n")
        if found >= 0:
            keep = start + found + 1
            break
        end = start
    f.truncate(keep)
    log.warning("%s: cut a torn last line (%d bytes) before appending", f.name, size - keep)


# What `write_atomic` names its temporaries: `.<name>.<12 hex>.tmp`.
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")


def sweep_temporaries(folder: str | os.PathLike, older_than: float = 0.0) -> list[str]:
    """Delete the temporaries `write_atomic` left in a local `folder` (a kill between writing and
    renaming one), not modified for `older_than` seconds; returns their names. Only call it where
    no other process may be writing into `folder` right now, or with an `older_than` no live write
    lasts (another writer's temporary, deleted, would fail its rename). Nothing else is touched."""
    folder = local_path(folder)
    if not os.path.isdir(folder):
        return []
    now = time.time()
    swept = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        try:
            if _TEMPORARY.match(name) and os.path.isfile(path) and now - os.stat(path).st_mtime >= older_than:
                os.unlink(path)
                swept.append(name)
        except FileNotFoundError:
            pass  # renamed or swept meanwhile
    if swept:
        log.info("%s: removed %d stale temporary file(s) of an interrupted write", folder, len(swept))
    return swept


def read_lines(path: str | os.PathLike) -> list[Any]:
    """The entries `append_line` wrote to a local journal: every line that parses as JSON, in order.
    Lines that do not (a torn last line after a kill, a damaged line) are skipped, with one warning
    naming the file and how many. [] when there is no journal."""
    path = local_path(path)
    if not os.path.isfile(path):
        return []
    entries = []
    bad = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                bad += 1
    if bad:
        log.warning("%s: skipped %d line(s) that are not complete JSON", path, bad)
    return entries


def upload(local: str | os.PathLike, url: str | os.PathLike) -> None:
    """Copy a finished local file to `url` (one upload; multipart for large files), with retries."""
    _remote(url, "upload", lambda fs, path: fs.put_file(os.fspath(local), path))


def remove(url: str | os.PathLike) -> None:
    """Delete a file or object; absent is fine."""
    if not is_remote(url):
        Path(local_path(url)).unlink(missing_ok=True)
        return

    def rm(fs: Any, path: str) -> None:
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass

    _remote(url, "delete", rm)


def listdir(url: str | os.PathLike) -> list[str]:
    """Names (not paths) directly under a directory or prefix; [] when there is none."""
    if not is_remote(url):
        path = local_path(url)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

    def ls(fs: Any, path: str) -> list[str]:
        try:
            return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False, refresh=True))
        except FileNotFoundError:
            return []

    return _remote(url, "list", ls)


# ----------------------------------------------------------------------------------- webdataset


def _gopen(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> BinaryIO:
    if mode[0] != "r":
        raise ValueError(f"{url}: only reading is supported through webdataset, got mode {mode!r}")
    return open_read(url)


def register_webdataset() -> None:
    """Make webdataset's gopen (used by wds.WebDataset) read remote URLs through `open_read`. Explicit
    and idempotent: call it once before `wds.WebDataset` over s3/gs/http URLs; nothing calls it on import."""
    import importlib

    gopen = importlib.import_module("webdataset.gopen")  # the module; `webdataset.gopen` is also a function
    for name in REMOTE_SCHEMES:
        gopen.gopen_schemes[name] = _gopen


__all__ = ["ChunkedReader", "IOPolicy", "NoSpace", "NotFound", "REMOTE_SCHEMES", "StorageError", "Unreachable",
           "append_line",
           "dataset_root", "dataset_url", "exists", "is_no_space", "is_remote", "join", "listdir", "load_index",
           "local_path", "no_space_message", "open_read", "parent", "parse_index", "policy", "read_bytes", "read_lines",
           "register_webdataset", "remove", "scheme", "sha256", "sweep_temporaries", "upload", "with_retries",
           "write_atomic", "write_bytes", "write_json"]
