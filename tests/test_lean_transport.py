"""``LeanTransport`` against real servers on 127.0.0.1: aiohttp and uvicorn
answering the usual ways, and raw asyncio servers answering the unusual
ones (interim answers, bodies ended by the connection, stalls, resets,
garbage, idle connections closed under the client); TLS with a certificate
authority made here; the SSRF guard on every address about to be connected
to, a literal's or a resolved name's."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import time

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.loopback import serve_uvicorn
from tidings.platform.transport import lean as lean_transport
from tidings.platform.transport.guard import TargetPolicy
from tidings.platform.transport.lean import DRAIN_LIMIT, EXCERPT_BYTES, LeanTransport
from tidings.platform.transport.types import EXCERPT_CHARACTERS, USER_AGENT

pytestmark = pytest.mark.timeout(30)

OPEN = TargetPolicy(allow_private=True, allow_http=True)
BODY = b'{"event":"message_created","text":"h\xc3\xa9llo"}'


@contextlib.asynccontextmanager
async def lean(policy: TargetPolicy = OPEN, **options):
    options.setdefault("attempt_timeout", 2.0)
    transport = LeanTransport(policy, **options)
    try:
        yield transport
    finally:
        await transport.close()


# ---------------------------------------------------------------- servers


class Seen:
    """What a server received: requests (method, path, headers, body) and connections."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.peers: set = set()
        self.in_flight = 0
        self.most_in_flight = 0


@contextlib.asynccontextmanager
async def aiohttp_server(ssl_context: ssl.SSLContext | None = None):
    seen = Seen()

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.requests.append((request.method, request.path_qs, dict(request.headers), body))
        seen.peers.add(request.transport.get_extra_info("peername"))
        seen.in_flight += 1
        seen.most_in_flight = max(seen.most_in_flight, seen.in_flight)
        try:
            kind = request.match_info["kind"]
            if kind == "ok":
                return web.Response(status=200, text="fine")
            if kind == "chunked":
                response = web.StreamResponse(status=202)
                response.enable_chunked_encoding()
                await response.prepare(request)
                for part in (b"first ", b"second ", b"third"):
                    await response.write(part)
                await response.write_eof()
                return response
            if kind == "close":
                return web.Response(status=201, text="bye", headers={"Connection": "close"})
            if kind == "slow":
                await asyncio.sleep(0.3)
                return web.Response(status=200, text="slowly")
            if kind == "hang":
                await asyncio.sleep(30)
            if kind == "busy":
                return web.Response(status=503, text="later", headers={"Retry-After": "7"})
            if kind == "moved":
                return web.Response(status=302, headers={"Location": "http://127.0.0.1:9/elsewhere"})
            if kind == "huge":
                return web.Response(status=200, body=b"x" * (4 * DRAIN_LIMIT))
            if kind == "huge-chunked":
                response = web.StreamResponse(status=200)
                response.enable_chunked_encoding()
                await response.prepare(request)
                for _ in range(64):
                    await response.write(b"y" * 8192)
                await response.write_eof()
                return response
            if kind == "reset":
                request.transport.abort()
                await asyncio.sleep(1)
            return web.Response(status=404)
        finally:
            seen.in_flight -= 1

    app = web.Application()
    app.router.add_route("POST", "/{kind}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield seen, port
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def uvicorn_server(http: str):
    seen = Seen()

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {name.decode(): value.decode() for name, value in scope["headers"]}
        seen.requests.append((scope["method"], scope["path"], headers, body))
        seen.peers.add(tuple(scope["client"]))
        if scope["path"] == "/stream":  # no length given: uvicorn sends chunks
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"part one, ", "more_body": True})
            await send({"type": "http.response.body", "body": b"part two"})
        else:
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    async with serve_uvicorn(app, http=http, lifespan="off") as url:
        yield seen, int(url.rsplit(":", 1)[1])


