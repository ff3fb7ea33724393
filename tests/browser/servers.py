"""Real servers for the browser tests and the screenshot script: the platform
(API, dashboard, dispatcher), a subscriber's endpoint, and the receiver
(webhook; inbox on its admin listener), each on 127.0.0.1 with a socket of
its own and a SQLite file.

Every server runs in a thread with its own event loop; the test's thread
talks to them over HTTP and writes set-up data with engines of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tests.loopback import loopback_socket
from tidings.contract.signing import Signer, generate_private_key
from tidings.platform import tenants
from tidings.platform.api.context import PlatformContext
from tidings.platform.settings import DeliverySettings, PartnerSettings, PlatformSettings
from tidings.store.engine import create_engine, create_sync_engine

STARTUP_SECONDS = 20.0

Background = Callable[[asyncio.Event], Awaitable[None]]


def create_schema(db_url: str) -> None:
    from tidings.store import all_tables  # noqa: F401  (registers every table)
    from tidings.store.metadata import metadata

    engine = create_sync_engine(db_url)
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()


class ServedApp:
    """An ASGI app on uvicorn, in a thread, with background tasks beside it in the same loop.

    ``background`` coroutines get an event that is set when the server stops;
    ``cleanup`` runs last, in the same loop (e.g. disposing an async engine).
    """

    def __init__(self, app: Any, *, background: list[Background] | None = None,
                 cleanup: Callable[[], Awaitable[None]] | None = None, lifespan: str = "on",
                 sock: socket.socket | None = None) -> None:
        self.app = app
        self.background = background or []
        self.cleanup = cleanup
        self._socket = sock or loopback_socket()
        self.port = self._socket.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan=lifespan, timeout_graceful_shutdown=1,
                                access_log=False)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"served-app-{self.port}", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test's thread by start()/stop()
            self._error = exc

    async def _main(self) -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(work(stop)) for work in self.background]
        try:
            await self.server.serve(sockets=[self._socket])
        finally:
            stop.set()
            if tasks:
                await asyncio.wait(tasks, timeout=15)
            if self.cleanup is not None:
                await self.cleanup()

    def start(self) -> ServedApp:
        self._thread.start()
        deadline = time.monotonic() + STARTUP_SECONDS
        while not self.server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"the server did not start: {self._error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start in time")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        self._socket.close()

    def __enter__(self) -> ServedApp:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


def run_coroutine(coroutine: Awaitable[Any]) -> Any:
    """Runs ``coroutine`` to the end in a thread of its own: the test's thread
    already runs Playwright's event loop, where ``asyncio.run`` is refused."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result(timeout=60)


# ---------------------------------------------------------------- a subscriber's endpoint


@dataclass
class Endpoint:
    """A subscriber's webhook endpoint on loopback that answers ``status`` to every POST,
    or what ``decide(request, earlier_tries)`` says when it is given."""

    status: int = 200
    answer: bytes = b'{"ok":true}'
    decide: Callable[[dict[str, Any], int], tuple[int, bytes]] | None = None
    received: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/tidings"

    def start(self) -> Endpoint:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                request = {"headers": dict(self.headers), "body": body}
                webhook_id = request["headers"].get("webhook-id")
                tries = sum(1 for earlier in endpoint.received if earlier["headers"].get("webhook-id") == webhook_id)
                endpoint.received.append(request)
                status, answer = (endpoint.status, endpoint.answer) if endpoint.decide is None else endpoint.decide(
                    request, tries)
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, name="endpoint", daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


# ---------------------------------------------------------------- the platform


@dataclass
class Tenant:
    org_id: int
    api_key: str
    business_id: str
    channel_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"x-APIKey": self.api_key}


def platform_settings(db_url: str) -> PlatformSettings:
    """Loopback and plain http:// targets allowed: the tests' endpoints run on 127.0.0.1."""
    return PlatformSettings(
        db_url=db_url,
        delivery=DeliverySettings(allow_private_targets=True, allow_http=True, retry_base=0.2, retry_factor=2.0,
                                  attempt_timeout=3.0),
        partners=PartnerSettings(latency=0.0, failure_rate=0.0),
    )


