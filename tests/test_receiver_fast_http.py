"""The service's fast path for webhook POSTs answers exactly as the ASGI app
does, and keeps HTTP/1.1 right: keep-alive, pipelining, 100-continue, limits."""

from __future__ import annotations

import socket

import pytest

from tests.loopback import UvicornThread
from tests.test_receiver_helpers import Keys, wait_until
from tidings.contract import dump_event
from tidings.contract.samples import SampleFactory
from tidings.receiver.asgi import MAX_BODY_BYTES
from tidings.receiver.fast_http import WebhookHttpProtocol
from tidings.apps.receiver_service import ReceiverConfig, ReceiverService


def raw_post(path: str, body: bytes, headers: dict[str, str], extra: str = "") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode() + body


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        rest += chunk
    buffer[:] = rest[length:]
    return int(status_line.split()[1]), headers, rest[:length]


def exchange(port: int, *requests: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        buffer = bytearray()
        answers = []
        for request in requests:
            sock.sendall(request)
            answers.append(read_response(sock, buffer))
        return answers


def requests_for(keys: Keys) -> list[bytes]:
    body = dump_event(SampleFactory(41).message_created())
    signed = keys.headers(body, msg_id="fast-1")
    return [
        raw_post("/webhook", body, signed),  # stored
        raw_post("/webhook", body, signed),  # the retry
        raw_post("/webhook", body + b" ", signed),  # forged
        raw_post("/webhook", b'{"not": "an event"}', keys.headers(b'{"not": "an event"}', msg_id="fast-2")),  # quarantined
        raw_post("/webhook/wrong-secret", body, signed),
    ]


@pytest.fixture
def keys() -> Keys:
    return Keys()


def answers_from(tmp_path, keys: Keys, name: str, fast: bool):
    config = ReceiverConfig(db_url=f"sqlite:///{tmp_path / name}.db", public_keys=[keys.public_pem], any_org=True)
    service = ReceiverService(config)
    options = {"http": WebhookHttpProtocol} if fast else {"http": "httptools"}
    with UvicornThread(service.app, **options) as server:
        answers = exchange(server.port, *requests_for(keys))
    return answers, service


def test_the_fast_path_gives_the_asgi_apps_answers(tmp_path, keys):
    asgi_answers, _ = answers_from(tmp_path, keys, "asgi", fast=False)
    fast_answers, service = answers_from(tmp_path, keys, "fast", fast=True)
    comparable = lambda answers: [(s, h.get("content-type"), h.get("retry-after"), b) for s, h, b in answers]
    assert comparable(fast_answers) == comparable(asgi_answers)
    assert [s for s, _, _ in fast_answers] == [200, 200, 401, 200, 200]
    assert [e.dedupe_key for e in service.log.events_after()] == ["id:fast-1"]
    assert [q.dedupe_key for q in service.log.quarantined()] == ["id:fast-2"]


def test_keep_alive_pipelining_and_the_rest_of_the_app(tmp_path, keys):
    service = ReceiverService(ReceiverConfig(db_url=f"sqlite:///{tmp_path / 'r.db'}", public_keys=[keys.public_pem], any_org=True))
    bodies = [dump_event(e) for e in SampleFactory(42).events(4)]
    with UvicornThread(service.app, http=WebhookHttpProtocol) as server:
        # Two requests in one write, then a third on the same connection, then a GET.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            buffer = bytearray()
            sock.sendall(raw_post("/webhook", bodies[0], keys.headers(bodies[0])) + raw_post("/webhook", bodies[1], keys.headers(bodies[1])))
            first, second = read_response(sock, buffer), read_response(sock, buffer)
            sock.sendall(raw_post("/webhook?x=1", bodies[2], keys.headers(bodies[2])))
            third = read_response(sock, buffer)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            health = read_response(sock, buffer)
            sock.sendall(b"GET /webhook HTTP/1.1\r\nHost: x\r\n\r\n")
            not_allowed = read_response(sock, buffer)
        assert [a[0] for a in (first, second, third)] == [200, 200, 200]
        assert (health[0], health[2]) == (200, b'{"status":"ok"}')
        assert not_allowed[0] == 405

        # Expect: 100-continue, as curl sends for large bodies.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            headers = keys.headers(bodies[3])
            head = raw_post("/webhook", b"", headers).replace(b"Content-Length: 0", f"Content-Length: {len(bodies[3])}".encode())
            sock.sendall(head.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
            assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
            sock.sendall(bodies[3])
            assert read_response(sock, bytearray())[0] == 200

        # HTTP/1.0: answered, then closed.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            request = raw_post("/webhook", bodies[0], keys.headers(bodies[0])).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
            sock.sendall(request)
            status, headers, _ = read_response(sock, bytearray())
            assert status == 200 and headers.get("connection") == "close"
            assert sock.recv(10) == b""
    assert len(service.log.events_after()) == 5  # the HTTP/1.0 request was a new delivery (new webhook-id)


def test_oversized_bodies_and_vanishing_clients(tmp_path, keys):
    service = ReceiverService(ReceiverConfig(db_url=f"sqlite:///{tmp_path / 'r.db'}", public_keys=[keys.public_pem], any_org=True))
    body = dump_event(SampleFactory(43).message_created())
    with UvicornThread(service.app, http=WebhookHttpProtocol) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            huge = b"x" * (MAX_BODY_BYTES + 10)
            sock.sendall(raw_post("/webhook", huge, {}))
            status, headers, _ = read_response(sock, bytearray())
            assert status == 413 and headers.get("connection") == "close"
        # A client that leaves before its answer: the event is still stored, the server goes on.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(raw_post("/webhook", body, keys.headers(body, msg_id="gone")))
        wait_until(lambda: service.log.stored_keys(["id:gone"]))
        assert exchange(server.port, raw_post("/webhook", body, keys.headers(body, msg_id="gone")))[0][0] == 200
    assert [e.dedupe_key for e in service.log.events_after()] == ["id:gone"]