@contextlib.asynccontextmanager
async def raw_server(answer):
    """A server that hands each connection to ``answer(reader, writer, seen)``."""
    seen = Seen()

    async def on_connection(reader, writer):
        seen.peers.add(writer.get_extra_info("peername"))
        with contextlib.suppress(ConnectionError):
            await answer(reader, writer, seen)
        writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield seen, port
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader, seen: Seen) -> bytes | None:
    """One request's head and body (by Content-Length), recorded in ``seen``; ``None`` at the end."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    method, path, _ = lines[0].split(" ")
    seen.requests.append((method, path, headers, body))
    return body


# ---------------------------------------------------------------- the usual answers


async def test_a_post_carries_the_exact_body_and_headers_and_reads_the_answer():
    async with aiohttp_server() as (seen, port), lean() as transport:
        headers = {"Content-Type": "application/json", "webhook-id": "msg_1", "X-Custom": "v"}
        answer = await transport.post(f"http://127.0.0.1:{port}/ok?a=1&b=%20", BODY, headers)
        assert (answer.status_code, answer.excerpt, answer.error_kind, answer.error) == (200, "fine", None, None)
        assert answer.duration_ms > 0 and abs(answer.started_at - time.time()) < 5
        [(method, path, received, body)] = seen.requests
        assert (method, path, body) == ("POST", "/ok?a=1&b=%20", BODY)
        assert received["webhook-id"] == "msg_1" and received["X-Custom"] == "v"
        assert received["Content-Type"] == "application/json" and received["Content-Length"] == str(len(BODY))
        assert received["Host"] == f"127.0.0.1:{port}" and received["User-Agent"] == USER_AGENT


async def test_keep_alive_reuses_one_connection_and_connection_close_does_not():
    async with aiohttp_server() as (seen, port), lean() as transport:
        for _ in range(5):
            assert (await transport.post(f"http://127.0.0.1:{port}/ok", BODY, {})).status_code == 200
        assert len(seen.peers) == 1
        for _ in range(3):
            answer = await transport.post(f"http://127.0.0.1:{port}/close", BODY, {})
            assert (answer.status_code, answer.excerpt) == (201, "bye")
        assert len(seen.peers) == 1 + 2  # the first close answer came on the kept connection, then one each


async def test_a_chunked_answer_is_read_to_its_end_and_the_connection_kept():
    async with aiohttp_server() as (seen, port), lean() as transport:
        for _ in range(3):
            answer = await transport.post(f"http://127.0.0.1:{port}/chunked", BODY, {})
            assert (answer.status_code, answer.excerpt) == (202, "first second third")
        assert len(seen.peers) == 1


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_uvicorn_answers_without_a_body_and_in_chunks(http):
    async with uvicorn_server(http) as (seen, port), lean() as transport:
        answer = await transport.post(f"http://127.0.0.1:{port}/empty", BODY, {"webhook-id": "msg_2"})
        assert (answer.status_code, answer.excerpt, answer.error) == (204, None, None)
        answer = await transport.post(f"http://127.0.0.1:{port}/stream", BODY, {})
        assert (answer.status_code, answer.excerpt, answer.error) == (200, "part one, part two", None)
        assert [request[3] for request in seen.requests] == [BODY, BODY]
        assert seen.requests[0][2]["webhook-id"] == "msg_2"
        assert len(seen.peers) == 1


async def test_retry_after_and_a_redirect_that_is_not_followed():
    async with aiohttp_server() as (seen, port), lean() as transport:
        busy = await transport.post(f"http://127.0.0.1:{port}/busy", BODY, {})
        assert (busy.status_code, busy.retry_after, busy.excerpt) == (503, "7", "later")
        moved = await transport.post(f"http://127.0.0.1:{port}/moved", BODY, {})
        assert moved.status_code == 302 and moved.error is None
        assert [request[1] for request in seen.requests] == ["/busy", "/moved"]


async def test_a_long_answer_keeps_an_excerpt_and_closes_instead_of_reading_on():
    async with aiohttp_server() as (seen, port), lean() as transport:
        for kind in ("huge", "huge-chunked"):
            answer = await transport.post(f"http://127.0.0.1:{port}/{kind}", BODY, {})
            assert answer.status_code == 200 and answer.error is None
            assert len(answer.excerpt) == EXCERPT_CHARACTERS and set(answer.excerpt) <= {"x", "y"}
        answer = await transport.post(f"http://127.0.0.1:{port}/ok", BODY, {})
        assert answer.status_code == 200
        assert len(seen.peers) == 3  # neither long answer's connection was kept
        assert EXCERPT_BYTES >= EXCERPT_CHARACTERS


# ---------------------------------------------------------------- failures


async def test_an_answer_slower_than_the_timeout_is_a_timeout_and_its_connection_is_dropped():
    async with aiohttp_server() as (seen, port), lean(attempt_timeout=0.3) as transport:
        started = time.monotonic()
        answer = await transport.post(f"http://127.0.0.1:{port}/hang", BODY, {})
        assert answer.status_code is None and answer.error_kind == "timeout"
        assert 250 <= answer.duration_ms < 2000 and time.monotonic() - started < 2
        answer = await transport.post(f"http://127.0.0.1:{port}/ok", BODY, {})
        assert answer.status_code == 200
        assert len(seen.peers) == 2


async def test_a_slow_answer_within_the_timeout_arrives():
    async with aiohttp_server() as (_, port), lean(attempt_timeout=2.0) as transport:
        answer = await transport.post(f"http://127.0.0.1:{port}/slow", BODY, {})
        assert (answer.status_code, answer.excerpt) == (200, "slowly") and answer.duration_ms >= 250


async def test_a_reset_and_a_refused_connection_are_connection_errors():
    async with aiohttp_server() as (seen, port), lean() as transport:
        answer = await transport.post(f"http://127.0.0.1:{port}/reset", BODY, {})
        assert answer.status_code is None and answer.error_kind == "connection" and answer.error
        assert len(seen.requests) == 1  # a fresh connection is not tried twice
    async with lean() as transport:  # nothing listens there any more
        answer = await transport.post(f"http://127.0.0.1:{port}/ok", BODY, {})
        assert answer.status_code is None and answer.error_kind == "connection"


async def test_a_status_then_a_stalled_body_still_gives_the_status():
    async def answer(reader, writer, seen):
        await read_request(reader, seen)
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(5)

    async with raw_server(answer) as (_, port), lean(attempt_timeout=0.3) as transport:
        result = await transport.post(f"http://127.0.0.1:{port}/x", BODY, {})
        assert result.status_code == 500 and result.error_kind is None
        assert result.excerpt == "partial" and "within 0.3 s" in result.error


async def test_a_body_cut_short_by_the_server_keeps_the_status_and_says_so():
    async def answer(reader, writer, seen):
        await read_request(reader, seen)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()

    async with raw_server(answer) as (_, port), lean() as transport:
        result = await transport.post(f"http://127.0.0.1:{port}/x", BODY, {})
        assert result.status_code == 200 and result.excerpt == "only this"
        assert "before the answer was complete" in result.error


async def test_a_body_ended_by_closing_the_connection_is_complete():
    async def answer(reader, writer, seen):
        await read_request(reader, seen)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it, then the end")
        await writer.drain()

    async with raw_server(answer) as (seen, port), lean() as transport:
        for _ in range(2):
            result = await transport.post(f"http://127.0.0.1:{port}/x", BODY, {})
            assert (result.status_code, result.excerpt, result.error) == (200, "all of it, then the end", None)
        assert len(seen.peers) == 2


async def test_interim_answers_are_skipped():
    async def answer(reader, writer, seen):
        while await read_request(reader, seen) is not None:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                         b"HTTP/1.1 200 OK\r\nRetry-After: 3\r\nContent-Length: 4\r\n\r\ndone")
            await writer.drain()

    async with raw_server(answer) as (seen, port), lean() as transport:
        for _ in range(2):
            result = await transport.post(f"http://127.0.0.1:{port}/x", BODY, {})
            assert (result.status_code, result.excerpt, result.retry_after) == (200, "done", "3")
        assert len(seen.peers) == 1


@pytest.mark.parametrize("garbage", [b"NOT HTTP AT ALL\r\n\r\n", b"HTTP/1.1 2x0 OK\r\n\r\n",
                                     b"HTTP/1.1 200 OK\r\nX: " + b"a" * (70 * 1024)])
async def test_a_malformed_or_endless_head_is_a_connection_error(garbage):
    async def answer(reader, writer, seen):
        await read_request(reader, seen)
        writer.write(garbage)
        await writer.drain()
        await asyncio.sleep(3)

    async with raw_server(answer) as (_, port), lean() as transport:
        result = await transport.post(f"http://127.0.0.1:{port}/x", BODY, {})
        assert result.status_code is None and result.error_kind == "connection"


async def test_an_idle_connection_closed_by_the_server_is_replaced():
    async def answer(reader, writer, seen):
        await read_request(reader, seen)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # Keep-alive was not refused, but the server drops the idle connection soon after.

    async with raw_server(answer) as (seen, port), lean() as transport:
        for _ in range(3):
            assert (await transport.post(f"http://127.0.0.1:{port}/x", BODY, {})).status_code == 200
            await asyncio.sleep(0.05)
        assert len(seen.requests) == 3 and len(seen.peers) == 3


async def test_a_reused_connection_closed_as_the_request_arrives_is_sent_again_once():
    async def answer(reader, writer, seen):
        await read_request(reader, seen)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_request(reader, seen)  # the second request on this connection: closed unanswered

    async with raw_server(answer) as (seen, port), lean() as transport:
        assert (await transport.post(f"http://127.0.0.1:{port}/x", BODY, {})).status_code == 200
        second = await transport.post(f"http://127.0.0.1:{port}/x", BODY, {})
        assert (second.status_code, second.error) == (200, None)
        assert [request[3] for request in seen.requests] == [BODY, BODY, BODY]  # at least once
        assert len(seen.peers) == 2


async def test_idle_connections_older_than_the_idle_limit_are_not_reused(monkeypatch):
    monkeypatch.setattr(lean_transport, "IDLE_SECONDS", 0.1)
    async with aiohttp_server() as (seen, port), lean() as transport:
        assert (await transport.post(f"http://127.0.0.1:{port}/ok", BODY, {})).status_code == 200
        assert (await transport.post(f"http://127.0.0.1:{port}/ok", BODY, {})).status_code == 200
        await asyncio.sleep(0.2)
        assert (await transport.post(f"http://127.0.0.1:{port}/ok", BODY, {})).status_code == 200
        assert len(seen.peers) == 2


# ---------------------------------------------------------------- limits and cancellation


async def test_requests_to_one_endpoint_are_bounded_and_wait_for_a_slot():
    async with aiohttp_server() as (seen, port), lean(per_endpoint=2, attempt_timeout=5) as transport:
        answers = await asyncio.gather(*(transport.post(f"http://127.0.0.1:{port}/slow", BODY, {})
                                         for _ in range(6)))
        assert [answer.status_code for answer in answers] == [200] * 6
        assert seen.most_in_flight == 2 and len(seen.peers) == 2


async def test_waiting_for_a_slot_counts_against_the_attempt_timeout():
    async with aiohttp_server() as (seen, port), lean(per_endpoint=1, attempt_timeout=5) as transport:
        holding = asyncio.create_task(transport.post(f"http://127.0.0.1:{port}/hang", BODY, {}))
        while not seen.requests:
            await asyncio.sleep(0.01)
        transport.attempt_timeout = 0.3  # read when a request starts: this one gives up first
        started = time.monotonic()
        waiting = await transport.post(f"http://127.0.0.1:{port}/ok", BODY, {})
        assert waiting.error_kind == "timeout" and 0.25 < time.monotonic() - started < 2
        assert [request[1] for request in seen.requests] == ["/hang"]  # it never got a connection
        holding.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holding
        assert (await transport.post(f"http://127.0.0.1:{port}/ok", BODY, {})).status_code == 200


async def test_a_cancelled_request_frees_its_slot_and_drops_its_connection():
    async with aiohttp_server() as (seen, port), lean(per_endpoint=1, attempt_timeout=5) as transport:
        hanging = asyncio.create_task(transport.post(f"http://127.0.0.1:{port}/hang", BODY, {}))
        while not seen.requests:
            await asyncio.sleep(0.01)
        hanging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hanging
        answer = await asyncio.wait_for(transport.post(f"http://127.0.0.1:{port}/ok", BODY, {}), 2)
        assert answer.status_code == 200 and len(seen.peers) == 2


# ---------------------------------------------------------------- what is never sent


@pytest.mark.parametrize("headers", [{"X-Evil": "a\r\nX-Injected: 1"}, {"X-Evil": "a\nb"}, {"X-Evil": "a\0"},
                                     {"Bad Name": "v"}, {"X-Evil:": "v"}, {"": "v"}])
async def test_headers_that_would_break_the_framing_are_refused_without_a_request(headers):
    async with aiohttp_server() as (seen, port), lean() as transport:
        answer = await transport.post(f"http://127.0.0.1:{port}/ok", BODY, headers)
        assert answer.status_code is None and answer.error_kind == "connection"
        assert seen.requests == []


async def test_framing_headers_are_the_transports_own_and_a_custom_user_agent_is_kept():
    async with aiohttp_server() as (seen, port), lean() as transport:
        answer = await transport.post(f"http://127.0.0.1:{port}/ok", BODY, {
            "Content-Length": "3", "Host": "evil.example", "Transfer-Encoding": "chunked",
            "Connection": "close", "user-agent": "custom/1"})
        assert answer.status_code == 200
        [(_, _, received, body)] = seen.requests
        assert body == BODY and received["Content-Length"] == str(len(BODY))
        assert received["Host"] == f"127.0.0.1:{port}" and "Transfer-Encoding" not in received
        assert received["User-Agent"] == "custom/1"


async def test_credentials_in_the_url_are_refused_without_a_request():
    async with aiohttp_server() as (seen, port), lean() as transport:
        for url in (f"http://user%40x:p%3Ass@127.0.0.1:{port}/ok", f"http://token@127.0.0.1:{port}/ok"):
            answer = await transport.post(url, BODY, {})
            assert answer.status_code is None and answer.error_kind == "refused_target"
            assert "custom_headers" in answer.error and "p:ss" not in answer.error
        assert seen.requests == [] and seen.peers == set()


async def test_the_url_is_normalised_before_connecting():
    async with aiohttp_server() as (seen, port), lean() as transport:
        for spelling in (f"http://１２７。０。０。１:{port}/ok", f"HTTP://0x7f.1:{port}/ok", f"http://2130706433:{port}/ok"):
            assert (await transport.post(spelling, BODY, {})).status_code == 200
        assert [request[2]["Host"] for request in seen.requests] == [f"127.0.0.1:{port}"] * 3


# ---------------------------------------------------------------- the SSRF guard


class FixedResolver:
    """Every name resolves to the given addresses (the DNS answer a test chooses)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.asked: list[str] = []

    async def resolve(self, host, port):
        self.asked.append(host)
        return [(socket.AF_INET6 if ":" in address else socket.AF_INET, address) for address in self.addresses]

    async def close(self):
        pass