class PlatformServer:
    """``create_app`` with the dashboard mounted and a dispatcher running beside it."""

    def __init__(self, directory: Path, *, dispatch: bool = True) -> None:
        from tidings.platform.api.app import create_app
        from tidings.platform.dispatcher import Dispatcher
        from tidings.web.dashboard import mount_dashboard

        self.db_url = f"sqlite:///{directory / 'platform.db'}"
        create_schema(self.db_url)
        self.signer = Signer(generate_private_key())
        self.settings = platform_settings(self.db_url)
        engine = create_engine(self.db_url)
        self.context = PlatformContext(settings=self.settings, engine=engine, signer=self.signer)
        self.app = create_app(self.context, partner_seed=7)
        mount_dashboard(self.app)  # a no-op once create_app mounts it itself
        background: list[Background] = []
        if dispatch:
            self.dispatcher = Dispatcher(engine, self.signer, self.settings.delivery, poll_interval=0.1)
            background.append(self.dispatcher.run)
        self.served = ServedApp(self.app, background=background, cleanup=engine.dispose)

    @property
    def base_url(self) -> str:
        return self.served.base_url

    def start(self) -> PlatformServer:
        self.served.start()
        return self

    def stop(self) -> None:
        self.served.stop()

    def run(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        """``work(conn)`` in one transaction, on an engine of the caller's own."""

        async def main() -> Any:
            engine = create_engine(self.db_url)
            try:
                async with engine.begin() as conn:
                    return await work(conn)
            finally:
                await engine.dispose()

        return run_coroutine(main())

    def tenant(self, name: str) -> Tenant:
        async def work(conn) -> Tenant:
            org_id, key = await tenants.create_organization(conn, name)
            business_id = await tenants.create_business(conn, org_id, f"{name} Store", city="Lyon",
                                                         zipcode="69001", country="FR",
                                                         formatted_address="12 rue Mercière, 69001 Lyon")
            channel_id = await tenants.create_custom_channel(conn, org_id, f"{name} chat")
            return Tenant(org_id, key, business_id, channel_id)

        return self.run(work)

    def client(self, tenant: Tenant) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=tenant.headers, timeout=10)

    def subscribe(self, tenant: Tenant, url: str, event_type: str = "message_created") -> int:
        with self.client(tenant) as client:
            answer = client.post("/v2/webhooks", json={"items": [{"url": url, "event_type": event_type}]})
            answer.raise_for_status()
            return answer.json()["items"][0]["id"]

    def ingest(self, tenant: Tenant, text: str, *, conversation: str = "conv-1", number: int | None = None,
               consumer: str = "Ana Martin") -> dict[str, Any]:
        """A consumer's message arriving on the tenant's custom channel (one event, one delivery per subscription)."""
        number = number if number is not None else time.monotonic_ns()
        with self.client(tenant) as client:
            answer = client.post(f"/v2/custom-channels/{tenant.channel_id}/messages", json={
                "business_id": tenant.business_id, "external_conversation_id": conversation,
                "external_message_id": f"ext-{number}", "content": text, "sender_type": "Consumer",
                "consumer_name": consumer,
            })
            answer.raise_for_status()
            return answer.json()


@contextlib.contextmanager
def running_platform(directory: Path, *, dispatch: bool = True):
    platform = PlatformServer(directory, dispatch=dispatch).start()
    try:
        yield platform
    finally:
        platform.stop()


def delivery_rows(platform: PlatformServer, org_id: int) -> list[Any]:
    """The organization's deliveries, oldest first: (id, status, attempt_count)."""
    from sqlalchemy import select

    from tidings.store.platform_tables import deliveries

    async def work(conn) -> list[Any]:
        return (await conn.execute(
            select(deliveries.c.id, deliveries.c.status, deliveries.c.attempt_count)
            .where(deliveries.c.org_id == org_id).order_by(deliveries.c.id)
        )).all()

    return platform.run(work)


