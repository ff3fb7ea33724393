"""The receiver's read side behind a door (issue 14, item 2), over real sockets:
the public listener serves the webhook and ``/health`` and nothing stored, with
any ``Host``; the admin listener lets in only the token (bearer, or a browser
signed in by the token URL with a cookie that is not the token), only under its
own ``Host`` names, and only same-origin form posts with the cookie."""

from __future__ import annotations

import http.client

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.test_receiver_helpers import ADMIN_TOKEN, Keys, ServedReceiver, post, wait_until
from tidings.contract.samples import SampleFactory
from tidings.receiver.handler_runner import list_failures
from tidings.receiver.handlers import Handlers
from tidings.apps.receiver_service import ReceiverConfig
from tidings.web.admin_door import (
    AdminSessions,
    Knock,
    allowed_hosts,
    bearer_token,
    decide,
    same_origin,
    split_token,
)
from tests.browser.servers import message_event

CONSUMER = "Zelda Quarantino"  # what must never come out of the public listener
TEXT = "my secret order number is 4711"
QUARANTINED = b'{"type": "message_created", "payload": {"org_id": 1, "message": "a body that does not parse"}}'
READ_PATHS = [
    "/", "/events", "/events?after=0", "/gaps", "/gaps?waiting=true", "/inbox", "/inbox/conversations",
    "/inbox/conversations/{conversation}/messages", "/inbox/threads/{conversation}", "/inbox/quarantine",
    "/inbox/dead-letters", "/inbox/events?view=list", "/inbox/static/live.js", "/openapi.json", "/docs",
]


def get(port: int, path: str, host: str | None, headers: dict[str, str] | None = None,
        method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request with exactly the ``Host`` given (None: no Host header at all)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            connection.putheader("Host", host)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.endheaders()
        answer = connection.getresponse()
        headers = {k.lower(): v for k, v in answer.getheaders()}
        streaming = headers.get("content-type", "").startswith("text/event-stream")
        return answer.status, headers, b"" if streaming else answer.read(200_000)
    finally:
        connection.close()


class Stored:
    """A receiver holding an event, a quarantined body and a dead letter, served on two sockets."""

    def __init__(self, db_url: str) -> None:
        self.keys = Keys()
        handlers = Handlers()

        @handlers.on("message_created", name="always_fails", max_tries=1)
        def always_fails(_event) -> None:
            raise RuntimeError("down")

        config = ReceiverConfig(db_url=db_url, public_keys=[self.keys.public_pem], org_ids=[1], poll_interval=0.02,
                                backoff_base=0.0)
        self.served = ServedReceiver(config, handlers)
        document = orjson.loads(message_event(SampleFactory(1), consumer=CONSUMER, text=TEXT))
        document["payload"]["org_id"] = 1
        self.body = orjson.dumps(document)
        self.conversation = document["payload"]["conversation"]["id"]

    def __enter__(self) -> Stored:
        self.served.__enter__()
        assert post(self.served.url + "/webhook", self.body, self.keys.headers(self.body)).status_code == 200
        assert post(self.served.url + "/webhook", QUARANTINED, self.keys.headers(QUARANTINED)).json() == {
            "status": "quarantined"}
        log = self.served.service.log
        wait_until(lambda: list_failures(log, dead=True), timeout=15)
        with self.served.admin_client() as admin:
            wait_until(lambda: admin.get("/inbox/conversations").json()["conversations"], timeout=15)
        return self

    def __exit__(self, *exc) -> None:
        self.served.__exit__(*exc)

    def paths(self) -> list[str]:
        return [path.format(conversation=self.conversation) for path in READ_PATHS]

    @property
    def public_port(self) -> int:
        return self.served.public.port

    @property
    def admin_port(self) -> int:
        return self.served.admin_server.port

    def leaks(self, body: bytes) -> bool:
        return CONSUMER.encode() in body or TEXT.encode() in body or b"does not parse" in body or b"down" in body


@pytest.fixture
def stored(sqlite_url):
    with Stored(sqlite_url) as receiver:
        yield receiver


# ---------------------------------------------------------------- the public listener


def test_no_get_on_the_public_listener_returns_stored_data_with_any_host(stored: Stored):
    port = stored.public_port
    hosts = [f"127.0.0.1:{port}", f"localhost:{port}", "evil.example", f"127.0.0.1:{stored.admin_port}", "", None]
    for path in stored.paths():
        for host in hosts:
            status, _, body = get(port, path, host)
            assert status == 404, (path, host, status, body)
            assert not stored.leaks(body)
    for host in hosts:
        assert get(port, "/health", host)[0:3:2] == (200, b'{"status":"ok"}')
        status, _, body = get(port, "/webhook", host)
        assert status == 405 and not stored.leaks(body)
        # The token opens nothing here either.
        status, _, body = get(port, "/inbox?token=" + ADMIN_TOKEN, host, {"authorization": f"Bearer {ADMIN_TOKEN}"})
        assert status == 404 and not stored.leaks(body)


def test_any_path_and_host_on_the_public_listener_is_404_or_the_webhook(stored: Stored):
    port = stored.public_port
    path_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/_-.?=&%", max_size=40)
    paths = st.sampled_from(stored.paths()) | path_text.map(lambda text: "/" + text)
    hosts = st.sampled_from(["evil.example", f"127.0.0.1:{port}", "localhost", None]) | st.from_regex(
        r"\A[a-z0-9.-]{1,30}(:[0-9]{1,5})?\Z")

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=paths, host=hosts)
    def check(path: str, host: str | None) -> None:
        status, _, body = get(port, path, host)
        event(f"status {status}")
        assert not stored.leaks(body)
        bare = path.split("?")[0]
        if bare == "/health":
            assert status == 200
        elif bare == "/webhook" or (bare.startswith("/webhook/") and "/" not in bare[len("/webhook/"):]):
            assert status == 405  # a GET on the webhook's path
        else:
            assert status == 404

    check()


