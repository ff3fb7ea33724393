"""The receiver's core: from a request's raw body and headers to the answer to give.

    verify (signature, URL secret) -> classify (event / quarantine) -> organization -> durable append -> answer

``Receiver.admit`` is the decision, with no I/O: it returns either a ``Record``
to store or the ``Answer`` to give at once (401; 403 for an organization the
receiver does not serve, see ``tenancy``; or 400 in strict mode). Every
server (the ASGI app, the fast HTTP path, a WSGI view) goes through it.
``Receiver.handle`` (async) and ``Receiver.handle_sync`` (a thread of a WSGI
server) schedule the same decision and the same group-committed append; the
framework adapters (``asgi``, ``fastapi``, a Flask or Django view) are thin
layers over them.

Where the work runs, and why: an Ed25519 verify releases the GIL, so the
async path verifies in a thread of its own by default (``verify_threads``);
the event loop only moves bytes, and verifying overlaps both the HTTP work
and the writer's disk flush, which acknowledges more events per second than
verifying in the loop (``bench/receive.py``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import parse_qs

from tidings.contract import EventError, MessageCreated, MessageUpdated, parse_event
from tidings.contract.headers import VendorHeaders
from tidings.contract.signing import (
    ID_HEADER,
    SIGNATURE_HEADER,
    SignatureError,
    TimestampOutOfTolerance,
    Verifier,
)
from tidings.receiver.answers import BUSY, Answer, foreign_org, not_an_event, unauthorized
from tidings.receiver.dedupe import body_digest, dedupe_key
from tidings.receiver.group_commit import GroupCommitter, settle
from tidings.receiver.log import EVENT, QUARANTINE, EventLog, QuarantinedBody, Record, ReprocessOutcome
from tidings.receiver.sequencing import parse_sequence
from tidings.receiver.sodium import sodium_verifier
from tidings.receiver.tenancy import org_id_of_body, org_id_of_event, served_orgs, serves

logger = logging.getLogger("tidings.receiver")

Headers = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]

_STOP = object()
_SWEEP_INTERVAL = 0.02  # how often expired requests are answered 503


def lowercase_headers(headers: Headers) -> dict[str, str]:
    """Header names in lower case, values as text; ASGI's byte pairs accepted as they are."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    lowered: dict[str, str] = {}
    for name, value in items:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        lowered[name.lower()] = value
    return lowered


def authenticate(verifier: Verifier, body: bytes, headers: dict[str, str]) -> str:
    """The scheme that proves ``body`` authentic; raises ``SignatureError`` otherwise.

    When the Standard Webhooks signature is present it is tried first, alone:
    only it covers ``webhook-id`` (see ``dedupe``). If it fails for any reason
    other than a stale timestamp, the vendor header may still prove the body.
    """
    vendor_header = VendorHeaders(verifier.vendor_prefix).signature_lower
    if SIGNATURE_HEADER in headers and vendor_header in headers:
        standard_only = {name: value for name, value in headers.items() if name != vendor_header}
        try:
            return verifier.verify(body, standard_only)
        except TimestampOutOfTolerance:
            raise  # an authentic but stale request is a replay: the vendor header must not save it
        except SignatureError:
            pass
    return verifier.verify(body, headers)