def wait_for(condition: Callable[[], Any], *, seconds: float = 10.0, what: str = "a condition") -> Any:
    """Polls ``condition`` until it returns something true; fails after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------- the receiver


class ReceiverServer:
    """``ReceiverService`` on two listeners: the public one (the webhook, with projection and
    handlers) and the admin one (the inbox, the read API) behind ``token``.

    ``send`` signs a body as the platform would and posts it to the webhook;
    ``sign_in_url`` is the admin URL that signs a browser in. Not started, it
    is the same service for in-process tests (``service``, ``api``).
    """

    token = "browser-test-admin-token-0123"

    def __init__(self, db_url: str, handlers: Any = None, *, poll_interval: float = 0.1) -> None:
        from tidings.contract.signing import public_key_whpk
        from tidings.apps.receiver_admin import AdminListener
        from tidings.apps.receiver_service import ReceiverConfig, ReceiverService

        key = generate_private_key()
        self.signer = Signer(key)
        self.db_url = db_url
        config = ReceiverConfig(db_url=db_url, public_keys=[public_key_whpk(key.public_key())], any_org=True,
                                poll_interval=poll_interval, backoff_base=0.05, backoff_cap=0.1)
        self._admin_socket = loopback_socket()
        self.admin = AdminListener(port=self._admin_socket.getsockname()[1], token=self.token, token_given=True)
        self.service = ReceiverService(config, handlers, admin=self.admin)
        self.api = self.service.admin_app  # the inbox and the read API, behind the token
        self.served: ServedApp | None = None
        self.served_admin: ServedApp | None = None
        self._sent = 0

    @property
    def base_url(self) -> str:
        """The public listener: the webhook and /health."""
        return self.served.base_url

    @property
    def admin_url(self) -> str:
        return self.admin.base_url

    def sign_in_url(self, path: str = "/inbox") -> str:
        return self.admin.sign_in_url(path)

    def signed(self, body: bytes) -> dict[str, str]:
        self._sent += 1
        return self.signer.sign(body, msg_id=f"msg_{time.monotonic_ns():x}{self._sent}")

    def start(self) -> ReceiverServer:
        self.served = ServedApp(self.service.app).start()
        self.served_admin = ServedApp(self.api, lifespan="off", sock=self._admin_socket).start()
        return self

    def stop(self) -> None:
        if self.served_admin is not None:
            self.served_admin.stop()
        else:
            self._admin_socket.close()
        if self.served is not None:
            self.served.stop()
        else:
            self.service.receiver.close()
            self.service.log.dispose()

    def send(self, body: bytes) -> httpx.Response:
        """POSTs a signed body to the running receiver's webhook."""
        return httpx.post(self.base_url + "/webhook", content=body, headers=self.signed(body), timeout=10)


def message_event(factory: Any, *, consumer: str | None = None, text: str = "Hello", content_type: str = "Text",
                  conversation_id: int | None = None, date: str | None = None, sender_type: str = "Consumer",
                  status: str = "Success", is_read: bool = False, same_conversation_as: dict | None = None,
                  sender_label: str | None = None, event_type: str = "message_created") -> bytes:
    """A message event body from ``SampleFactory``, with the fields a test cares about.

    ``same_conversation_as``: a conversation of an earlier event (``payload["conversation"]``),
    whose fields this one keeps, so that a thread reads as one conversation.
    """
    import orjson

    from tidings.contract import event_to_document

    document = event_to_document(factory.event(
        event_type,
        message={"content_type": content_type, "content": text, "sender_type": sender_type, "status": status},
        conversation={"is_read": is_read},
    ))
    payload = document["payload"]
    message = payload["message"]
    if same_conversation_as is not None:
        payload["conversation"] = dict(same_conversation_as, is_read=is_read)
        conversation_id = same_conversation_as["id"]
    conversation = payload["conversation"]
    if consumer is not None:
        conversation["consumer_name"] = consumer
    if conversation_id is not None:
        conversation["id"] = message["conversation_id"] = conversation_id
    if date is not None:
        message["date"] = date
    if sender_label is not None:
        message["sender_label"] = sender_label
    conversation["last_message"] = dict(message)
    return orjson.dumps(document)