# ---------------------------------------------------------------- the admin listener


def test_the_admin_listener_refuses_without_the_token_and_under_a_foreign_host(stored: Stored):
    port = stored.admin_port
    own = f"127.0.0.1:{port}"
    bearer = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    for path in stored.paths():
        status, headers, body = get(port, path, own)
        assert status == 401 and not stored.leaks(body), (path, status)
        assert headers["www-authenticate"] == "Bearer"
        assert get(port, path, own, {"authorization": "Bearer not-the-token"})[0] == 401
        assert get(port, path, own, {"cookie": f"tidings_admin_{port}={ADMIN_TOKEN}"})[0] == 401  # the token is no cookie
        for foreign in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1"):
            status, _, body = get(port, path, foreign, bearer)
            assert status == 403 and not stored.leaks(body), (path, foreign, status)
        status, _, body = get(port, path, None, bearer)
        assert status == 400 and not stored.leaks(body)
    # With the token, under its own names, the read API answers.
    for name in (own, f"localhost:{port}", f"[::1]:{port}"):
        status, _, body = get(port, "/events", name, bearer)
        assert status == 200 and CONSUMER.encode() in body


def test_the_token_url_signs_a_browser_in_with_a_cookie_that_is_not_the_token(stored: Stored):
    port = stored.admin_port
    own = f"127.0.0.1:{port}"
    status, headers, _ = get(port, f"/inbox/threads/{stored.conversation}?token={ADMIN_TOKEN}&x=1", own)
    assert status == 303
    assert headers["location"] == f"/inbox/threads/{stored.conversation}?x=1"  # the token leaves the URL
    cookie = headers["set-cookie"]
    name, value = cookie.split(";")[0].split("=", 1)
    assert name == f"tidings_admin_{port}"
    assert value != ADMIN_TOKEN and ADMIN_TOKEN not in cookie
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    status, _, body = get(port, f"/inbox/threads/{stored.conversation}", own, {"cookie": f"{name}={value}"})
    assert status == 200 and CONSUMER.encode() in body
    # A wrong token in the URL opens nothing; nor does the cookie under another Host.
    assert get(port, f"/inbox?token={ADMIN_TOKEN}x", own)[0] == 401
    assert get(port, "/inbox", "rebound.example", {"cookie": f"{name}={value}"})[0] == 403


