"""What the platform's API tests share: a database with the schema, a
platform (engine, signer, app), tenants, and a real uvicorn server on loopback."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import func, select

from tests.loopback import UvicornThread, http_client, serve_uvicorn
from tidings.contract.signing import Signer, generate_private_key
from tidings.platform import tenants
from tidings.platform.api.app import create_app
from tidings.platform.api.context import PlatformContext
from tidings.platform.settings import DeliverySettings, PartnerSettings, PlatformSettings
from tidings.store.engine import create_engine


def create_schema(url: str) -> None:
    """The newest schema, built by the migrations."""
    from tidings.store.migrate import upgrade

    upgrade(url)


def platform_settings(db_url: str, **partners: Any) -> PlatformSettings:
    """Loopback and http:// targets allowed (tests run their receivers on 127.0.0.1)."""
    return PlatformSettings(
        db_url=db_url,
        secret_overlap=3600.0,
        delivery=DeliverySettings(allow_private_targets=True, allow_http=True),
        partners=PartnerSettings(**{"latency": 0.0, "failure_rate": 0.0, **partners}),
    )


@dataclass
class Tenant:
    org_id: int
    api_key: str
    business_id: str
    channel_id: str  # bidirectional
    readonly_channel_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"x-APIKey": self.api_key}


@dataclass
class Platform:
    context: PlatformContext
    partner_seed: int = 7
    app: Any = field(init=False)

    def __post_init__(self) -> None:
        self.app = create_app(self.context, partner_seed=self.partner_seed)

    @property
    def engine(self):
        return self.context.engine

    @property
    def signer(self) -> Signer:
        return self.context.signer

    @property
    def partners(self):
        return self.app.state.partners

    async def tenant(self, name: str) -> Tenant:
        async with self.engine.begin() as conn:
            org_id, key = await tenants.create_organization(conn, name)
            business_id = await tenants.create_business(conn, org_id, f"{name} shop", city="Lyon", zipcode="69001",
                                                         country="FR", formatted_address="1 rue X, 69001 Lyon")
            channel_id = await tenants.create_custom_channel(conn, org_id, f"{name} chat",
                                                             icon="https://cdn.example.com/i.png")
            readonly_id = await tenants.create_custom_channel(conn, org_id, f"{name} feed", is_readonly=True)
        return Tenant(org_id, key, business_id, channel_id, readonly_id)

    def client(self):
        """An HTTP client of the app over a real socket on 127.0.0.1 (``async with``)."""
        return http_client(self.app)

    async def count(self, table, *where) -> int:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one()

    async def rows(self, query) -> list:
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).all()


@contextlib.asynccontextmanager
async def running_platform(db_url: str, *, partner_seed: int = 7, **partner_settings: Any):
    """A platform on a fresh database; the engine is disposed afterwards."""
    create_schema(db_url)
    engine = create_engine(db_url)
    settings = platform_settings(db_url, **partner_settings)
    platform = Platform(PlatformContext(settings=settings, engine=engine, signer=Signer(generate_private_key())),
                        partner_seed=partner_seed)
    try:
        yield platform
    finally:
        await platform.partners.stop()
        await platform.app.state.ingest_queue.stop()
        await engine.dispose()


def with_settings(platform: Platform, **changes: Any) -> Platform:
    """The same database and signer with other settings (a new app)."""
    settings = replace(platform.context.settings, **changes)
    return Platform(replace(platform.context, settings=settings), partner_seed=platform.partner_seed)


# Servers on a socket they hold from bind to close (tests/loopback.py).
serve = serve_uvicorn


@contextlib.contextmanager
def serve_in_thread(app, **options):
    """Serves ``app`` with uvicorn on 127.0.0.1 in a thread of its own (for
    synchronous callers); yields the base URL."""
    with UvicornThread(app, **options) as server:
        yield server.url
