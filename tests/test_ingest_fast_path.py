"""The ingestion fast path (``fast_ingest.IngestHttpProtocol``) answers exactly
as the FastAPI route does, over real sockets, for good and bad requests; it
keeps HTTP/1.1 right; ``tidings serve`` uses it."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3

import pytest
from sqlalchemy import insert, select

from tests.platform_support import create_schema, platform_settings
from tests.loopback import UvicornThread, loopback_socket, port_of
from tidings.contract import utcnow
from tidings.contract.signing import Signer, generate_private_key, generate_secret
from tidings.platform import tenants
from tidings.platform.api import fast_ingest
from tidings.platform.api.app import create_app, http_protocol
from tidings.platform.api.context import PlatformContext
from tidings.platform.api.fast_ingest import IngestHttpProtocol, fast_request
from tidings.store.engine import create_engine
from tidings.store.platform_tables import conversations, deliveries, events, messages, webhook_configs


# ---------------------------------------------------------------- set-up


def build_database(url: str) -> dict:
    """Two organizations; A has two businesses, a channel and a message_created webhook; a PROVIDER key manages A."""
    create_schema(url)

    async def fill() -> dict:
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                org_a, key_a = await tenants.create_organization(conn, "A")
                org_b, key_b = await tenants.create_organization(conn, "B")
                ids = {
                    "org_a": org_a, "org_b": org_b, "key_a": key_a, "key_b": key_b,
                    "shop": await tenants.create_business(conn, org_a, "A shop"),
                    "other_shop": await tenants.create_business(conn, org_a, "A annex"),
                    "b_shop": await tenants.create_business(conn, org_b, "B shop"),
                    "chat": await tenants.create_custom_channel(conn, org_a, "A chat"),
                    "b_chat": await tenants.create_custom_channel(conn, org_b, "B chat"),
                    "provider": await tenants.create_provider_key(conn, "Agency", [org_a]),
                }
                now = utcnow()
                await conn.execute(insert(webhook_configs).values(
                    org_id=org_a, url="http://127.0.0.1:9/hook", event_type="message_created", custom_headers={},
                    secret=generate_secret(), created_at=now, updated_at=now))
        finally:
            await engine.dispose()
        return ids

    return asyncio.run(fill())


def twin(source: str, target: str) -> None:
    """A copy of the SQLite database at ``source``, ids and keys included."""
    with sqlite3.connect(source) as conn:
        conn.execute("VACUUM INTO ?", (target,))


def platform_app(url: str):
    return create_app(PlatformContext(settings=platform_settings(url), engine=create_engine(url),
                                      signer=Signer(generate_private_key())))


@pytest.fixture
def fast_path_use(monkeypatch) -> dict[str, int]:
    """How many requests the fast path answered, and how many it handed to FastAPI after reading their body."""
    counts = {"answered": 0, "let_go": 0}
    respond, let_go = IngestHttpProtocol._respond, IngestHttpProtocol._let_go

    def counting_respond(self, *args, **kwargs):
        counts["answered"] += 1
        return respond(self, *args, **kwargs)

    def counting_let_go(self, *args):
        counts["let_go"] += 1
        return let_go(self, *args)

    monkeypatch.setattr(IngestHttpProtocol, "_respond", counting_respond)
    monkeypatch.setattr(IngestHttpProtocol, "_let_go", counting_let_go)
    return counts


# ---------------------------------------------------------------- raw HTTP


def request(path: str, body: bytes | None = None, headers: dict[str, str] | None = None, *, method: str = "POST",
            version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def read_answer(sock: socket.socket, buffer: bytearray) -> tuple[int, list[tuple[str, str]], bytes]:
    """One answer: status, headers in order (``date`` left out), body."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before an answer")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [(name.lower(), value.strip()) for name, _, value in (line.partition(":") for line in lines)]
    length = int(dict(headers).get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        rest += chunk
    buffer[:] = rest[length:]
    return int(status_line.split()[1]), [h for h in headers if h[0] != "date"], rest[:length]


def ask(port: int, raw: bytes) -> tuple[int, list[tuple[str, str]], bytes, bool]:
    """Sends ``raw`` on a new connection; the answer, and whether the server closed the connection after it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        buffer = bytearray()
        status, headers, body = read_answer(sock, buffer)
        sock.settimeout(0.3)
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
        except ConnectionResetError:  # closed with bytes of ours unread (a refused body)
            closed = True
    return status, headers, body, closed


def message(ids: dict, conversation: str, external_id: str, **changes) -> bytes:
    document = {"business_id": ids["shop"], "external_conversation_id": conversation,
                "external_message_id": external_id, "content": f"text of {external_id}", "sender_type": "Consumer",
                "consumer_name": "Ann"}
    document.update(changes)
    return json.dumps({k: v for k, v in document.items() if v is not None}).encode()


def cases(ids: dict) -> list[tuple[str, bytes]]:
    """(what, raw request): good and bad requests, in the order they are sent."""
    chat, key = f"/v2/custom-channels/{ids['chat']}/messages", ids["key_a"]
    as_a = {"x-APIKey": key, "Content-Type": "application/json"}
    return [
        ("the first message: the key is not known yet", request(chat, message(ids, "c1", "m1"), as_a)),
        ("a second message in the conversation", request(chat, message(ids, "c1", "m2", consumer_name=None), as_a)),
        ("a duplicate", request(chat, message(ids, "c1", "m2", content="changed"), as_a)),
        ("a new conversation, a business user's message", request(chat, message(
            ids, "c2", "m3", sender_type="User", sender_label="Bob", content_type="Image"), as_a)),
        ("a charset in the content type", request(chat, message(ids, "c2", "m4"), {
            "x-APIKey": key, "Content-Type": "Application/JSON; charset=utf-8"})),
        ("a business of another organization", request(chat, message(ids, "c3", "m5", business_id=ids["b_shop"]), as_a)),
        ("an unknown business", request(chat, message(ids, "c3", "m5", business_id="f" * 24), as_a)),
        ("the conversation of another business", request(chat, message(
            ids, "c1", "m6", business_id=ids["other_shop"]), as_a)),
        ("a sender type that is not ingested", request(chat, message(ids, "c1", "m7", sender_type="Bot"), as_a)),
        ("an unknown channel", request(f"/v2/custom-channels/{'a' * 24}/messages", message(ids, "c1", "m8"), as_a)),
        ("another organization's channel", request(
            f"/v2/custom-channels/{ids['b_chat']}/messages", message(ids, "c1", "m9"), as_a)),
        ("a channel id longer than 24", request(f"/v2/custom-channels/{'a' * 25}/messages", message(ids, "c1", "m10"), as_a)),
        ("a NUL in the channel id", request("/v2/custom-channels/a%00b/messages", message(ids, "c1", "m10"), as_a)),
        ("malformed JSON", request(chat, b'{"business_id": ', as_a)),
        ("not an object", request(chat, b'["a", "b"]', as_a)),
        ("an empty body", request(chat, b"", as_a)),
        ("a missing field", request(chat, message(ids, "c1", "m11", content=None), as_a)),
        ("an unknown field", request(chat, message(ids, "c1", "m12", colour="red"), as_a)),
        ("a field too long", request(chat, message(ids, "c1", "m13", external_message_id="x" * 501), as_a)),
        ("a NUL in the content", request(chat, message(ids, "c1", "m14", content="a\u0000b"), as_a)),
        ("a lone surrogate", request(chat, message(ids, "c1", "m15").replace(b"text of m15", b"\\ud800"), as_a)),
        ("a number for a string", request(chat, message(ids, "c1", "m16", content=5), as_a)),
        ("NaN for a string", request(chat, message(ids, "c1", "m17").replace(b'"text of m17"', b"NaN"), as_a)),
        ("duplicate keys in the JSON", request(chat, message(ids, "c1", "m18")[:-1] + b', "content": "last"}', as_a)),
        ("not JSON: text/plain", request(chat, message(ids, "c1", "m19"), {"x-APIKey": key, "Content-Type": "text/plain"})),
        ("no content type", request(chat, message(ids, "c1", "m20"), {"x-APIKey": key})),
        ("no key", request(chat, message(ids, "c1", "m21"), {"Content-Type": "application/json"})),
        ("an empty key", request(chat, message(ids, "c1", "m21"), {"x-APIKey": "", "Content-Type": "application/json"})),
        ("an unknown key", request(chat, message(ids, "c1", "m21"), {"x-APIKey": "tdk_nope", "Content-Type": "application/json"})),
        ("another organization's key", request(chat, message(ids, "c1", "m22"), {
            "x-APIKey": ids["key_b"], "Content-Type": "application/json"})),
        ("an org_id of another organization", request(f"{chat}?org_id={ids['org_b']}", message(ids, "c1", "m23"), as_a)),
        ("its own org_id", request(f"{chat}?org_id={ids['org_a']}", message(ids, "c1", "m24"), as_a)),
        ("a PROVIDER key with org_id", request(f"{chat}?org_id={ids['org_a']}", message(ids, "c1", "m25"), {
            "x-APIKey": ids["provider"], "Content-Type": "application/json"})),
        ("a PROVIDER key, known now, without org_id", request(chat, message(ids, "c1", "m26"), {
            "x-APIKey": ids["provider"], "Content-Type": "application/json"})),
        ("a PROVIDER key for an organization it does not manage", request(f"{chat}?org_id={ids['org_b']}", message(
            ids, "c1", "m27"), {"x-APIKey": ids["provider"], "Content-Type": "application/json"})),
        ("two keys", request(chat, message(ids, "c1", "m28"), as_a).replace(
            b"x-APIKey:", f"x-APIKey: tdk_nope\r\nx-APIKey: {key}\r\nX-Other:".encode(), 1)),
        ("HTTP/1.0", request(chat, message(ids, "c4", "m29"), as_a, version="HTTP/1.0")),
        ("Connection: close", request(chat, message(ids, "c4", "m30"), {**as_a, "Connection": "close"})),
        ("a GET on the path", request(chat, None, as_a, method="GET")),
        ("a PUT on the path", request(chat, message(ids, "c4", "m31"), as_a, method="PUT")),
        ("a trailing slash", request(chat + "/", message(ids, "c4", "m32"), as_a)),
        ("the last, good message", request(chat, message(ids, "c4", "m33"), as_a)),
    ]


# ---------------------------------------------------------------- the tests


def test_the_fast_path_answers_as_the_fastapi_route(tmp_path, fast_path_use):
    source = str(tmp_path / "source.db")
    ids = build_database(f"sqlite:///{source}")
    for name in ("plain", "fast"):
        twin(source, str(tmp_path / f"{name}.db"))
    answers = {}
    for name, http in (("plain", "httptools"), ("fast", IngestHttpProtocol)):
        with UvicornThread(platform_app(f"sqlite:///{tmp_path / name}.db"), http=http) as server:
            answers[name] = [(what, ask(server.port, raw)) for what, raw in cases(ids)]

    for (what, plain), (_, fast) in zip(answers["plain"], answers["fast"]):
        assert fast == plain, what
    statuses = {what: answer[0] for what, answer in answers["fast"]}
    assert [status for status in statuses.values() if status == 200] == [200] * 11
    assert statuses["a duplicate"] == 200 and b'"duplicate":true' in dict(answers["fast"])["a duplicate"][2]
    assert (statuses["an unknown channel"], statuses["the conversation of another business"],
            statuses["a business of another organization"], statuses["malformed JSON"], statuses["no key"],
            statuses["an org_id of another organization"]) == (404, 409, 422, 422, 401, 403)
    # With organization A's key, once known, and no query string: the fast path answered what
    # the writer accepted or refused (14 requests); the 10 bodies FastAPI refuses went on to it, read already.
    assert fast_path_use == {"answered": 14, "let_go": 10}

    def stored(name: str) -> list:
        with sqlite3.connect(tmp_path / f"{name}.db") as conn:
            return [conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
                    for table in ("conversations", "messages")] + [
                conn.execute("SELECT id, event_type, conversation_id, message_id FROM events ORDER BY id").fetchall(),
                conn.execute("SELECT id, event_id, webhook_config_id, sequence, status FROM deliveries ORDER BY id").fetchall()]

    def without_times(rows: list) -> list:
        return [[tuple(value for value in row if not (isinstance(value, str) and value[:2] == "20")) for row in table]
                for table in rows]

    assert without_times(stored("fast")) == without_times(stored("plain"))
    assert len(stored("fast")[1]) == 10  # messages: 11 answers of 200, one of them the duplicate


def test_keep_alive_pipelining_and_continue(tmp_path, fast_path_use):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    ids = build_database(url)
    chat = f"/v2/custom-channels/{ids['chat']}/messages"
    as_a = {"x-APIKey": ids["key_a"], "Content-Type": "application/json"}
    with UvicornThread(platform_app(url), http=IngestHttpProtocol) as server:
        assert ask(server.port, request(chat, message(ids, "k", "first"), as_a))[0] == 200  # the key is known now
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            buffer = bytearray()
            # Three requests in one write: two for the fast path, one it lets go (malformed), then a GET.
            sock.sendall(request(chat, message(ids, "k", "p1"), as_a) + request(chat, b"{", as_a)
                         + request(chat, message(ids, "k", "p2"), as_a))
            pipelined = [read_answer(sock, buffer) for _ in range(3)]
            sock.sendall(request("/v2/conversations", None, {"x-APIKey": ids["key_a"]}, method="GET"))
            listed = read_answer(sock, buffer)
            # Expect: 100-continue, as curl sends for large bodies.
            body = message(ids, "k", "continued")
            sock.sendall(request(chat, None, {**as_a, "Expect": "100-continue", "Content-Length": str(len(body))}))
            while b"\r\n\r\n" not in buffer:
                buffer += sock.recv(100)
            assert bytes(buffer).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
            del buffer[:25]
            sock.sendall(body)
            continued = read_answer(sock, buffer)
            # A body sent in pieces.
            body = message(ids, "k", "pieces")
            sock.sendall(request(chat, body, as_a)[:-10])
            sock.sendall(body[-10:])
            pieces = read_answer(sock, buffer)
        assert [answer[0] for answer in pipelined] == [200, 422, 200]
        assert [json.loads(answer[2])["duplicate"] for answer in (pipelined[0], pipelined[2])] == [False, False]
        assert listed[0] == 200 and json.loads(listed[2])["count"] == 1
        assert (continued[0], pieces[0]) == (200, 200)
        # A client that leaves before its answer: the message is still stored, the server goes on.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(request(chat, message(ids, "k", "gone"), as_a))
        assert ask(server.port, request(chat, message(ids, "k", "gone"), as_a))[2].endswith(b'"duplicate":true}')
    assert fast_path_use == {"answered": 6, "let_go": 1}


def test_chunked_bodies_go_to_fastapi_and_bodies_past_the_limit_are_refused_unread(tmp_path, fast_path_use):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    ids = build_database(url)
    chat = f"/v2/custom-channels/{ids['chat']}/messages"
    as_a = {"x-APIKey": ids["key_a"], "Content-Type": "application/json"}
    with UvicornThread(platform_app(url), http=IngestHttpProtocol) as server:
        assert ask(server.port, request(chat, message(ids, "k", "first"), as_a))[0] == 200
        padded = message(ids, "k", "large")[:-1] + b" " * fast_ingest.MAX_FAST_BODY + b"}"
        status, _, body, closed = ask(server.port, request(chat, padded, as_a))
        assert (status, body, closed) == (413, b'{"detail":"body too large"}', True)
        body = message(ids, "k", "chunked")
        chunked = request(chat, None, {**as_a, "Transfer-Encoding": "chunked"}) + b"%x\r\n%s\r\n0\r\n\r\n" % (
            len(body), body)
        assert ask(server.port, chunked)[0] == 200
    assert fast_path_use == {"answered": 0, "let_go": 0}


def test_which_request_heads_the_fast_path_takes():
    def scope(path="/v2/custom-channels/abc/messages", query=b"", headers=None, method="POST"):
        if headers is None:
            headers = [(b"x-apikey", b"k"), (b"content-type", b"application/json"), (b"content-length", b"10")]
        return {"method": method, "path": path, "query_string": query, "root_path": "", "headers": headers}

    assert fast_request(scope()) == fast_ingest.FastRequest("abc", "k")
    assert fast_request(scope(method="PUT")) is None
    assert fast_request(scope(query=b"org_id=1")) is None
    assert fast_request(scope(path="/v2/custom-channels/a/b/messages")) is None
    assert fast_request(scope(path="/v2/custom-channels/" + "a" * 25 + "/messages")) is None
    assert fast_request(scope(headers=[(b"content-type", b"application/json"), (b"content-length", b"1")])) is None
    assert fast_request(scope(headers=[(b"x-apikey", b"k"), (b"content-length", b"1")])) is None
    assert fast_request(scope(headers=[(b"x-apikey", b"k"), (b"content-type", b"application/json")])) is None
    big = str(fast_ingest.MAX_FAST_BODY + 1).encode()
    assert fast_request(scope(headers=[(b"x-apikey", b"k"), (b"content-type", b"application/json"),
                                       (b"content-length", big)])) is None


async def test_tidings_serve_answers_ingestion_on_the_fast_path(tmp_path, fast_path_use):
    from tidings.cli.serve import run_platform

    url = f"sqlite:///{tmp_path / 'serve.db'}"
    ids = await asyncio.to_thread(build_database, url)
    assert http_protocol() == "tidings.platform.api.fast_ingest:IngestHttpProtocol"
    ready, stop = asyncio.Event(), asyncio.Event()
    with loopback_socket() as sock:  # held from bind to close, and handed to the server
        port = port_of(sock)
        serving = asyncio.create_task(run_platform(platform_settings(url), Signer(generate_private_key()),
                                                   host="127.0.0.1", port=port, with_dispatcher=False, ready=ready,
                                                   stop=stop, sock=sock))
        try:
            await asyncio.wait_for(ready.wait(), 20)
            chat = f"/v2/custom-channels/{ids['chat']}/messages"
            as_a = {"x-APIKey": ids["key_a"], "Content-Type": "application/json"}
            answers = [await asyncio.to_thread(ask, port, request(chat, message(ids, "s", f"m{n}"), as_a))
                       for n in range(3)]
        finally:
            stop.set()
            await asyncio.wait_for(serving, 20)
    assert [answer[0] for answer in answers] == [200, 200, 200]
    assert fast_path_use["answered"] == 2  # the first request made the key known

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            stored = (await conn.execute(select(messages.c.external_message_id).order_by(messages.c.id))).scalars().all()
            counts = [len((await conn.execute(select(table.c.id))).all()) for table in (conversations, events, deliveries)]
    finally:
        await engine.dispose()
    assert stored == ["m0", "m1", "m2"] and counts == [1, 3, 3]


def test_serving_gc_is_undone_afterwards():
    import gc

    from tidings.platform.api.app import SERVING_GC_THRESHOLDS, serving_gc

    before = gc.get_threshold()
    with serving_gc():
        assert gc.get_threshold() == SERVING_GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
