"""SSRF: spellings of loopback and private addresses never reach a listener.

Two parts. A hypothesis property generates spellings (Unicode digits and full
stops, decimal, octal, hexadecimal and short IPv4 forms, IPv6 forms that
embed a private IPv4 address, mixed case, trailing dots, credentials) and
checks that the save-time check refuses each, that the normaliser reads each
as the address it spells, and that the connect-time decision refuses that
address (and the spelling itself, as a hostile resolver might answer it).

Then, over real sockets, a listener on loopback that counts the connections
it accepts sees none while a platform started without
``allow_private_targets`` (http:// allowed, so that http:// spellings reach
the guard) is asked to try each spelling out (``POST /v2/webhooks/test``
over uvicorn), and while a dispatcher delivers to each one from a
configuration row written straight into the database, as an old row would
be; that attempt is recorded as ``refused_target``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio
import uvicorn
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from tests.dispatcher_support import add_configuration, add_events, fast_settings, scripted_endpoint
from tests.platform_support import running_platform, with_settings
from tidings.platform.dispatcher import Dispatcher
from tidings.platform.settings import DeliverySettings
from tidings.platform.transport.guard import (
    RefusedAddress,
    TargetPolicy,
    TargetRefused,
    address_text,
    check_target_url,
    connect_address,
    normalize_target,
)
from tidings.platform.transport.lean import LeanTransport
from tidings.store.platform_tables import attempts, deliveries, webhook_configs

HTTP_ALLOWED = TargetPolicy(allow_http=True)  # what `tidings serve --allow-http` runs with


# ---------------------------------------------------------------- the property

PRIVATE_IPV4 = [ipaddress.ip_network(network) for network in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "0.0.0.0/8",
    "100.64.0.0/10")]
PRIVATE_IPV6 = [ipaddress.ip_network(network) for network in ("::1/128", "fc00::/7", "fe80::/10")]
DIGITS = [  # each mapped to the ASCII digits by UTS-46
    "0123456789", "０１２３４５６７８９", "⓪①②③④⑤⑥⑦⑧⑨", "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗", "𝟘𝟙𝟚𝟛𝟜𝟝𝟞𝟟𝟠𝟡", "𝟢𝟣𝟤𝟥𝟦𝟧𝟨𝟩𝟪𝟫",
    "𝟶𝟷𝟸𝟹𝟺𝟻𝟼𝟽𝟾𝟿"]
DOTS = ".。．｡"


def letter_forms(letter: str) -> list[str]:
    """An ASCII letter, either case, fullwidth in either case, circled in either case."""
    offset = ord(letter.lower()) - ord("a")
    return [letter.lower(), letter.upper(), chr(0xFF41 + offset), chr(0xFF21 + offset), chr(0x24D0 + offset),
            chr(0x24B6 + offset)]


@st.composite
def dressed(draw, text: str) -> str:
    """``text`` with each digit, full stop and letter written in one of its
    Unicode forms, and some characters percent-encoded (as UTF-8)."""
    out = []
    for ch in text:
        if ch.isdigit():
            ch = draw(st.sampled_from(DIGITS))[int(ch)]
        elif ch == ".":
            ch = draw(st.sampled_from(DOTS))
        elif ch.isalpha():
            ch = draw(st.sampled_from(letter_forms(ch)))
        if draw(st.integers(0, 9)) == 0:  # percent-encoded: its UTF-8 bytes as %XX, ASCII included
            ch = "".join(f"%{byte:02X}" for byte in ch.encode())
        out.append(ch)
    return "".join(out)


RADIX_NAMES = {10: "decimal", 8: "octal", 16: "hexadecimal"}


@st.composite
def number_text(draw, value: int) -> tuple[str, int]:
    """One part of an IPv4 host in decimal, octal or hexadecimal (with leading zeros), and its radix."""
    radix = draw(st.sampled_from([10, 8, 16]))
    zeros = "0" * draw(st.integers(0, 2))
    if radix == 10:
        return str(value), radix
    if radix == 8:
        return "0" + zeros + format(value, "o"), radix
    digits = format(value, "x")
    digits = "".join(draw(st.sampled_from([d, d.upper()])) for d in digits)
    return draw(st.sampled_from(["0x", "0X"])) + zeros + digits, radix


@st.composite
def ipv4_host(draw, address: ipaddress.IPv4Address) -> tuple[str, list[str]]:
    """``address`` in one of the WHATWG forms (one to four parts, the last
    filling the rest), dressed; and what the form is made of."""
    value = int(address)
    count = draw(st.integers(1, 4))
    parts = [(value >> (8 * (3 - index))) & 0xFF for index in range(count - 1)]
    parts.append(value & ((1 << (8 * (5 - count))) - 1))
    written = [draw(number_text(part)) for part in parts]
    text = ".".join(part for part, _ in written) + draw(st.sampled_from(["", "."]))
    made_of = [f"{count} IPv4 part(s)"] + sorted({RADIX_NAMES[radix] for _, radix in written})
    return draw(dressed(text)), made_of


@st.composite
def ipv6_host(draw, address: ipaddress.IPv6Address, *, dotted_tail: bool = False) -> str:
    """``address`` in brackets: compressed or not, leading zeros, any case,
    its last 32 bits as a dotted IPv4 address when ``dotted_tail``."""
    value = int(address)
    pieces = [format((value >> (112 - 16 * index)) & 0xFFFF, "x") for index in range(8)]
    pieces = [draw(st.sampled_from([piece, piece.zfill(4)])) for piece in pieces]
    pieces = ["".join(draw(st.sampled_from([c, c.upper()])) for c in piece) for piece in pieces]
    tail = []
    if dotted_tail:
        tail = [str(ipaddress.IPv4Address(value & 0xFFFFFFFF))]
        pieces = pieces[:6]
    zero_runs = [(start, end) for start in range(len(pieces)) for end in range(start + 1, len(pieces) + 1)
                 if all(int(piece, 16) == 0 for piece in pieces[start:end])]
    if zero_runs and draw(st.booleans()):
        start, end = draw(st.sampled_from(zero_runs))
        text = ":".join(pieces[:start]) + "::" + ":".join(pieces[end:] + tail)
    else:
        text = ":".join(pieces + tail)
    return f"[{text}]"


@dataclass(frozen=True)
class Spelled:
    kind: str
    url: str  # as typed
    plain_url: str  # without its credentials
    raw_host: str  # the host as written, what a hostile resolver might answer
    host: str | None  # the canonical host it spells; None when it must not be read at all (a zone id)
    made_of: tuple[str, ...] = ()  # the forms used, for hypothesis.event


@st.composite
def embedding(draw, ipv4: ipaddress.IPv4Address, kind: str) -> ipaddress.IPv6Address:
    """An IPv6 address of ``kind`` that carries ``ipv4``."""
    value = int(ipv4)
    if kind == "mapped":
        return ipaddress.IPv6Address(0xFFFF << 32 | value)
    if kind == "compatible":
        return ipaddress.IPv6Address(value)
    if kind == "nat64":
        return ipaddress.IPv6Address(0x0064FF9B << 96 | value)
    if kind == "6to4":
        return ipaddress.IPv6Address(0x2002 << 112 | value << 80 | draw(st.integers(0, 2**80 - 1)))
    server = draw(st.integers(0, 2**32 - 1))
    return ipaddress.IPv6Address(0x20010000 << 96 | server << 64 | draw(st.integers(0, 2**32 - 1)) << 32
                                 | (~value & 0xFFFFFFFF))  # Teredo: the client inverted


@st.composite
def spellings(draw) -> Spelled:
    form = draw(st.sampled_from(["ipv4", "ipv4", "ipv6 embedding", "ipv6 private", "localhost"]))
    if form in ("ipv4", "ipv6 embedding"):
        network = draw(st.sampled_from(PRIVATE_IPV4))
        ipv4 = ipaddress.IPv4Address(draw(st.integers(int(network.network_address),
                                                      int(network.broadcast_address))))
    made_of: list[str] = []
    if form == "ipv4":
        host, made_of = draw(ipv4_host(ipv4))
        canonical = str(ipv4)
        kind = form
    elif form == "ipv6 embedding":
        kind = draw(st.sampled_from(["mapped", "compatible", "nat64", "6to4", "teredo"]))
        address = draw(embedding(ipv4, kind))
        host = draw(ipv6_host(address, dotted_tail=kind in ("mapped", "compatible", "nat64") and draw(st.booleans())))
        canonical = f"[{address_text(address)}]"
        kind = f"ipv6 {kind}"
    elif form == "ipv6 private":
        network = draw(st.sampled_from(PRIVATE_IPV6))
        address = ipaddress.IPv6Address(draw(st.integers(int(network.network_address),
                                                          int(network.broadcast_address))))
        host = draw(ipv6_host(address))
        canonical = f"[{address_text(address)}]"
        kind = "ipv6 private"
        if draw(st.integers(0, 4)) == 0:
            host = host[:-1] + draw(st.sampled_from(["%25eth0", "%25lo", "%251"])) + "]"
            canonical = None
            kind = "ipv6 zone id"
    else:
        host = draw(dressed("localhost")) + draw(st.sampled_from(["", ".", "。"]))
        canonical = "localhost"
        kind = "localhost"
    scheme = "".join(draw(st.sampled_from([c, c.upper()])) for c in draw(st.sampled_from(["http", "https"])))
    port = draw(st.sampled_from(["", ":8080", ":443", ":5432"]))
    path = draw(st.sampled_from(["/", "/hook", "/latest/meta-data?x=1", ""]))
    credentials = draw(st.sampled_from(["", "", "", "user:secret@", "token@", "a%40b:c@"]))
    plain = f"{scheme}://{host}{port}{path}"
    url = f"{scheme}://{credentials}{host}{port}{path}"
    return Spelled(kind + (" with credentials" if credentials else ""), url, plain, host, canonical, tuple(made_of))


def normalized_host(url: str) -> str:
    """The host of a normalised URL (bracketed when IPv6), without its port."""
    netloc = urlsplit(url).netloc
    if netloc.startswith("["):
        return netloc[:netloc.index("]") + 1]
    return netloc.partition(":")[0]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spellings())
def test_every_spelling_of_a_private_address_is_refused_at_save_time_and_at_connect_time(spelled):
    # Save time: the API's and the tryout's check.
    with pytest.raises(TargetRefused) as refused:
        check_target_url(spelled.url, HTTP_ALLOWED)
    event(f"refused at save time: {spelled.kind}")
    if "credentials" in spelled.kind:
        assert "credentials" in refused.value.reason
    # The normaliser reads the spelling as the address it spells (what the transport connects to).
    if spelled.host is None:
        with pytest.raises(TargetRefused, match="zone id"):
            normalize_target(spelled.plain_url)
        event("refused when normalised: an IPv6 zone id")
        candidates = []
    else:
        host = normalized_host(normalize_target(spelled.plain_url))
        assert host == spelled.host, spelled
        if host == "localhost":  # a name: what the system resolves it to
            candidates = [info[4][0] for info in socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)]
            assert candidates
        else:
            candidates = [host.strip("[]")]
    # Connect time: every address the socket could be handed, and the spelling itself as a resolver's answer.
    for candidate in [*candidates, spelled.raw_host.strip("[]")]:
        with pytest.raises(RefusedAddress):
            connect_address(candidate, HTTP_ALLOWED)
    event(f"refused at connect time: {len(candidates) + 1} addresses")
    for feature in features(spelled):
        event(f"spelled with {feature}")


def features(spelled: Spelled) -> list[str]:
    """What a spelling's host is made of, to see that the generator reaches each form."""
    host = spelled.raw_host
    found = []
    if not host.isascii():
        found.append("Unicode characters")
    if any(dot in host for dot in DOTS[1:]):
        found.append("Unicode full stops")
    if "%" in host and "zone id" not in spelled.kind:
        found.append("percent-encoding")
    found.extend(spelled.made_of)
    if host.endswith((".", "。", "．", "｡")):
        found.append("a trailing dot")
    if any(c.isupper() for c in host):
        found.append("upper case")
    return found