class Receiver:
    """Takes in signed events: verifies, classifies, stores durably, answers.

    ``log``: an ``EventLog`` (or a database URL). ``verifier``: the keys and
    secrets the sender signs with. ``org_ids``: the organizations served,
    whose events alone are taken (403 for the others); or ``any_org=True``
    to take every organization the keys sign for: one of the two is required
    (``tenancy``). ``url_secret``: a token the request must
    carry, as ``?secret=TOKEN`` or as the last segment of the path. ``strict``:
    answer ``400`` to an authentic body that does not parse, instead of
    quarantining it. ``max_wait``: seconds a request may wait for its commit
    before it is answered ``503``; ``max_pending``: requests waiting at most,
    beyond which new ones get ``503`` at once.
    """

    def __init__(
        self,
        log: EventLog | str,
        verifier: Verifier,
        *,
        org_ids: Iterable[int] | None = None,
        any_org: bool = False,
        url_secret: str | None = None,
        strict: bool = False,
        parse: Callable[[bytes], object] = parse_event,
        max_wait: float = 2.0,
        max_pending: int = 20_000,
        max_batch: int = 2000,
        verify_threads: int = 1,
        create_schema: bool = True,
    ) -> None:
        self.served_orgs = served_orgs(org_ids, any_org)
        self.log = EventLog(log) if isinstance(log, str) else log
        if create_schema:
            self.log.create_schema()
        self.verifier = sodium_verifier(verifier)
        self.sequence_header = VendorHeaders(verifier.vendor_prefix).sequence_lower
        self.url_secret = url_secret
        self.strict = strict
        self.parse = parse
        self.max_wait = max_wait
        self.max_pending = max_pending
        self.verify_threads = verify_threads
        self.committer = GroupCommitter(self.log, max_batch=max_batch)
        self._verify_queue: queue.SimpleQueue = queue.SimpleQueue()
        self._verifiers: list[threading.Thread] = []
        self._start_lock = threading.Lock()
        self._closed = False
        self._started = False
        self._expiry: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Expiry] = weakref.WeakKeyDictionary()
        self._sync_pending = 0
        self._sync_lock = threading.Lock()

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Start the writer and the verifying threads (done on first use too)."""
        with self._start_lock:
            if self._closed or self._started:
                return
            self._started = True
            self.committer.start()
            for number in range(self.verify_threads):
                thread = threading.Thread(target=self._verify_loop, name=f"tidings-receiver-verify-{number}", daemon=True)
                thread.start()
                self._verifiers.append(thread)

    def close(self) -> None:
        """Finish what is in flight, then stop the threads. Later requests get 503."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            verifiers = list(self._verifiers)
        for _ in verifiers:
            self._verify_queue.put(_STOP)
        for thread in verifiers:
            thread.join(30)
        self.committer.close()

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    # ---------------------------------------------------------------- the decision

    def admit(self, body: bytes, headers: dict[str, str], query: str = "", path_secret: str | None = None) -> Record | Answer:
        """What to do with one request: the ``Record`` to store, or the ``Answer`` to give now.

        ``headers`` have lower-case names (``lowercase_headers``).
        """
        if self.url_secret is not None and not self._secret_matches(query, path_secret):
            return unauthorized("the URL secret is missing or wrong")
        try:
            scheme = authenticate(self.verifier, body, headers)
        except SignatureError as exc:
            return unauthorized(str(exc))
        webhook_id = headers.get(ID_HEADER) or None
        digest = body_digest(body)
        key = dedupe_key(body, webhook_id, scheme, digest)
        try:
            event = self.parse(body)
        except EventError as exc:
            if self.served_orgs is not None and not serves(self.served_orgs, org := org_id_of_body(body)):
                return foreign_org(org)
            if self.strict:
                return not_an_event(str(exc))
            return Record(QUARANTINE, key, body, scheme, webhook_id, time.time(), error=str(exc), body_sha256=digest)
        if self.served_orgs is not None and not serves(self.served_orgs, org := org_id_of_event(event)):
            return foreign_org(org)
        return event_record(event, key, body, scheme, webhook_id,
                            sequence=parse_sequence(headers.get(self.sequence_header)), body_sha256=digest)

    def _secret_matches(self, query: str, path_secret: str | None) -> bool:
        expected = self.url_secret.encode()
        candidates = parse_qs(query).get("secret", []) if query else []
        if path_secret:
            candidates.append(path_secret)
        return any(hmac.compare_digest(candidate.encode(), expected) for candidate in candidates)

    # ---------------------------------------------------------------- async entry point

    async def handle(
        self, body: bytes, headers: Headers, query: str = "", path_secret: str | None = None
    ) -> Answer:
        """The answer to give to one request, once its body is durably stored (or refused)."""
        return await self.submit(body, headers, query, path_secret)

    def submit(self, body: bytes, headers: Headers, query: str = "", path_secret: str | None = None) -> asyncio.Future:
        """``handle`` without the coroutine: a future of the ``Answer``, in the running loop.

        For servers that answer from a callback rather than a task per request.
        """
        if not self._started:
            self.start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._closed:
            future.set_result(BUSY)
            return future
        expiry = self._expiry.get(loop)
        if expiry is None:
            expiry = self._expiry[loop] = _Expiry(loop, self.max_wait)
        if len(expiry) >= self.max_pending:
            future.set_result(BUSY)
            return future
        expiry.watch(future)
        if self.verify_threads == 0:
            outcome = self.admit(body, lowercase_headers(headers), query, path_secret)
            if isinstance(outcome, Answer):
                future.set_result(outcome)
            else:
                self.committer.submit(outcome, future)
        else:
            self._verify_queue.put((body, headers, query, path_secret, future))
        return future

    def _verify_loop(self) -> None:
        get, get_nowait, empty = self._verify_queue.get, self._verify_queue.get_nowait, queue.Empty
        while True:
            batch = [get()]
            while len(batch) < 256:
                try:
                    batch.append(get_nowait())
                except empty:
                    break
            refused = []
            stop = False
            for item in batch:
                if item is _STOP:
                    stop = True
                    continue
                body, headers, query, path_secret, future = item
                if future.done():  # expired or cancelled while queued
                    continue
                try:
                    outcome = self.admit(body, lowercase_headers(headers), query, path_secret)
                except Exception:  # a bug must cost one request, not the thread
                    logger.exception("admitting a request failed")
                    outcome = BUSY
                if isinstance(outcome, Answer):
                    refused.append((future, outcome))
                else:
                    self.committer.submit(outcome, future)
            if refused:
                settle(refused)
            if stop:
                return

    # ---------------------------------------------------------------- sync entry point

    def handle_sync(self, body: bytes, headers: Headers, query: str = "", path_secret: str | None = None) -> Answer:
        """Like ``handle``, for a thread of a WSGI server (a Flask or Django view)."""
        if not self._started:
            self.start()
        if self._closed:
            return BUSY
        outcome = self.admit(body, lowercase_headers(headers), query, path_secret)
        if isinstance(outcome, Answer):
            return outcome
        with self._sync_lock:
            if self._sync_pending >= self.max_pending:
                return BUSY
            self._sync_pending += 1
        try:
            waiter: concurrent.futures.Future = concurrent.futures.Future()
            self.committer.submit(outcome, waiter)
            try:
                return waiter.result(timeout=self.max_wait)
            except concurrent.futures.TimeoutError:
                waiter.cancel()
                return BUSY
        finally:
            with self._sync_lock:
                self._sync_pending -= 1

    # ---------------------------------------------------------------- quarantine

    def classify_quarantined(self, quarantined: QuarantinedBody) -> Record:
        """A quarantined body classified again with today's parser (it was authentic when received)."""
        return classify(self.parse, quarantined)

    def reprocess_quarantine(self, ids: Iterable[int] | None = None) -> ReprocessOutcome:
        return self.log.reprocess_quarantine(self.classify_quarantined, ids)


