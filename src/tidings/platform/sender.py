"""What one attempt sends, and the transports that send it.

``Transport`` is the one small interface between the dispatcher and the
network: ``post(url, body, headers) -> Answer``, never raising for anything
the endpoint does. Two real ones, made by ``new_transport(kind, ...)``:
``lean`` (``lean_transport.LeanTransport``, the dispatcher's default: pooled
keep-alive HTTP/1.1 on asyncio protocols) and ``aiohttp``
(``AiohttpTransport``: one ``ClientSession`` whose connector is sized for the
dispatcher's concurrency and resolves names through the SSRF guard). Tests
of the logic above them pass their own.

``sign_and_post`` is one attempt: ``request_headers`` with this moment's
timestamp, then the transport. The headers are the configuration's custom
headers, then ``Content-Type``, the stored vendor signature, ``webhook-id``,
``webhook-timestamp``, ``webhook-signature`` (``Signer.standard_signature``)
and, for a delivery with a place in its conversation, ``X-Tidings-Sequence``
(the vendor prefix, then ``-Sequence``); none of those can be replaced by a
custom header.

Signing cost, measured on this machine (2 cores, cryptography 50, a 1,370-byte
body): one Ed25519 signature takes about 35 us (28,700/s on one core, and the
library holds the GIL, so threads do not help). The vendor signature is made
once, by the outbox, and stored; each attempt only adds the Standard Webhooks
``v1a`` (Ed25519) and ``v1`` (HMAC, about 1 us) over
``{webhook-id}.{webhook-timestamp}.{body}``. ``Signer.sign`` would sign the
vendor header again (76 us per call, 13,100/s), so the headers are built here
from the stored signature instead. A timestamp shared by a batch would save
nothing: ``webhook-id`` differs for every delivery, so every ``v1a`` is a
signature of its own. ``bench/dispatch.py`` shows what the remaining 35 us
cost against the bare client.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import aiohttp
from yarl import URL

from tidings.contract.signing import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, Signer
from tidings.platform.retry import ErrorKind
from tidings.platform.targets import GuardedResolver, RefusedAddress, TargetPolicy, TargetRefused, check_target_url

__all__ = [
    "DEFAULT_TRANSPORT",
    "TRANSPORTS",
    "AiohttpTransport",
    "Answer",
    "Outgoing",
    "Transport",
    "new_transport",
    "request_headers",
    "sequence_header",
    "sign_and_post",
    "standard_signature",
]

EXCERPT_CHARACTERS = 1000
USER_AGENT = "tidings-webhooks/0.1"


@dataclass(frozen=True, slots=True)
class Answer:
    """How one attempt went: an HTTP status, or an error without one."""

    started_at: float  # epoch seconds
    duration_ms: float
    status_code: int | None = None
    excerpt: str | None = None  # the start of the answer's body
    retry_after: str | None = None
    error_kind: ErrorKind | None = None
    error: str | None = None


class Transport(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """Send one request; every failure is reported in the ``Answer``, never raised."""

    async def close(self) -> None: ...


def standard_signature(signer: Signer, msg_id: str, timestamp: int, body: bytes, secrets: Sequence[str]) -> str:
    """The ``webhook-signature`` value: ``v1a`` (Ed25519) then one ``v1`` (HMAC) per live secret."""
    return signer.standard_signature(msg_id, timestamp, body, secrets)


def sequence_header(signer: Signer) -> str:
    """The header that carries a delivery's place in its conversation: ``X-Tidings-Sequence``
    with the default vendor prefix."""
    return f"{signer.vendor_prefix}-Sequence"


def request_headers(signer: Signer, *, body: bytes, webhook_id: str, vendor_signature: str,
                    secrets: Sequence[str], custom_headers: Mapping[str, str] | None, timestamp: int,
                    extra: Mapping[str, str] | None = None, sequence: int | None = None) -> dict[str, str]:
    """Every header of one attempt. The configuration's custom headers come
    first, so that none of them can replace a signature header (or the
    sequence header, sent when the delivery has a ``sequence``)."""
    headers = dict(custom_headers) if custom_headers else {}
    if extra:
        headers.update(extra)
    headers["Content-Type"] = "application/json"
    headers[signer.vendor_header] = vendor_signature
    headers[ID_HEADER] = webhook_id
    headers[TIMESTAMP_HEADER] = str(timestamp)
    headers[SIGNATURE_HEADER] = signer.standard_signature(webhook_id, timestamp, body, secrets)
    if sequence is not None:
        headers[sequence_header(signer)] = str(sequence)
    return headers


class Outgoing(NamedTuple):
    """What one attempt sends, before it is signed (a tuple: it crosses to sender processes)."""

    url: str
    body: bytes
    webhook_id: str
    vendor_signature: str
    secrets: Sequence[str]
    custom_headers: Mapping[str, str] | None
    sequence: int | None = None


async def sign_and_post(signer: Signer, transport: Transport, outgoing: Outgoing) -> tuple[dict[str, str], Answer]:
    """One attempt: its headers, signed with this moment's timestamp, and how the request went."""
    headers = request_headers(signer, body=outgoing.body, webhook_id=outgoing.webhook_id,
                              vendor_signature=outgoing.vendor_signature, secrets=outgoing.secrets,
                              custom_headers=outgoing.custom_headers, timestamp=int(time.time()),
                              sequence=outgoing.sequence)
    return headers, await transport.post(outgoing.url, outgoing.body, headers)