# ---------------------------------------------------------------- the API stores what it checked


async def test_the_api_stores_and_answers_the_normalised_url(db_url):
    async with running_platform(db_url) as platform, platform.client() as client:
        tenant = await platform.tenant("A")
        created = await client.post("/v2/webhooks", headers=tenant.headers, json={"items": [
            {"url": "HTTPS://Hooks.EXAMPLE.com.:443/x?a=1", "event_type": "message_created"}]})
        assert created.status_code == 200, created.text
        [config] = created.json()["items"]
        assert config["url"] == "https://hooks.example.com/x?a=1"
        updated = await client.put(f"/v2/webhooks/{config['id']}", headers=tenant.headers,
                                   json={"url": "https://Bücher.de:8443"})
        assert updated.status_code == 200 and updated.json()["url"] == "https://xn--bcher-kva.de:8443/"
        fetched = await client.get(f"/v2/webhooks/{config['id']}", headers=tenant.headers)
        assert fetched.json()["url"] == "https://xn--bcher-kva.de:8443/"
        [stored] = await platform.rows(select(webhook_configs.c.url).where(webhook_configs.c.id == config["id"]))
        assert stored.url == "https://xn--bcher-kva.de:8443/"
        for refused in (
            await client.post("/v2/webhooks", headers=tenant.headers, json={"items": [
                {"url": "https://user:hunter2@hooks.example.com/x", "event_type": "message_created"}]}),
            await client.put(f"/v2/webhooks/{config['id']}", headers=tenant.headers,
                             json={"url": "https://user:hunter2@hooks.example.com/x"}),
        ):
            assert refused.status_code == 422
            detail = refused.json()["detail"]
            assert "credentials" in detail and "custom_headers" in detail and "hunter2" not in detail
        [stored] = await platform.rows(select(webhook_configs.c.url).where(webhook_configs.c.id == config["id"]))
        assert stored.url == "https://xn--bcher-kva.de:8443/"  # a refused update changes nothing