async def test_a_name_that_resolves_to_loopback_is_refused_after_resolving():
    async with aiohttp_server() as (seen, port):
        for addresses in (("127.0.0.1",), ("10.0.0.1", "127.0.0.1"), ("169.254.169.254",),
                          ("::ffff:127.0.0.1",), ("0177.0.0.1",), ("127.1",), ("１２７.０.０.１",)):
            resolver = FixedResolver(*addresses)
            async with lean(TargetPolicy(allow_http=True), resolver=resolver) as transport:
                answer = await transport.post(f"http://innocent.example:{port}/ok", BODY, {})
            assert answer.status_code is None and answer.error_kind == "refused_target"
            assert "innocent.example resolves to no allowed address" in answer.error
            assert resolver.asked == ["innocent.example"]
        async with lean(TargetPolicy(allow_http=True)) as transport:  # a literal address: decided when connecting
            for spelling in ("127.0.0.1", "127.1", "0x7f000001", "[::ffff:127.0.0.1]"):
                answer = await transport.post(f"http://{spelling}:{port}/ok", BODY, {})
                assert answer.error_kind == "refused_target" and "loopback" in answer.error
        async with lean(TargetPolicy()) as transport:
            answer = await transport.post(f"http://hooks.example:{port}/ok", BODY, {})
            assert answer.error_kind == "refused_target" and "https://" in answer.error
        assert seen.requests == []


