"""The test servers themselves (tests/servers.py): S3 via weed mini, static HTTP, and their faults."""

from __future__ import annotations

import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import botocore.exceptions
import numpy as np
import pytest

from tests.servers import HttpServer, S3Server


def payload(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def raw_request(port: int, path: str = "/", method: str = "GET") -> socket.socket:
    """A connected socket to 127.0.0.1:port that has sent one HTTP/1.1 request (reads time out after 1 s)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=1.0)
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    return sock


def read_until_timeout(sock: socket.socket) -> tuple[bytes, float]:
    """(everything received until a 1 s silence, seconds from the start to the timeout)."""
    got, started = b"", time.monotonic()
    with pytest.raises(TimeoutError):
        while chunk := sock.recv(65536):
            got += chunk
        raise AssertionError(f"connection closed after {len(got)} bytes instead of stalling")
    return got, time.monotonic() - started


def split_response(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}, body


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(ip, port) of every TCP socket process `pid` listens on (Linux /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ip = socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8 else "[v6]" + address
                found.add((ip, int(port, 16)))
    return found


# --------------------------------------------------------------------------------------------- S3


def test_s3_round_trip_listing_and_delete(s3_server, tmp_path):
    data = payload(300_000)
    s3_server.put("roundtrip/blob.bin", data)
    assert s3_server.get("roundtrip/blob.bin") == data

    tree = tmp_path / "tree"
    files = {"dataset.json": b'{"a": 1}', "train/shard-000000.tar": payload(5000, 1),
             "train/shard-000001.tar": payload(7000, 2), "val/shard-000000.tar": b""}
    for name, blob in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(blob)
    keys = s3_server.put_dir(tree, "/up/loaded/")
    expected = sorted(f"up/loaded/{name}" for name in files)
    assert keys == expected
    assert s3_server.list("up/loaded/") == expected
    assert s3_server.list("up/loaded/train/") == expected[1:3]
    assert {k: s3_server.get(k) for k in keys} == {f"up/loaded/{n}": b for n, b in files.items()}

    s3_server.delete("up/loaded/dataset.json")
    assert s3_server.list("up/loaded/") == expected[1:]
    assert s3_server.url("up/x") == "s3://wlasl/up/x"


def test_s3_refuses_wrong_credentials(s3_server):
    s3_server.put("creds/ok.txt", b"secret data")
    with pytest.raises(botocore.exceptions.ClientError) as wrong_secret:
        s3_server.client(secret=s3_server.secret[::-1]).get_object(Bucket="wlasl", Key="creds/ok.txt")
    assert wrong_secret.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert wrong_secret.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    with pytest.raises(botocore.exceptions.ClientError) as unknown_key:
        s3_server.client(key="nobody").put_object(Bucket="wlasl", Key="creds/new.txt", Body=b"x")
    assert unknown_key.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert s3_server.list("creds/") == ["creds/ok.txt"]  # the refused PUT wrote nothing


def test_s3_env_leads_the_standard_aws_chain_to_the_server(s3_env, monkeypatch):
    import s3fs

    s3_env.put("env/hello.txt", b"found through the environment")
    assert os.environ["AWS_ENDPOINT_URL"] == s3_env.endpoint_url
    assert os.environ["AWS_ACCESS_KEY_ID"] == s3_env.key and os.environ["AWS_DEFAULT_REGION"] == "us-east-1"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)  # no arguments: endpoint and key from the environment
    assert fs.cat_file("wlasl/env/hello.txt") == b"found through the environment"

    env = s3_env.subprocess_env({"PATH": "/bin", "AWS_PROFILE": "prod", "AWS_SESSION_TOKEN": "t"})
    assert env == {"PATH": "/bin", **s3_env.env(), "AWS_CONFIG_FILE": os.devnull,
                   "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


def test_s3_server_listens_only_on_its_own_local_ports(s3_server):
    listening = listening_sockets(s3_server.proc.pid)
    ours = set(s3_server.ports.values())
    assert ("127.0.0.1", int(s3_server.endpoint_url.rsplit(":", 1)[1])) in listening
    assert len(listening) >= 8  # master, volume, filer, s3 and their gRPC ports at least
    assert {ip for ip, _ in listening} == {"127.0.0.1"}
    assert {port for _, port in listening} <= ours, f"weed listens on ports it was not given: {listening}"
    assert s3_server.ports["admin.port.grpc"] == s3_server.ports["admin.port"] + 10000


def test_s3_pause_stalls_resume_recovers_stop_ends_paused(s3_server_factory):
    server = s3_server_factory()
    server.put("p/x.bin", b"before the pause")
    server.pause()
    sock = raw_request(server.ports["s3.port"])  # the kernel still accepts the connection
    got, waited = read_until_timeout(sock)
    assert got == b"" and waited >= 0.9
    server.resume()
    assert sock.recv(12).startswith(b"HTTP/1.1 ")  # the request that waited is answered
    sock.close()
    assert server.get("p/x.bin") == b"before the pause"

    server.pause()
    server.stop()  # resumes first, so the clean shutdown is not stuck behind SIGSTOP
    assert not server.running and server.proc.returncode == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.ports["s3.port"]), timeout=1.0).close()
    server.stop()  # twice is fine


def test_s3_kill_then_restart_keeps_data_and_ports(s3_server_factory, tmp_path):
    server = s3_server_factory()
    blobs = {f"k/{i}.bin": payload(20_000 + i, i) for i in range(3)}
    for key, blob in blobs.items():
        server.put(key, blob)
    endpoint, ports = server.endpoint_url, dict(server.ports)
    server.kill()
    assert not server.running and server.proc.returncode == -9
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ports["s3.port"]), timeout=1.0).close()
    server.kill()  # killing a dead server is a no-op

    server.restart()
    assert server.running and (server.endpoint_url, server.ports) == (endpoint, ports)
    assert server.list("k/") == sorted(blobs)
    assert {key: server.get(key) for key in blobs} == blobs


def test_two_factory_servers_run_at_once_apart(s3_server_factory):
    a, b = s3_server_factory(), s3_server_factory(bucket="other")
    assert a.running and b.running and a.workdir != b.workdir
    assert not set(a.ports.values()) & set(b.ports.values())
    assert a.endpoint_url != b.endpoint_url and a.secret != b.secret
    a.put("only-in-a.txt", b"a")
    b.put("only-in-b.txt", b"b")
    assert (a.list(), b.list()) == (["only-in-a.txt"], ["only-in-b.txt"])
    assert b.bucket == "other" and b.get("only-in-b.txt") == b"b"


def test_s3_server_rejects_a_bad_bucket_name(tmp_path):
    with pytest.raises(ValueError, match="bucket must be a valid S3 bucket name.*'Bad_Bucket'"):
        S3Server.start(tmp_path, bucket="Bad_Bucket")


# ------------------------------------------------------------------------------------------- HTTP


@pytest.fixture
def served(http_server) -> tuple[HttpServer, bytes]:
    data = payload(200_000, 7)
    (http_server.root / "train").mkdir()
    (http_server.root / "train" / "shard-000000.tar").write_bytes(data)
    (http_server.root / "dataset.json").write_bytes(b"{}")
    return http_server, data


def fetch(url: str, method: str = "GET", headers: dict | None = None):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local: never via a proxy
    return opener.open(urllib.request.Request(url, method=method, headers=headers or {}), timeout=5)


def test_http_serves_bytes_heads_and_ranges(served):
    server, data = served
    url = server.url_for("train/shard-000000.tar")
    with fetch(url) as res:
        assert (res.status, res.headers["Content-Length"], res.read()) == (200, str(len(data)), data)
    with fetch(url, "HEAD") as res:
        assert (res.status, res.headers["Content-Length"], res.read()) == (200, str(len(data)), b"")
    with fetch(url, headers={"Range": "bytes=1000-1999"}) as res:
        assert (res.status, res.headers["Content-Range"], res.read()) == (206, f"bytes 1000-1999/{len(data)}",
                                                                          data[1000:2000])
    with fetch(url, headers={"Range": "bytes=-10"}) as res:
        assert (res.status, res.read()) == (206, data[-10:])
    with fetch(url, headers={"Range": f"bytes={len(data) - 5}-"}) as res:
        assert res.read() == data[-5:]
    for bad, code in [("train/shard-000000.tar", 416), ("missing.tar", 404), ("../" * 6 + "etc/passwd", 404)]:
        with pytest.raises(urllib.error.HTTPError) as err:
            fetch(f"{server.url}/{bad}", headers={"Range": f"bytes={len(data)}-"})
        assert err.value.code == code, bad
    assert [(r.method, r.path) for r in server.requests[:2]] == [("GET", "/train/shard-000000.tar"),
                                                                ("HEAD", "/train/shard-000000.tar")]


def test_http_server_works_with_fsspec(served):
    import fsspec

    server, data = served
    fs = fsspec.filesystem("http", skip_instance_cache=True)
    url = server.url_for("train/shard-000000.tar")
    assert fs.size(url) == len(data)
    assert fs.cat_file(url, start=5000, end=9000) == data[5000:9000]
    assert sorted(fs.ls(server.url + "/", detail=False)) == [server.url + "/dataset.json", server.url + "/train/"]
    assert ("GET", "/train/shard-000000.tar", "bytes=5000-8999") in {(r.method, r.path, r.range)
                                                                     for r in server.requests}


def test_http_stall_after_sends_exactly_n_bytes_then_stalls_until_release(served):
    server, data = served
    server.stall_after(1000)
    sock = raw_request(int(server.url.rsplit(":", 1)[1]), "/train/shard-000000.tar")
    got, waited = read_until_timeout(sock)
    status, headers, body = split_response(got)
    assert status == "HTTP/1.1 200 OK" and headers["content-length"] == str(len(data))
    assert body == data[:1000] and waited >= 0.9
    server.release()  # the stalled response completes
    while len(body) < len(data) and (chunk := sock.recv(65536)):
        body += chunk
    sock.close()
    assert body == data


def test_http_stop_ends_a_stall_midway(served):
    server, data = served
    server.stall_after(100)
    sock = raw_request(int(server.url.rsplit(":", 1)[1]), "/train/shard-000000.tar")
    time.sleep(0.2)  # the handler has sent its 100 bytes and waits
    assert len(server._threads) == 1
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3 and not server._threads
    got = b""
    while chunk := sock.recv(65536):  # EOF, not a timeout: the connection was closed
        got += chunk
    assert split_response(got)[2] == data[:100]  # the rest was never sent
    server.stop()  # idempotent; the fixture calls it again


def test_http_truncate_after_closes_early(served):
    server, data = served
    server.truncate_after(5000)
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=2)
    conn.request("GET", "/train/shard-000000.tar")
    res = conn.getresponse()
    assert res.status == 200 and int(res.headers["Content-Length"]) == len(data)
    with pytest.raises(http.client.IncompleteRead) as err:
        res.read()
    assert err.value.partial == data[:5000]
    conn.close()
    server.clear()
    with fetch(server.url_for("train/shard-000000.tar")) as res:
        assert res.read() == data


def test_http_status_fault_answers_every_request(served):
    server, data = served
    server.status(503)
    for method in ("GET", "HEAD"):
        with pytest.raises(urllib.error.HTTPError) as err:
            fetch(server.url_for("train/shard-000000.tar"), method)
        assert err.value.code == 503
    server.clear()
    with fetch(server.url_for("train/shard-000000.tar")) as res:
        assert (res.status, res.read()) == (200, data)


@pytest.mark.parametrize("call, arg, message", [("stall_after", -1, "stall_after needs a byte count >= 0, got -1"),
                                                ("truncate_after", 1.5, "truncate_after needs a byte count"),
                                                ("status", 200, "HTTP error 400-599, got 200")])
def test_http_fault_arguments_are_checked(http_server, call, arg, message):
    with pytest.raises(ValueError, match=message):
        getattr(http_server, call)(arg)