def event_record(
    event: object, key: str, body: bytes, scheme: str, webhook_id: str | None, received_at: float | None = None,
    sequence: int | None = None, body_sha256: bytes | None = None,
) -> Record:
    """The log record of a parsed event."""
    message_id = conversation_id = None
    if isinstance(event, (MessageCreated, MessageUpdated)):
        message_id = event.payload.message.id
        conversation_id = event.payload.conversation.id
    return Record(
        EVENT,
        key,
        body,
        scheme,
        webhook_id,
        time.time() if received_at is None else received_at,
        event_type=str(getattr(event, "type", "")),
        message_id=message_id,
        conversation_id=conversation_id,
        sequence=sequence,
        body_sha256=body_sha256 or b"",
    )


def classify(parse: Callable[[bytes], object], quarantined: QuarantinedBody) -> Record:
    """A quarantined body as a log record if ``parse`` accepts it now, else as a quarantine record."""
    try:
        event = parse(quarantined.body)
    except EventError as exc:
        return Record(
            QUARANTINE, quarantined.dedupe_key, quarantined.body, quarantined.scheme, quarantined.webhook_id,
            quarantined.received_at, error=str(exc), body_sha256=quarantined.body_sha256 or b"",
        )
    return event_record(
        event, quarantined.dedupe_key, quarantined.body, quarantined.scheme, quarantined.webhook_id,
        quarantined.received_at, body_sha256=quarantined.body_sha256,
    )


class _Expiry:
    """The requests of one event loop waiting for their commit, oldest first.

    Every request gets the same wait bound, so arrival order is deadline
    order: one timer sweeps the front of the queue, instead of one timer per
    request.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, max_wait: float) -> None:
        self.loop = loop
        self.max_wait = max_wait
        self.waiting: deque[tuple[float, asyncio.Future]] = deque()
        self.sweeping = False

    def __len__(self) -> int:
        return len(self.waiting)

    def watch(self, future: asyncio.Future) -> None:
        self.waiting.append((self.loop.time() + self.max_wait, future))
        if not self.sweeping:
            self.sweeping = True
            self.loop.call_later(_SWEEP_INTERVAL, self.sweep)

    def sweep(self) -> None:
        now = self.loop.time()
        waiting = self.waiting
        while waiting and (waiting[0][1].done() or waiting[0][0] <= now):
            _deadline, future = waiting.popleft()
            if not future.done():
                future.set_result(BUSY)
        if waiting:
            self.loop.call_later(_SWEEP_INTERVAL, self.sweep)
        else:
            self.sweeping = False