async def test_a_name_whose_addresses_are_all_refused_is_not_connected_to():
    """Each of a name's addresses is decided; the refusal names every one."""
    async with aiohttp_server() as (seen, port):
        resolver = FixedResolver("127.0.0.1", "192.0.2.1")
        async with lean(TargetPolicy(allow_http=True), resolver=resolver, attempt_timeout=0.5) as transport:
            answer = await transport.post(f"http://innocent.example:{port}/ok", BODY, {})
        assert answer.status_code is None and answer.error_kind == "refused_target"
        assert "127.0.0.1 is a loopback address" in answer.error and "192.0.2.1 is a documentation" in answer.error
        assert seen.requests == [] and seen.peers == set()


async def test_a_resolved_name_is_connected_to_at_the_address_that_was_checked():
    async with aiohttp_server() as (seen, port):
        resolver = FixedResolver("127.0.0.1")
        async with lean(OPEN, resolver=resolver) as transport:
            for _ in range(2):
                answer = await transport.post(f"http://hooks.example:{port}/ok", BODY, {})
                assert answer.status_code == 200
        assert resolver.asked == ["hooks.example"]  # one connection, one resolution
        assert seen.requests[0][2]["Host"] == f"hooks.example:{port}"


# ---------------------------------------------------------------- TLS


