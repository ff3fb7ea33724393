"""Limits on hostile connections (``tidings.serving.limits``), over real sockets
on 127.0.0.1, against ``tidings serve`` and ``tidings receive`` started as the
command starts them, on sockets this test holds (``--fd``, ``--admin-fd``).

    .venv/bin/pytest -q tests/test_limits.py
"""

from __future__ import annotations

import json
import re
import select
import socket
import subprocess
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.cli_support import run_tidings
from tests.loopback import HOST, accepting, command_on_socket, loopback_socket, port_of
from tidings.serving.limits import (
    DEFAULT_LIMITS,
    ConnectionLimits,
    body_too_large,
    declared_too_large,
    head_too_large,
    raise_open_file_limit,
    uvicorn_options,
)

CLOSED_WITHIN = 30.0  # seconds: the acceptance line for a stalled head or body
MB = 1 << 20
ADMIN_TOKEN = "limits-test-admin-token-0123456789"


# ---------------------------------------------------------------- the decisions (pure)


@given(st.integers(0, 1 << 20), st.integers(0, 1000))
def test_a_head_is_too_large_exactly_past_either_cap(head_bytes, header_count):
    assert head_too_large(head_bytes, header_count, DEFAULT_LIMITS) == (
        head_bytes > DEFAULT_LIMITS.max_head_bytes or header_count > DEFAULT_LIMITS.max_headers)


@given(st.integers(0, 1 << 40), st.integers(1, 1 << 30))
def test_a_declared_length_is_refused_exactly_past_the_cap(length, cap):
    limits = ConnectionLimits(max_body_bytes=cap)
    assert declared_too_large(b"%d" % length, limits) == (length > cap)
    assert body_too_large(length, limits) == (length > cap)


@given(st.binary(max_size=12).filter(lambda value: not value.isdigit()))
def test_a_malformed_length_is_left_to_the_parser(value):
    assert not declared_too_large(value, ConnectionLimits(max_body_bytes=1))


def test_uvicorn_applies_the_connection_cap_the_keep_alive_and_h11s_head_size():
    limits = ConnectionLimits(max_connections=7, keep_alive_timeout=3, max_head_bytes=999)
    assert uvicorn_options(limits) == {"limit_concurrency": 7, "timeout_keep_alive": 3,
                                       "h11_max_incomplete_event_size": 999}


def test_the_defaults_close_a_stalled_head_or_body_within_30_seconds():
    assert DEFAULT_LIMITS.head_timeout + DEFAULT_LIMITS.body_timeout < CLOSED_WITHIN
    assert DEFAULT_LIMITS.max_connections > 300


def test_the_open_file_limit_is_raised_to_the_hard_limit():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
    try:
        assert raise_open_file_limit() == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---------------------------------------------------------------- the servers, as the command starts them


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    port: int
    post_path: str  # a POST route the stalled body is sent to
    post_headers: dict[str, str]  # what makes that POST acceptable up to its body
    normal_request: bytes  # answered 200 by a healthy server

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            return int(re.search(r"VmRSS:\s+(\d+) kB", status.read()).group(1)) * 1024


STARTING_OPEN_FILES = 256  # the soft limit a server starts with here: below 300 connections, unless it raises it


def lower_open_file_limit() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(STARTING_OPEN_FILES, hard), hard))


def start(arguments: list[str], listening: list[socket.socket]) -> subprocess.Popen:
    """``tidings ARGUMENTS`` serving on sockets this test holds (the first as ``--fd``), started
    with a soft limit of open files too low for 300 connections (as many systems have 1,024)."""
    command, options = command_on_socket(listening[0], arguments)
    options["pass_fds"] = tuple(sock.fileno() for sock in listening)
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lower_open_file_limit, **options)


def wait_until_serving(process: subprocess.Popen, *ports: int) -> None:
    deadline = time.monotonic() + 60
    while not all(accepting(f"http://{HOST}:{port}/") for port in ports):
        if process.poll() is not None:
            raise RuntimeError(f"the server stopped: {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not start")
        time.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def tidings_json(*arguments: str) -> dict:
    done = run_tidings(*arguments)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def platform_database(tmp_path) -> tuple[str, dict]:
    db = f"sqlite:///{tmp_path / 'platform.db'}"
    assert run_tidings("db", "upgrade", "--db", db).returncode == 0
    org = tidings_json("org", "create", "Acme", "--db", db)
    business = tidings_json("business", "create", "--org", str(org["org_id"]), "--name", "Shop", "--db", db)
    channel = tidings_json("channel", "create", "--org", str(org["org_id"]), "--name", "Chat", "--db", db)
    return db, {"api_key": org["api_key"], **business, **channel}