def test_a_cookie_post_needs_this_listeners_origin_and_a_bearer_post_does_not(stored: Stored):
    port = stored.admin_port
    own = f"127.0.0.1:{port}"
    cookie = get(port, f"/inbox?token={ADMIN_TOKEN}", own)[1]["set-cookie"].split(";")[0]
    log = stored.served.service.log
    path = "/inbox/quarantine/reprocess"
    for origin in (None, "null", "http://evil.example", f"http://localhost:{port}", f"http://127.0.0.1:{port + 1}"):
        headers = {"cookie": cookie, "content-length": "0"} | ({"origin": origin} if origin else {})
        status, _, _ = get(port, path, own, headers, method="POST")
        assert status == 403, origin
    assert len(log.quarantined()) == 1  # nothing was done
    status, headers, _ = get(port, path, own, {"cookie": cookie, "origin": f"http://{own}", "content-length": "0"},
                             method="POST")
    assert status == 303 and headers["location"].startswith("/inbox/quarantine?done=reprocessed")
    status, _, _ = get(port, "/inbox/dead-letters/replay", own,
                       {"authorization": f"Bearer {ADMIN_TOKEN}", "content-length": "0"}, method="POST")
    assert status == 303


# ---------------------------------------------------------------- the door's rule, without sockets


HOSTS = allowed_hosts("127.0.0.1", 8001, ["inbox.example.com", "Proxy.Example:8443", "::1"])


def knock(**fields) -> Knock:
    defaults = dict(method="GET", host="127.0.0.1:8001", query_token=None, bearer=None, has_session=False, origin=None)
    return Knock(**(defaults | fields))


def test_the_doors_rule():
    token = "t" * 20
    assert decide(knock(), token, HOSTS).status == 401
    assert decide(knock(bearer=token), token, HOSTS).action == "enter"
    assert decide(knock(bearer="x" + token), token, HOSTS).status == 401
    assert decide(knock(query_token=token), token, HOSTS).action == "sign_in"
    assert decide(knock(query_token=token, method="POST"), token, HOSTS).status == 405
    assert decide(knock(has_session=True), token, HOSTS).action == "enter"
    assert decide(knock(has_session=True, method="POST"), token, HOSTS).status == 403
    assert decide(knock(has_session=True, method="POST", origin="http://127.0.0.1:8001"), token, HOSTS).action == "enter"
    assert decide(knock(bearer=token, method="POST"), token, HOSTS).action == "enter"
    assert decide(knock(host=None, bearer=token), token, HOSTS).status == 400
    for host in ("evil.example", "127.0.0.1", "127.0.0.1:8002", "localhost.evil.example:8001", "proxy.example",
                 "proxy.example:8001"):
        assert decide(knock(host=host, bearer=token, has_session=True), token, HOSTS).status == 403
    for host in ("LOCALHOST:8001", "[::1]:8001", "inbox.example.com", "inbox.example.com:8001", "proxy.example:8443",
                 "[::1]"):
        assert decide(knock(host=host, bearer=token), token, HOSTS).action == "enter"


@settings(max_examples=300)
@given(method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE"]), host=st.sampled_from(sorted(HOSTS)),
       bearer=st.none() | st.text(max_size=30), query_token=st.none() | st.text(max_size=30),
       has_session=st.booleans(), origin=st.none() | st.sampled_from(["null", "http://evil.example"]))
def test_no_one_without_the_token_or_a_session_gets_in(method, host, bearer, query_token, has_session, origin):
    token = "the-one-true-token-0123456789"
    verdict = decide(Knock(method, host, query_token, bearer, has_session, origin), token, HOSTS)
    event(verdict.action)
    if verdict.action != "refuse":
        assert bearer == token or (bearer is None and (query_token == token or (query_token is None and has_session)))
    if verdict.action == "enter" and method not in ("GET", "HEAD"):
        assert bearer == token  # a cookie alone never changes anything from a foreign or missing Origin


def test_sessions_are_opaque_expire_and_are_bounded():
    now = [0.0]
    sessions = AdminSessions(lifetime=10, limit=2, clock=lambda: now[0])
    first = sessions.open()
    assert sessions.is_open(first) and not sessions.is_open(first + "x") and not sessions.is_open(None)
    second, third = sessions.open(), sessions.open()
    assert not sessions.is_open(first) and sessions.is_open(second) and sessions.is_open(third)  # the oldest went
    now[0] = 10.0
    assert not sessions.is_open(second) and len(sessions) == 1


def test_small_parts():
    assert bearer_token("Bearer  abc") == "abc" and bearer_token("Token abc") is None
    assert split_token("a=1&token=x&b=2") == ("x", "a=1&b=2")
    assert same_origin("http://h:1", "h:1") and not same_origin(None, "h:1") and not same_origin("ftp://h:1", "h:1")