def certificate_authority():
    """A CA and a server certificate for ``localhost`` and 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tidings test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
                   .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                               x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(ca_key, hashes.SHA256()))
    return ca, certificate, key


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    ca, certificate, key = certificate_authority()
    folder = tmp_path_factory.mktemp("tls")
    (folder / "server.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(folder / "server.pem", folder / "server.key")
    names = []
    server.sni_callback = lambda connection, name, context: names.append(name)
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client, names


async def test_https_verifies_the_certificate_and_sends_the_name(tls):
    server_context, client_context, names = tls
    async with aiohttp_server(server_context) as (seen, port):
        async with lean(TargetPolicy(allow_private=True), ssl_context=client_context) as transport:
            for _ in range(2):
                answer = await transport.post(f"https://localhost:{port}/ok", BODY, {})
                assert (answer.status_code, answer.excerpt) == (200, "fine")
            answer = await transport.post(f"https://127.0.0.1:{port}/ok", BODY, {})
            assert answer.status_code == 200
        assert "localhost" in names  # SNI
        assert [request[3] for request in seen.requests] == [BODY] * 3 and len(seen.peers) == 2
        async with lean(TargetPolicy(allow_private=True)) as transport:  # the system's CAs do not know this one
            answer = await transport.post(f"https://localhost:{port}/ok", BODY, {})
            assert answer.status_code is None and answer.error_kind == "connection"
            assert "certificate" in answer.error.lower()
        assert len(seen.requests) == 3


async def test_idle_connections_are_closed_by_the_sweep(monkeypatch):
    monkeypatch.setattr(lean_transport, "IDLE_SECONDS", 0.1)
    closed = asyncio.Event()

    async def answer(reader, writer, seen):
        await read_request(reader, seen)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if await reader.read() == b"":  # the client closed its idle connection
            closed.set()

    async with raw_server(answer) as (_, port), lean() as transport:
        assert (await transport.post(f"http://127.0.0.1:{port}/x", BODY, {})).status_code == 200
        await asyncio.wait_for(closed.wait(), 2)


async def test_bytes_that_answer_no_request_retire_the_connection():
    async def answer(reader, writer, seen):
        while await read_request(reader, seen) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")  # an answer to nothing

    async with raw_server(answer) as (seen, port), lean() as transport:
        for _ in range(2):
            result = await transport.post(f"http://127.0.0.1:{port}/x", BODY, {})
            assert (result.status_code, result.excerpt) == (200, "ok")
            await asyncio.sleep(0.1)
        assert len(seen.peers) == 2