def _excerpt(data: bytes) -> str | None:
    if not data:
        return None
    return data.decode("utf-8", errors="replace")[:EXCERPT_CHARACTERS]


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:500]


class AiohttpTransport:
    """Posts with aiohttp. Names resolve through the SSRF guard unless private targets are allowed."""

    def __init__(self, policy: TargetPolicy, *, attempt_timeout: float, concurrency: int = 256,
                 per_endpoint: int = 32) -> None:
        self.policy = policy
        self.attempt_timeout = attempt_timeout
        self._timeout = aiohttp.ClientTimeout(total=attempt_timeout)
        self._concurrency = concurrency
        self._per_endpoint = per_endpoint
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}

    def _open_session(self) -> aiohttp.ClientSession:
        resolver = None if self.policy.allow_private else GuardedResolver()
        connector = aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=self._per_endpoint,
                                         resolver=resolver, ttl_dns_cache=10, enable_cleanup_closed=True)
        # No cookie jar: an endpoint's cookies have no business in later requests.
        return aiohttp.ClientSession(connector=connector, timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar(),
                                     headers={"User-Agent": USER_AGENT}, auto_decompress=False)

    def _url(self, url: str) -> URL:
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) > 10_000:
                self._urls.clear()
            parsed = self._urls[url] = URL(url, encoded=False)
        return parsed

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        started = time.time()
        clock = time.perf_counter()
        try:
            check_target_url(url, self.policy)
        except TargetRefused as exc:
            return Answer(started, 0.0, error_kind=ErrorKind.REFUSED_TARGET, error=exc.reason)
        if self._session is None:
            self._session = self._open_session()
        status = retry_after = None
        try:
            async with self._session.post(self._url(url), data=body, headers=headers,
                                          allow_redirects=False) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                data = await response.content.read(4 * EXCERPT_CHARACTERS)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedAddress):
                return self._failed(started, clock, ErrorKind.REFUSED_TARGET, exc.os_error.reason)
            return self._failed(started, clock, ErrorKind.CONNECTION, _describe(exc), status, retry_after)
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            reason = f"no complete answer within {self.attempt_timeout:g} s"
            return self._failed(started, clock, ErrorKind.TIMEOUT, reason, status, retry_after)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return self._failed(started, clock, ErrorKind.CONNECTION, _describe(exc), status, retry_after)
        return Answer(started, (time.perf_counter() - clock) * 1000.0, status_code=status,
                      excerpt=_excerpt(data), retry_after=retry_after)

    @staticmethod
    def _failed(started: float, clock: float, kind: ErrorKind, error: str, status: int | None = None,
                retry_after: str | None = None) -> Answer:
        # A status that arrived before the body failed still says what the endpoint decided.
        return Answer(started, (time.perf_counter() - clock) * 1000.0, status_code=status,
                      retry_after=retry_after, error_kind=None if status is not None else kind, error=error)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


TRANSPORTS = ("lean", "aiohttp")
DEFAULT_TRANSPORT = "lean"


def new_transport(kind: str, policy: TargetPolicy, *, attempt_timeout: float, concurrency: int,
                  per_endpoint: int) -> Transport:
    """The transport named ``kind``: ``lean`` (``LeanTransport``) or ``aiohttp`` (``AiohttpTransport``)."""
    if kind == "lean":
        from tidings.platform.lean_transport import LeanTransport  # it imports this module

        return LeanTransport(policy, attempt_timeout=attempt_timeout, concurrency=concurrency,
                             per_endpoint=per_endpoint)
    if kind == "aiohttp":
        return AiohttpTransport(policy, attempt_timeout=attempt_timeout, concurrency=concurrency,
                                per_endpoint=per_endpoint)
    raise ValueError(f"no transport {kind!r}; one of {', '.join(TRANSPORTS)}")