def ingestion(ids: dict, external_id: str = "m1") -> tuple[str, dict[str, str], bytes]:
    body = json.dumps({"business_id": ids["business_id"], "external_conversation_id": "c1",
                       "external_message_id": external_id, "content": "hello", "sender_type": "Consumer"}).encode()
    return (f"/v2/custom-channels/{ids['channel_id']}/messages",
            {"x-APIKey": ids["api_key"], "Content-Type": "application/json"}, body)


def raw_request(method: str, path: str, headers: dict[str, str], body: bytes | None = None,
                length: int | None = None, host: str = HOST) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{name}: {value}" for name, value in headers.items())]
    if length is not None or body is not None:
        lines.append(f"Content-Length: {length if length is not None else len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


@contextmanager
def platform_server(tmp_path, *options: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    db, ids = platform_database(tmp_path)
    with loopback_socket() as listening:
        process = start(["serve", "--db", db, "--no-dispatcher", "--data-dir", str(tmp_path / "keys"), *options],
                        [listening])
        try:
            wait_until_serving(process, port_of(listening))
            path, headers, body = ingestion(ids)
            server = Server("tidings serve", process, port_of(listening), path, headers,
                            raw_request("POST", path, headers, body))
            server.ids = ids
            yield server
        finally:
            stop(process)


@contextmanager
def receiver_servers(tmp_path, *options: str):
    """The receiver's public listener and its admin listener (served by its follower process)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    keys = tmp_path / "receiver-keys"
    assert run_tidings("keys", "generate", "--out", str(keys)).returncode == 0
    db = f"sqlite:///{tmp_path / 'receiver.db'}"
    with loopback_socket() as public, loopback_socket() as admin:
        process = start(["receive", "--db", db, "--public-key", str(keys / "signing-key.pub.pem"), "--any-org",
                         "--admin-fd", str(admin.fileno()), "--admin-token", ADMIN_TOKEN, *options], [public, admin])
        try:
            wait_until_serving(process, port_of(public), port_of(admin))
            events = raw_request("GET", "/events", {"Authorization": f"Bearer {ADMIN_TOKEN}"},
                                 host=f"{HOST}:{port_of(admin)}")
            yield (Server("tidings receive", process, port_of(public), "/webhook", {"Content-Type": "application/json"},
                          raw_request("GET", "/health", {})),
                   Server("tidings receive (admin)", process, port_of(admin), "/inbox", {}, events))
        finally:
            stop(process)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """``tidings serve``, and ``tidings receive`` with its admin listener, with the default limits."""
    with ExitStack() as stack:
        platform = stack.enter_context(platform_server(tmp_path_factory.mktemp("platform")))
        public, admin = stack.enter_context(receiver_servers(tmp_path_factory.mktemp("receiver")))
        yield {"platform": platform, "receiver": public, "admin": admin}


# ---------------------------------------------------------------- talking to them


def connect(port: int) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=10)


def answer(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """The next answer on ``sock``: status, headers, body."""
    sock.settimeout(timeout)
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer: {buffer!r}")
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def ask(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(port) as sock:
        sock.sendall(raw)
        return answer(sock)


def is_closed(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes ``sock`` within ``timeout`` seconds (reading, and dropping, what it sends first)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], left)
        if readable:
            try:
                if sock.recv(65536) == b"":
                    return True
            except ConnectionError:
                return True
    return False


def closing_times(sockets: dict[str, socket.socket], limit: float) -> dict[str, float]:
    """Seconds until the server closed each socket, for those it closed within ``limit``."""
    started, closed = time.monotonic(), {}
    while len(closed) < len(sockets) and time.monotonic() - started < limit:
        open_ones = {sock: name for name, sock in sockets.items() if name not in closed}
        readable, _, _ = select.select(list(open_ones), [], [], 0.2)
        for sock in readable:
            try:
                data = sock.recv(65536)
            except ConnectionError:
                data = b""
            if data == b"":
                closed[open_ones[sock]] = time.monotonic() - started
    return closed


def send_body(sock: socket.socket, size: int, *, chunked: bool = False) -> int:
    """Sends up to ``size`` bytes of body, 1 MB at a time, until the server closes; the bytes it took."""
    piece = b"[" * MB
    sent = 0
    try:
        while sent < size:
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            sent += len(piece)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    return sent


# ---------------------------------------------------------------- the acceptance lines


def test_an_unfinished_head_and_a_stalled_body_are_closed_within_30_seconds_on_both_servers(servers):
    stalled = {}
    with ExitStack() as stack:
        for name, server in servers.items():
            head = stack.enter_context(connect(server.port))
            head.sendall(f"POST {server.post_path} HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ".encode())
            stalled[f"{name}: head"] = head
            body = stack.enter_context(connect(server.port))
            body.sendall(raw_request("POST", server.post_path, server.post_headers, length=1000) + b"{")
            stalled[f"{name}: body"] = body
        platform = servers["platform"]  # an ASGI route of the platform too, with a valid key
        asgi_body = stack.enter_context(connect(platform.port))
        asgi_body.sendall(raw_request("POST", "/v2/webhooks", {"x-APIKey": platform.ids["api_key"],
                                                                "Content-Type": "application/json"}, length=1000))
        stalled["platform: body (ASGI)"] = asgi_body
        closed = closing_times(stalled, CLOSED_WITHIN + 5)
    print("closed after (s):", {name: round(seconds, 1) for name, seconds in closed.items()})
    assert set(closed) == set(stalled)
    assert all(seconds < CLOSED_WITHIN for seconds in closed.values())
    for server in servers.values():
        assert ask(server.port, server.normal_request)[0] == 200


def test_300_stalled_connections_do_not_stop_a_normal_request(servers):
    for name, server in servers.items():
        with ExitStack() as stack:
            for _ in range(300):
                stack.enter_context(connect(server.port)).sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            status = ask(server.port, server.normal_request)[0]
            took = time.monotonic() - started
        print(f"{name}: {status} in {took * 1000:.1f} ms behind 300 stalled connections")
        assert status == 200 and took < 2.0


def test_the_servers_raised_their_open_file_limit_to_the_hard_limit(servers):
    for server in servers.values():
        with open(f"/proc/{server.process.pid}/limits") as limits:
            soft, hard = re.search(r"Max open files\s+(\S+)\s+(\S+)", limits.read()).groups()
        assert soft == hard and int(soft) > STARTING_OPEN_FILES


@pytest.mark.parametrize("which", ["platform", "receiver"])
def test_a_64_mb_body_without_credentials_is_refused_unread(servers, which):
    server = servers[which]
    before = server.rss_bytes()
    with connect(server.port) as sock:
        sock.sendall(raw_request("POST", server.post_path, {"Content-Type": "application/json"}, length=64 * MB))
        status, headers, body = answer(sock)  # before a byte of the body
        send_body(sock, 64 * MB)
    grown = server.rss_bytes() - before
    print(f"{server.name}: {status} {body!r}; RSS grew by {grown / MB:.1f} MB")
    assert status == 413 and headers["connection"] == "close" and b"too large" in body
    assert grown < 64 * MB


@pytest.mark.parametrize("which", ["platform", "receiver"])
def test_a_64_mb_chunked_body_is_cut_at_the_limit(servers, which):
    server = servers[which]
    before = server.rss_bytes()
    with connect(server.port) as sock:
        headers = {**server.post_headers, "Transfer-Encoding": "chunked"}
        sock.sendall(raw_request("POST", server.post_path, headers))
        sent = send_body(sock, 64 * MB, chunked=True)
        assert is_closed(sock, 10)
    grown = server.rss_bytes() - before
    print(f"{server.name}: cut after {sent / MB:.0f} MB sent; RSS grew by {grown / MB:.1f} MB")
    assert sent < 64 * MB and grown < 64 * MB


def test_a_deeply_nested_body_on_the_ingestion_fast_path_is_a_json_400(servers):
    platform = servers["platform"]
    path, headers, body = ingestion(platform.ids, "warm")
    assert ask(platform.port, raw_request("POST", path, headers, body))[0] == 200  # the key is known now
    nested = b"[" * 100_000 + b"]" * 100_000
    status, answer_headers, answered = ask(platform.port, raw_request("POST", path, headers, nested))
    assert (status, answer_headers["content-type"]) == (400, "application/json")
    assert json.loads(answered) == {"detail": "the JSON body is nested too deeply"}


@pytest.mark.parametrize("too_large", ["one long header", "many headers"])
def test_a_head_too_large_is_431_on_both_servers(servers, too_large):
    extra = {"X-Long": "x" * (64 * 1024)} if too_large == "one long header" else {
        f"X-Many-{index}": "x" for index in range(DEFAULT_LIMITS.max_headers + 1)}
    for server in servers.values():
        with connect(server.port) as sock:
            sock.sendall(raw_request("GET", "/health", extra))
            status, headers, _ = answer(sock)
            assert (status, headers["connection"]) == (431, "close"), server.name
            assert is_closed(sock, 5)


def test_a_head_trickled_past_the_size_cap_is_431(servers):
    for server in servers.values():
        with connect(server.port) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nX-Long: ")
            sent = 0
            while sent < 4 * DEFAULT_LIMITS.max_head_bytes and not select.select([sock], [], [], 0.001)[0]:
                sock.sendall(b"x" * 4096)  # until the server answers
                sent += 4096
            assert answer(sock)[0] == 431, server.name


# ---------------------------------------------------------------- with limits from the command line


def test_past_max_connections_a_request_gets_503_until_the_stalled_ones_are_closed(tmp_path):
    with ExitStack() as stack:
        platform = stack.enter_context(platform_server(tmp_path / "p", "--max-connections", "20",
                                                        "--head-timeout", "2"))
        public, admin = stack.enter_context(receiver_servers(tmp_path / "r", "--max-connections", "20",
                                                             "--head-timeout", "2"))
        for server in (platform, public, admin):
            with ExitStack() as stalled:
                for _ in range(25):
                    stalled.enter_context(connect(server.port)).sendall(b"GET / HTTP/1.1\r\n")
                time.sleep(0.2)
                status, _, _ = ask(server.port, server.normal_request)
                assert status == 503, server.name
                time.sleep(3)  # the head timeout closes the stalled connections
                assert ask(server.port, server.normal_request)[0] == 200, server.name


def test_the_platform_checks_the_api_key_before_it_reads_a_body(tmp_path):
    with platform_server(tmp_path / "p", "--max-body-bytes", str(100 * MB)) as platform:
        ingest_path = f"/v2/custom-channels/{platform.ids['channel_id']}/messages"
        for path, key in [(ingest_path, None), (ingest_path, "tdk_unknown"), ("/v2/webhooks", None),
                          ("/v2/webhooks/test", "tdk_unknown")]:
            headers = {"Content-Type": "application/json", **({"x-APIKey": key} if key else {})}
            before = platform.rss_bytes()
            with connect(platform.port) as sock:
                sock.sendall(raw_request("POST", path, headers, length=64 * MB))
                status, answer_headers, body = answer(sock)  # before a byte of the body
                send_body(sock, 64 * MB)
            grown = platform.rss_bytes() - before
            print(f"{path} with key {key}: {status} {body!r}; RSS grew by {grown / MB:.1f} MB")
            assert (status, answer_headers["connection"]) == (401, "close")
            assert json.loads(body)["detail"] in ("missing x-APIKey header", "unknown API key")
            assert grown < 64 * MB


def test_the_tryout_takes_at_most_as_many_items_as_a_configuration_body(servers):
    platform = servers["platform"]
    item = {"url": "https://hooks.example.com/x", "event_type": "message_created"}
    body = json.dumps({"items": [item] * 1000}).encode()
    status, _, answered = ask(platform.port, raw_request(
        "POST", "/v2/webhooks/test", {"x-APIKey": platform.ids["api_key"], "Content-Type": "application/json"}, body))
    assert status == 422 and "items" in answered.decode() and "at most 2" in answered.decode()