async def test_the_tryout_sends_to_and_shows_the_normalised_url(sqlite_url):
    async with running_platform(sqlite_url) as platform, platform.client() as client, \
            scripted_endpoint(hook=[200]) as endpoint:  # this platform allows loopback
        tenant = await platform.tenant("A")
        answer = await client.post("/v2/webhooks/test", headers=tenant.headers, json={"items": [
            {"url": f"http://１２７。０。０。１:{endpoint.port}/hook", "event_type": "message_created"}]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["url"] == f"http://127.0.0.1:{endpoint.port}/hook" and answer.json()["delivered"]
        assert [request.headers["Host"] for request in endpoint.received] == [f"127.0.0.1:{endpoint.port}"]


# ---------------------------------------------------------------- over real sockets


class Listener:
    """A TCP listener on 127.0.0.1, and on ::1 at the same port when it can,
    holding its own sockets and counting the connections it accepts. A
    connection's handshake ends in the kernel's queue before the client's
    ``connect`` returns, so ``accepted()`` sees every connection made so far."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        for _ in range(20):
            ipv4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ipv4.bind(("127.0.0.1", 0))
            self.port = ipv4.getsockname()[1]
            try:
                ipv6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                ipv6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                ipv6.bind(("::1", self.port))
            except OSError as exc:
                ipv6.close()
                if exc.errno == errno.EADDRINUSE:
                    ipv4.close()
                    continue
                ipv6 = None  # no IPv6 loopback here: the IPv4 listener alone
            self.sockets = [sock for sock in (ipv4, ipv6) if sock is not None]
            break
        for sock in self.sockets:
            sock.listen(128)
            sock.setblocking(False)
        self.count = 0

    def accepted(self) -> int:
        """The connections made since the previous call (each accepted, counted and closed)."""
        before = self.count
        for sock in self.sockets:
            while True:
                try:
                    connection, _ = sock.accept()
                except BlockingIOError:
                    break
                connection.close()
                self.count += 1
        return self.count - before

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.fixture(scope="module")
def listener():
    listening = Listener()
    yield listening
    listening.close()


# At least 30 spellings of addresses on this machine (each reaches the listener if the guard lets it
# through), then private addresses elsewhere; {port} is the listener's.
SPELLINGS = [
    "http://127.0.0.1:{port}/hook",
    "http://①②⑦.⓪.⓪.①:{port}/hook",
    "http://１２７.０.０.１:{port}/hook",
    "http://127。0。0。1:{port}/hook",
    "http://127．0．0．1:{port}/hook",
    "http://127｡0｡0｡1:{port}/hook",
    "http://１２７。０。０。１:{port}/hook",
    "http://𝟏𝟐𝟕.𝟎.𝟎.𝟏:{port}/hook",
    "http://𝟙𝟚𝟟.𝟘.𝟘.𝟙:{port}/hook",
    "http://𝟣𝟤𝟩.𝟢.𝟢.𝟣:{port}/hook",
    "http://𝟷𝟸𝟽.𝟶.𝟶.𝟷:{port}/hook",
    "http://2130706433:{port}/hook",
    "http://0177.0.0.1:{port}/hook",
    "http://017700000001:{port}/hook",
    "http://0x7f.0.0.1:{port}/hook",
    "http://0x7f000001:{port}/hook",
    "http://0x7f.1:{port}/hook",
    "HTTP://0X7F.0X0.0X0.0X1:{port}/hook",
    "http://０ｘ７ｆ.１:{port}/hook",
    "http://127.1:{port}/hook",
    "http://127.0.1:{port}/hook",
    "http://0177.1:{port}/hook",
    "http://127.0.0.1.:{port}/hook",
    "http://127.0.0.%31:{port}/hook",
    "http://%31%32%37.0.0.1:{port}/hook",
    "http://%EF%BC%91%EF%BC%92%EF%BC%97.0.0.1:{port}/hook",
    "http://0:{port}/hook",
    "http://0.0.0.0:{port}/hook",
    "http://[::]:{port}/hook",
    "http://[::1]:{port}/hook",
    "http://[0:0:0:0:0:0:0:1]:{port}/hook",
    "http://[::ffff:127.0.0.1]:{port}/hook",
    "http://[::FFFF:7F00:1]:{port}/hook",
    "http://[0000:0000:0000:0000:0000:ffff:7f00:0001]:{port}/hook",
    "http://[::127.0.0.1]:{port}/hook",
    "http://[64:ff9b::127.0.0.1]:{port}/hook",
    "http://[2002:7f00:1::1]:{port}/hook",
    "http://[2001:0:a00:1::80ff:fffe]:{port}/hook",
    "http://[fe80::1%25lo]:{port}/hook",
    "http://localhost:{port}/hook",
    "http://LOCALHOST.:{port}/hook",
    "http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ:{port}/hook",
    "http://ｌｏｃａｌｈｏｓｔ:{port}/hook",
    "http://user:secret@127.0.0.1:{port}/hook",
    "http://token@０ｘ７ｆ.１:{port}/hook",
    "http://hooks.example.com@127.0.0.1:{port}/hook",
    "https://127.0.0.1:{port}/hook",
    "https://①②⑦.0.0.1:{port}/hook",
    "https://[::ffff:7f00:1]:{port}/hook",
    # private addresses elsewhere: refused the same way
    "http://10.0.0.1:{port}/hook",
    "http://0xa9.0xfe.0xa9.0xfe:{port}/latest/meta-data",
    "http://0300.0250.1.1:{port}/hook",
    "http://[::ffff:a9fe:a9fe]:{port}/latest/meta-data",
    "http://[64:ff9b::10.0.0.1]:{port}/hook",
    "http://[2002:c0a8:101::1]:{port}/hook",
    "http://[fd00::1]:{port}/hook",
]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def strict_db_url(request, tmp_path_factory):
    """A database for this module's platform, on each engine."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('ssrf') / 'tidings.db'}"
        return
    import psycopg
    from sqlalchemy.engine import make_url

    server = request.getfixturevalue("postgres_server")
    name = f"tidings_ssrf_{abs(hash(request.node.nodeid)) % 10**9}_{id(request)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_url(server).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


STRICT_DELIVERY = DeliverySettings(allow_http=True, allow_private_targets=False)


@contextlib.asynccontextmanager
async def served(app):
    """``app`` served by uvicorn on a socket bound here and held for the server's life."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def strict_platform(strict_db_url):
    """A platform without allow-private-targets (with allow-http), its API over uvicorn."""
    async with running_platform(strict_db_url) as base:
        platform = with_settings(base, delivery=STRICT_DELIVERY)
        async with served(platform.app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield platform, client


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_a_tryout_never_reaches_the_listener(strict_platform, listener, spelling):
    platform, client = strict_platform
    tenant = await platform.tenant(f"tryout {SPELLINGS.index(spelling)}")
    url = spelling.format(port=listener.port)
    listener.accepted()  # from here on, only this spelling's connections count
    answer = await client.post("/v2/webhooks/test", headers=tenant.headers,
                               json={"items": [{"url": url, "event_type": "message_created"}]})
    assert listener.accepted() == 0
    if answer.status_code == 422:
        assert answer.json()["detail"].startswith("url: ")
    else:  # refused when connecting rather than before
        assert answer.status_code == 200 and answer.json()["error"].startswith("refused_target"), answer.text


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_a_delivery_never_reaches_the_listener(strict_platform, listener, spelling):
    platform, _ = strict_platform
    tenant = await platform.tenant(f"delivery {SPELLINGS.index(spelling)}")
    url = spelling.format(port=listener.port)
    listener.accepted()  # from here on, only this spelling's connections count
    config_id = await add_configuration(platform.engine, tenant.org_id, url)  # as an old row: never checked
    await add_events(platform.engine, platform.signer, tenant.org_id, 1)
    await Dispatcher(platform.engine, platform.signer,
                     fast_settings(allow_private_targets=False, max_retries=0, attempt_timeout=1.0)).run_until_idle()
    [(status, status_code, error)] = await platform.rows(
        select(deliveries.c.status, attempts.c.status_code, attempts.c.error)
        .join(attempts, attempts.c.delivery_id == deliveries.c.id).where(deliveries.c.webhook_config_id == config_id))
    assert status == "failed" and status_code is None
    assert error.startswith("refused_target"), error
    assert listener.accepted() == 0


async def test_without_the_guard_at_least_30_of_the_spellings_reach_the_listener(listener):
    """The control: the spellings are real ways to reach this machine. With
    private targets allowed, the transport connects to the listener for at
    least 30 of them (the others embed an address with no route here, or are
    refused whatever the policy: credentials, a zone id)."""
    reached = []
    transport = LeanTransport(TargetPolicy(allow_private=True, allow_http=True), attempt_timeout=0.3)
    try:
        for spelling in SPELLINGS:
            listener.accepted()
            await transport.post(spelling.format(port=listener.port), b"{}", {})
            if listener.accepted():
                reached.append(spelling)
    finally:
        await transport.close()
    assert len(reached) >= 30, sorted(set(SPELLINGS) - set(reached))
