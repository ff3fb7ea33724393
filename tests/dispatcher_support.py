"""What the dispatcher's tests share: a database with the tables, an
organization and its configurations, events written through the outbox, and
scripted endpoints served by aiohttp on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from sqlalchemy import func, insert, select

import tidings.store.all_tables  # noqa: F401  (registers every table)
from tests.loopback import serve_aiohttp
from tidings.contract.samples import SampleFactory
from tidings.contract.signing import Signer, generate_private_key, generate_secret
from tidings.platform.deliveries.outbox import record_event
from tidings.platform.settings import DeliverySettings
from tidings.store.engine import create_engine, create_sync_engine
from tidings.store.metadata import metadata
from tidings.store.platform_tables import attempts, deliveries, organizations, webhook_configs


def create_tables(url: str) -> None:
    engine = create_sync_engine(url)
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()


def fast_settings(**changes) -> DeliverySettings:
    """Loopback and http:// allowed (the endpoints run on 127.0.0.1); short waits."""
    values = dict(allow_private_targets=True, allow_http=True, retry_base=0.05, retry_factor=2.0,
                  retry_jitter=0.0, attempt_timeout=2.0, heartbeat_interval=0.2, stale_after=1.0)
    values.update(changes)
    return DeliverySettings(**values)


@contextlib.asynccontextmanager
async def database(url: str):
    create_tables(url)
    engine = create_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def add_organization(engine, name: str = "Acme") -> int:
    async with engine.begin() as conn:
        return (await conn.execute(insert(organizations).values(name=name, created_at=datetime.now(UTC))
                                   .returning(organizations.c.id))).scalar_one()


async def add_configuration(engine, org_id: int, url: str, *, event_type: str = "message_created",
                            custom_headers: dict | None = None, secret: str | None = None,
                            previous_secret: str | None = None, previous_expires_at: float | None = None) -> int:
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        return (await conn.execute(insert(webhook_configs).values(
            org_id=org_id, url=url, event_type=event_type, custom_headers=custom_headers or {},
            secret=secret or generate_secret(), previous_secret=previous_secret,
            previous_secret_expires_at=previous_expires_at, created_at=now, updated_at=now,
        ).returning(webhook_configs.c.id))).scalar_one()


async def add_events(engine, signer: Signer, org_id: int, count: int, *, seed: int = 1,
                     event_type: str = "message_created", chunk: int = 500) -> list[int]:
    """``count`` events written through the outbox, ``chunk`` per transaction."""
    factory = SampleFactory(seed)
    ids = []
    remaining = count
    while remaining:
        async with engine.begin() as conn:
            for _ in range(min(chunk, remaining)):
                ids.append(await record_event(conn, org_id=org_id, event=factory.event(event_type), signer=signer))
        remaining -= min(chunk, remaining)
    return ids


async def delivery_rows(engine) -> list:
    async with engine.connect() as conn:
        return (await conn.execute(select(deliveries).order_by(deliveries.c.id))).all()


async def attempt_rows(engine, delivery_id: int | None = None) -> list:
    query = select(attempts).order_by(attempts.c.id)
    if delivery_id is not None:
        query = query.where(attempts.c.delivery_id == delivery_id)
    async with engine.connect() as conn:
        return (await conn.execute(query)).all()


async def count_status(engine, status: str) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(deliveries)
                                   .where(deliveries.c.status == status))).scalar_one()


def new_signer() -> Signer:
    return Signer(generate_private_key())


@dataclass
class Received:
    at: float
    path: str
    body: bytes
    headers: dict[str, str]


@dataclass
class ScriptedEndpoint:
    """An aiohttp server on 127.0.0.1 that answers each path from a script.

    A script is a list of steps, one per request (the last repeats): an int
    status, ``("hang", seconds)`` (answer 200 after that long), or
    ``(status, {"Header": "value"})``.
    """

    scripts: dict[str, list] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Received]:
        return [request for request in self.received if request.path == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(Received(time.time(), request.path, body, dict(request.headers)))
        script = self.scripts.get(request.path, [200])
        step = script[min(len(self.on(request.path)) - 1, len(script) - 1)]
        headers = {}
        if isinstance(step, tuple) and step[0] == "hang":
            await asyncio.sleep(step[1])
            step = 200
        elif isinstance(step, tuple):
            step, headers = step
        return web.Response(status=step, text=f"answer {step}", headers=headers)


@contextlib.asynccontextmanager
async def scripted_endpoint(**scripts: list):
    """``scripted_endpoint(ok=[200], flaky=[500, 500, 200])`` serves ``/ok`` and ``/flaky``."""
    endpoint = ScriptedEndpoint({f"/{name}": script for name, script in scripts.items()})
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", endpoint._handle)
    async with serve_aiohttp(app) as url:
        endpoint.port = int(url.rsplit(":", 1)[1])
        yield endpoint


def bulk_pending(url: str, target: str, count: int, signer: Signer) -> None:
    """One organization and configuration at ``target`` and ``count`` pending
    deliveries, inserted in bulk (the outbox writes the same rows one event
    at a time; this is only quicker for large loads)."""
    from tidings.contract import dump_event
    from tidings.platform.deliveries.outbox import new_webhook_id
    from tidings.store.platform_tables import events

    create_tables(url)
    engine = create_sync_engine(url)
    now = datetime.now(UTC)
    bodies = [dump_event(event) for event in SampleFactory(3).events(200, "message_created")]
    signatures = [signer.vendor_signature(body) for body in bodies]
    try:
        with engine.begin() as conn:
            org_id = conn.execute(insert(organizations).values(name="Load", created_at=now)
                                  .returning(organizations.c.id)).scalar_one()
            config_id = conn.execute(insert(webhook_configs).values(
                org_id=org_id, url=target, event_type="message_created", custom_headers={},
                secret=generate_secret(), created_at=now, updated_at=now).returning(webhook_configs.c.id)).scalar_one()
            event_ids = conn.execute(insert(events).returning(events.c.id), [
                {"org_id": org_id, "event_type": "message_created", "body": bodies[n % len(bodies)], "created_at": now}
                for n in range(count)]).scalars().all()
            conn.execute(insert(deliveries), [
                {"event_id": event_id, "webhook_config_id": config_id, "org_id": org_id,
                 "webhook_id": new_webhook_id(), "signature": signatures[n % len(bodies)], "status": "pending",
                 "attempt_count": 0, "next_attempt_at": time.time(), "created_at": now}
                for n, event_id in enumerate(event_ids)])
    finally:
        engine.dispose()
