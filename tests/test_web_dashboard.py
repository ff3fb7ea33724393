"""The dashboard over HTTP on 127.0.0.1, on both engines: signing in, what each
organization sees, the filters, the health figures, the actions and the
live-update stream. (The browser tests drive the same pages in chromium.)"""

from __future__ import annotations

import contextlib
import doctest
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import insert, select, update

from tidings.contract.samples import SampleFactory
from tidings.contract.signing import Signer, generate_private_key
from tidings.platform import api_keys, tenants
from tidings.platform.api.auth import hash_api_key
from tidings.platform.api.app import create_app
from tidings.platform.api.context import PlatformContext
from tidings.platform.deliveries.outbox import record_event
from tidings.platform.settings import DeliverySettings, PlatformSettings
from tidings.store.engine import create_engine, create_sync_engine
from tidings.store.platform_tables import attempts, dashboard_sessions, deliveries, webhook_configs
from tidings.web import dashboard, live
from tidings.web.dashboard import mount_dashboard
from tidings.platform.deliveries.reads import DeliveryFilter
from tidings.web.session import SESSION_COOKIE
from tests.browser.servers import Endpoint
from tests.loopback import HOST, http_client

NOW = datetime.now(UTC)
MAY_FIRST_NOON = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def create_schema(url: str) -> None:
    from tidings.store import all_tables  # noqa: F401
    from tidings.store.metadata import metadata

    engine = create_sync_engine(url)
    metadata.create_all(engine)
    engine.dispose()


@dataclass
class Org:
    org_id: int
    key: str
    config_id: int
    delivery_ids: list[int]


class Dashboard:
    """The platform's app with the dashboard, on a fresh database, and a way to seed it."""

    def __init__(self, url: str) -> None:
        create_schema(url)
        self.engine = create_engine(url)
        self.signer = Signer(generate_private_key())
        settings = PlatformSettings(db_url=url, delivery=DeliverySettings(allow_private_targets=True, allow_http=True))
        self.app = create_app(PlatformContext(settings=settings, engine=self.engine, signer=self.signer))
        mount_dashboard(self.app)
        self.samples = SampleFactory(11)

    @contextlib.asynccontextmanager
    async def client(self, org: Org | None = None, **cookies: str):
        """An HTTP client of the dashboard over a real socket on 127.0.0.1, signed in as ``org``."""
        async with http_client(self.app) as client:
            if org is not None:
                client.cookies.set(SESSION_COOKIE, await self.session(org.key, org.org_id), domain=HOST,
                                   path="/dashboard")
            for name, value in cookies.items():
                client.cookies.set(name, value, domain=HOST, path="/dashboard")
            yield client

    async def session(self, key: str, org_id: int) -> str:
        """The id of a new dashboard session of ``key`` acting for ``org_id``, as signing in opens one."""
        from tidings.store.platform_tables import api_keys as keys_table

        async with self.engine.begin() as conn:
            key_id = (await conn.execute(select(keys_table.c.id)
                                         .where(keys_table.c.key_hash == hash_api_key(key)))).scalar_one()
            return await api_keys.open_session(conn, api_key_id=key_id, org_id=org_id, now=NOW,
                                               now_epoch=time.time())

    async def org(self, name: str, events: int = 3, url: str = "https://hooks.example.com/in") -> Org:
        async with self.engine.begin() as conn:
            org_id, key = await tenants.create_organization(conn, name)
            config_id = (await conn.execute(webhook_configs.insert().values(
                org_id=org_id, url=f"{url}/{name.lower()}", event_type="message_created", custom_headers={},
                secret="whsec_" + "A" * 43, created_at=NOW, updated_at=NOW,
            ).returning(webhook_configs.c.id))).scalar_one()
            for _ in range(events):
                await record_event(conn, org_id=org_id, event=self.samples.message_created(org_id=org_id),
                                   signer=self.signer)
            ids = list((await conn.execute(
                select(deliveries.c.id).where(deliveries.c.org_id == org_id).order_by(deliveries.c.id)
            )).scalars())
        return Org(org_id, key, config_id, ids)

    async def finish(self, delivery_id: int, *answers: tuple[int | None, str | None, float], status: str,
                     created_at: datetime | None = None) -> None:
        """Records attempts as the dispatcher would, and leaves the delivery in ``status``."""
        async with self.engine.begin() as conn:
            await conn.execute(insert(attempts), [
                {"delivery_id": delivery_id, "number": number, "started_at": NOW - timedelta(seconds=10 - number),
                 "duration_ms": ms, "status_code": code, "response_excerpt": "answer body" if code else None,
                 "error": error, "request_headers": {"Content-Type": "application/json"}, "worker_id": "w1"}
                for number, (code, error, ms) in enumerate(answers, start=1)
            ])
            values = {"status": status, "attempt_count": len(answers), "finished_at": NOW}
            if created_at is not None:
                values["created_at"] = created_at
            await conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(**values))

    async def status(self, delivery_id: int) -> str:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(deliveries.c.status).where(deliveries.c.id == delivery_id))).scalar_one()

    async def paused(self, config_id: int) -> bool:
        async with self.engine.connect() as conn:
            return (await conn.execute(
                select(webhook_configs.c.paused).where(webhook_configs.c.id == config_id))).scalar_one()


@pytest.fixture
async def dash(db_url):
    dashboard = Dashboard(db_url)
    yield dashboard
    await dashboard.engine.dispose()


def shown_deliveries(html: str) -> list[int]:
    return [int(found) for found in re.findall(r'<tr id="delivery-(\d+)"', html)]


def test_the_examples_in_the_dashboards_docstrings_hold():
    result = doctest.testmod(dashboard)
    assert result.attempted > 0 and result.failed == 0, result


def test_delivery_filters_from_a_query_string():
    wanted = dashboard.delivery_filter({"status": "failed", "event_type": "message_created", "config": "4",
                                        "since": "2024-05-01T12:00", "until": ""})
    assert wanted == DeliveryFilter("failed", "message_created", 4, MAY_FIRST_NOON, None)
    assert dashboard.delivery_filter({"config": "x", "since": "soon"}) == DeliveryFilter()
    assert dashboard.filter_query(wanted) == {"status": "failed", "event_type": "message_created", "config": "4",
                                              "since": "2024-05-01 12:00"}
    assert dashboard.parse_utc_input("2024-05-01T14:00+02:00") == MAY_FIRST_NOON



# ---------------------------------------------------------------- signing in


async def test_pages_ask_for_a_key_and_a_good_key_opens_them(dash):
    acme = await dash.org("Acme")
    async with dash.client() as client:
        answer = await client.get("/dashboard/deliveries?status=failed")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/dashboard/sign-in?next=%2Fdashboard%2Fdeliveries%3Fstatus%3Dfailed"
        assert (await client.get("/dashboard/events")).status_code == 401

        refused = await client.post("/dashboard/sign-in", data={"api_key": "tdk_wrong", "next": "/dashboard"})
        assert refused.status_code == 401
        assert "unknown API key" in refused.text
        assert SESSION_COOKIE not in client.cookies

        answer = await client.post("/dashboard/sign-in",
                                   data={"api_key": acme.key, "next": "/dashboard/deliveries?status=failed"})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/dashboard/deliveries?status=failed"
        cookie = answer.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
        assert (await client.get("/dashboard/deliveries")).status_code == 200
        # The cookie is an opaque id, not the key, and nothing but its hash is stored.
        session_id = client.cookies[SESSION_COOKIE]
        assert session_id != acme.key and acme.key not in cookie
        async with dash.engine.connect() as conn:
            stored = [tuple(row) for row in (await conn.execute(select(dashboard_sessions))).all()]
        assert stored and not any(session_id in str(value) or acme.key in str(value) for row in stored for value in row)

        await client.post("/dashboard/sign-out")
        assert (await client.get("/dashboard/deliveries")).status_code == 303
        # Signing out deleted the session on the server: the old cookie opens nothing.
        client.cookies.set(SESSION_COOKIE, session_id, domain=HOST, path="/dashboard")
        assert (await client.get("/dashboard/deliveries")).status_code == 303


async def test_revoking_the_key_ends_its_dashboard_sessions(dash):
    acme = await dash.org("Acme")
    async with dash.client(acme) as client:
        assert (await client.get("/dashboard/deliveries")).status_code == 200
        async with dash.engine.begin() as conn:
            key_id = (await conn.execute(select(dashboard_sessions.c.api_key_id))).scalar_one()
            assert await api_keys.revoke(conn, key_id=key_id, org_id=acme.org_id, now=NOW)
        assert (await client.get("/dashboard/deliveries")).status_code == 303


async def test_a_provider_key_opens_only_the_organizations_it_manages(dash):
    acme = await dash.org("Acme")
    globex = await dash.org("Globex")
    initech = await dash.org("Initech")
    async with dash.engine.begin() as conn:
        provider_key = await tenants.create_provider_key(conn, "Agency", [acme.org_id, globex.org_id])
    async with dash.client() as client:
        without_org = await client.post("/dashboard/sign-in", data={"api_key": provider_key})
        assert without_org.status_code == 401 and "org_id" in without_org.text
        unmanaged = await client.post("/dashboard/sign-in", data={"api_key": provider_key,
                                                                  "org_id": str(initech.org_id)})
        assert unmanaged.status_code == 401 and "does not manage" in unmanaged.text
        opened = await client.post("/dashboard/sign-in", data={"api_key": provider_key, "org_id": str(globex.org_id)})
        assert opened.status_code == 303
        page = (await client.get("/dashboard/deliveries")).text
        assert sorted(shown_deliveries(page)) == globex.delivery_ids
    # The organization is the server's record of the session: a cookie made up by hand opens nothing.
    async with dash.client(**{SESSION_COOKIE: provider_key}) as client:
        assert (await client.get("/dashboard/deliveries")).status_code == 303


async def test_an_organization_key_cannot_open_another_organization(dash):
    acme = await dash.org("Acme")
    globex = await dash.org("Globex")
    async with dash.client() as client:
        answer = await client.post("/dashboard/sign-in", data={"api_key": acme.key, "org_id": str(globex.org_id)})
        assert answer.status_code == 401 and "another organization" in answer.text


# ---------------------------------------------------------------- what each organization sees


async def test_each_organization_sees_only_its_own(dash):
    acme = await dash.org("Acme")
    globex = await dash.org("Globex")
    await dash.finish(globex.delivery_ids[0], (500, None, 5.0), status="failed")
    async with dash.client(acme) as client:
        configurations = (await client.get("/dashboard/configurations")).text
        assert f'id="config-{acme.config_id}"' in configurations
        assert f'id="config-{globex.config_id}"' not in configurations and "/globex" not in configurations

        listed = (await client.get("/dashboard/deliveries")).text
        assert sorted(shown_deliveries(listed)) == acme.delivery_ids
        assert "/globex" not in listed
        assert sorted(shown_deliveries((await client.get(
            f"/dashboard/deliveries?config={globex.config_id}")).text)) == []

        theirs = globex.delivery_ids[0]
        assert (await client.get(f"/dashboard/deliveries/{theirs}")).status_code == 404
        assert (await client.get(f"/dashboard/events?view=delivery&id={theirs}")).status_code == 404
        assert (await client.post(f"/dashboard/deliveries/{theirs}/resend")).status_code == 404
        assert (await client.post(f"/dashboard/configurations/{globex.config_id}/pause")).status_code == 404
        assert (await client.post(f"/dashboard/configurations/{globex.config_id}/resume")).status_code == 404
        assert (await client.post("/dashboard/recover", data={"since": "2000-01-01T00:00",
                                                              "config": str(globex.config_id)})).status_code == 404
    assert await dash.status(globex.delivery_ids[0]) == "failed"
    assert not await dash.paused(globex.config_id)


async def test_the_stream_sends_only_the_organizations_new_deliveries(dash):
    from tidings.web.dashboard import _deliveries_stream
    from tidings.platform.deliveries.reads import DeliveryFilter, Head, head

    acme = await dash.org("Acme", events=1)
    globex = await dash.org("Globex", events=1)
    async with dash.engine.connect() as conn:
        start = await head(conn)
    await dash.org("Initech", events=2)
    newer_acme, newer_globex = SampleFactory(3).message_created(), SampleFactory(4).message_created()
    async with dash.engine.begin() as conn:
        await record_event(conn, org_id=globex.org_id, event=newer_globex, signer=dash.signer)
        await record_event(conn, org_id=acme.org_id, event=newer_acme, signer=dash.signer)

    poll = _deliveries_stream(dash.app.state.platform, acme.org_id, DeliveryFilter())
    found = await poll(start.spelled())
    rows = [change for change in found.changes if change.key != "held-back"]  # the section: tested below
    assert len(rows) == 1 and isinstance(rows[0], live.Upsert)
    (change,) = rows
    async with dash.engine.connect() as conn:
        acme_new = (await conn.execute(select(deliveries.c.id).where(
            deliveries.c.org_id == acme.org_id).order_by(deliveries.c.id.desc()))).scalars().first()
    assert change.key == f"delivery-{acme_new}"
    assert change.container == "deliveries"
    assert f'id="delivery-{acme_new}"' in change.html
    assert Head.parse(found.position).delivery_id >= acme_new
    # Nothing new since: nothing sent.
    again = await poll(found.position)
    assert again.changes == [] and again.position == found.position

    # A delivery that stops matching the page's filter is taken off it.
    await dash.finish(acme_new, (500, None, 3.0), status="failed")
    only_pending = _deliveries_stream(dash.app.state.platform, acme.org_id, DeliveryFilter(status="pending"))
    changed = await only_pending(found.position)
    assert [change for change in changed.changes if change.key != "held-back"] == [
        live.Removal(f"delivery-{acme_new}")]


# ---------------------------------------------------------------- filters


async def test_the_filters_of_the_deliveries_page(dash):
    acme = await dash.org("Acme", events=4)
    first, second, third, fourth = acme.delivery_ids
    await dash.finish(first, (500, None, 3.0), status="failed", created_at=NOW - timedelta(days=2))
    await dash.finish(second, (200, None, 3.0), status="delivered")
    await dash.finish(third, (None, "connection refused", 1.0), status="failed")
    async with dash.client(acme) as client:
        async def ids(query: str) -> list[int]:
            answer = await client.get("/dashboard/deliveries" + query)
            assert answer.status_code == 200
            return shown_deliveries(answer.text)

        assert await ids("") == [fourth, third, second, first]  # newest first
        assert await ids("?status=failed") == [third, first]
        assert await ids("?status=delivered") == [second]
        assert await ids(f"?config={acme.config_id}&status=pending") == [fourth]
        assert await ids("?event_type=message_updated") == []
        yesterday = (NOW - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
        assert await ids(f"?status=failed&since={yesterday}") == [third]
        assert await ids(f"?until={yesterday}") == [first]
        assert await ids("?status=nonsense") == []


# ---------------------------------------------------------------- health


async def test_configurations_show_their_health(dash):
    acme = await dash.org("Acme", events=3)
    first, second, third = acme.delivery_ids
    await dash.finish(first, (200, None, 10.0), status="delivered", created_at=NOW - timedelta(milliseconds=12))
    await dash.finish(second, (503, None, 40.0), (200, None, 20.0), status="delivered",
                      created_at=NOW - timedelta(seconds=31))
    await dash.finish(third, (None, "connection refused", 2000.0), status="failed", created_at=NOW)
    async with dash.client(acme) as client:
        page = (await client.get("/dashboard/configurations")).text
    row = re.search(rf'<tr id="config-{acme.config_id}".*?</tr>', page, re.S).group(0)
    cells = [" ".join(re.sub(r"<[^>]+>", " ", cell).split()) for cell in re.findall(r"<td.*?</td>", row, re.S)]
    assert cells[3] == "50.0 % 4 attempts"  # 2 of 4 attempts answered 2xx
    assert cells[4] == "20 ms"  # p50 of 10, 20, 40 and 2000 ms, by nearest rank
    assert cells[5] == "2.00 s"  # p99
    # From creation to delivery, the delivered ones only: 12 ms and 31 s.
    assert (cells[6], cells[7]) == ("12 ms", "31.00 s")
    assert cells[8].startswith("connection refused")
    assert cells[9] == "closed *"  # one unanswered attempt does not open the circuit
    assert "1 failed" in cells[10]


# ---------------------------------------------------------------- actions


async def test_pause_and_resume_hold_and_release_the_waiting_deliveries(dash):
    acme = await dash.org("Acme", events=2)
    async with dash.client(acme) as client:
        answer = await client.post(f"/dashboard/configurations/{acme.config_id}/pause", data={"reason": "maintenance"})
        assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/configurations"
        assert await dash.paused(acme.config_id)
        assert [await dash.status(i) for i in acme.delivery_ids] == ["held", "held"]
        page = (await client.get("/dashboard/configurations")).text
        assert "is paused; 2 waiting deliveries are held" in page
        assert 'data-action="resume"' in page
        # The notice is shown once.
        assert "is paused" not in (await client.get("/dashboard/configurations")).text

        await client.post(f"/dashboard/configurations/{acme.config_id}/resume")
        assert not await dash.paused(acme.config_id)
        assert [await dash.status(i) for i in acme.delivery_ids] == ["pending", "pending"]


async def test_resend_queues_a_finished_delivery_and_refuses_one_in_progress(dash):
    acme = await dash.org("Acme", events=2)
    failed, waiting = acme.delivery_ids
    await dash.finish(failed, (500, None, 3.0), status="failed")
    async with dash.client(acme) as client:
        answer = await client.post(f"/dashboard/deliveries/{failed}/resend")
        assert answer.status_code == 303 and answer.headers["location"] == f"/dashboard/deliveries/{failed}"
        assert await dash.status(failed) == "pending"
        assert "is queued to be sent again" in (await client.get(answer.headers["location"])).text

        await client.post(f"/dashboard/deliveries/{waiting}/resend")
        assert "is not finished: it is pending" in (await client.get(f"/dashboard/deliveries/{waiting}")).text


async def test_recover_queues_the_failed_deliveries_since_a_time(dash):
    acme = await dash.org("Acme", events=3)
    old, recent, delivered = acme.delivery_ids
    await dash.finish(old, (500, None, 3.0), status="failed", created_at=NOW - timedelta(days=3))
    await dash.finish(recent, (500, None, 3.0), status="failed")
    await dash.finish(delivered, (200, None, 3.0), status="delivered")
    since = (NOW - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    async with dash.client(acme) as client:
        answer = await client.post("/dashboard/recover", data={"since": since})
        assert answer.status_code == 303
        assert "1 failed deliveries since" in (await client.get(answer.headers["location"])).text
        assert [await dash.status(i) for i in acme.delivery_ids] == ["failed", "pending", "delivered"]

        await client.post("/dashboard/recover", data={"since": "not a time"})
        assert "Recover needs a time" in (await client.get("/dashboard/deliveries")).text


async def test_actions_posted_from_another_site_are_refused(dash):
    acme = await dash.org("Acme", events=1)
    await dash.finish(acme.delivery_ids[0], (500, None, 3.0), status="failed")
    async with dash.client(acme) as client:
        foreign = {"origin": "https://evil.example"}
        assert (await client.post(f"/dashboard/deliveries/{acme.delivery_ids[0]}/resend",
                                  headers=foreign)).status_code == 403
        assert (await client.post(f"/dashboard/configurations/{acme.config_id}/pause",
                                  headers=foreign)).status_code == 403
        assert (await client.post("/dashboard/sign-in", data={"api_key": acme.key}, headers=foreign)).status_code == 403
    assert await dash.status(acme.delivery_ids[0]) == "failed"
    assert not await dash.paused(acme.config_id)


# ---------------------------------------------------------------- one delivery


async def test_one_delivery_shows_every_attempt_with_its_request_and_answer(dash):
    acme = await dash.org("Acme", events=1)
    (delivery_id,) = acme.delivery_ids
    await dash.finish(delivery_id, (503, None, 41.0), (None, "timed out after 10 s", 10_000.0), (200, None, 12.0),
                      status="delivered")
    async with dash.client(acme) as client:
        page = (await client.get(f"/dashboard/deliveries/{delivery_id}")).text
    assert len(re.findall(r'<article id="attempt-\d+"', page)) == 3
    assert "HTTP 503" in page and "timed out after 10 s" in page and "HTTP 200" in page
    assert "10.00 s" in page and "41 ms" in page
    assert "Content-Type" in page and "answer body" in page
    assert "&#34;payload&#34;" in page or "&quot;payload&quot;" in page  # the body, indented and escaped
    assert 'data-action="resend"' in page


async def test_the_event_stream_answers_server_sent_events(sqlite_url):
    """Through a real server (one engine is enough for the wire format; the queries run on both above)."""
    from tests.browser.servers import ServedApp

    dash = Dashboard(sqlite_url)
    acme = await dash.org("Acme", events=1)
    # The app runs in the server's own loop: it needs an engine of its own.
    served_engine = create_engine(sqlite_url)
    dash.app.state.platform = PlatformContext(settings=dash.app.state.platform.settings, engine=served_engine,
                                              signer=dash.signer)
    with ServedApp(dash.app, cleanup=served_engine.dispose) as served:
        async with dash.engine.begin() as conn:
            await record_event(conn, org_id=acme.org_id, event=SampleFactory(9).message_created(), signer=dash.signer)
        cookies = {SESSION_COOKIE: await dash.session(acme.key, acme.org_id)}
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=served.base_url, cookies=cookies, timeout=10) as client:
            async with client.stream("GET", "/dashboard/events?view=deliveries&after=1.0") as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                lines: list[str] = []
                async for line in stream.aiter_lines():
                    lines.append(line)
                    if line.startswith("data: "):
                        break
                    assert time.monotonic() - started < 10
    assert lines[0] == "retry: 1000"
    assert [line for line in lines if line.startswith("event: ")] == ["event: upsert"]
    assert any(line.startswith("id: ") for line in lines)
    assert '"key":"delivery-2"' in lines[-1]
    await dash.engine.dispose()


async def test_send_test_posts_a_tryout_to_the_configurations_url(dash):
    endpoint = Endpoint().start()
    try:
        acme = await dash.org("Acme", events=1, url=endpoint.url)
        async with dash.client(acme) as client:
            answer = await client.post(f"/dashboard/configurations/{acme.config_id}/test")
            assert answer.status_code == 303
            page = (await client.get("/dashboard/configurations")).text
            assert re.search(r'notice-ok" role="status">Test event to http://127\.0\.0\.1:\d+/hooks/tidings/acme: '
                             r"answered HTTP 200 in \d+ ms\.", page)
            endpoint.status = 500
            await client.post(f"/dashboard/configurations/{acme.config_id}/test")
            assert "answered HTTP 500" in (await client.get("/dashboard/configurations")).text
    finally:
        endpoint.stop()
    assert len(endpoint.received) == 2
    headers = endpoint.received[0]["headers"]
    assert headers["X-Tidings-Tryout"] == "true"
    assert b'"type":"message_created"' in endpoint.received[0]["body"]
    # A tryout is not a delivery: nothing is recorded.
    async with dash.engine.connect() as conn:
        count = (await conn.execute(select(deliveries.c.id).where(deliveries.c.org_id == acme.org_id))).all()
    assert len(count) == 1


async def test_mounting_twice_changes_nothing(dash):
    routes = len(dash.app.routes)
    mount_dashboard(dash.app)
    assert len(dash.app.routes) == routes


# ---------------------------------------------------------------- held back by ordered delivery


async def record_conversation(dash: Dashboard, org: Org, conversation_id: int, events: int) -> list[int]:
    """``events`` events of one conversation through the outbox: one head, the rest queued behind it."""
    async with dash.engine.begin() as conn:
        for _ in range(events):
            event = dash.samples.message_created(org_id=org.org_id, conversation={"id": conversation_id})
            await record_event(conn, org_id=org.org_id, event=event, signer=dash.signer)
        return list((await conn.execute(
            select(deliveries.c.id).where(deliveries.c.org_id == org.org_id,
                                          deliveries.c.conversation_id == conversation_id)
            .order_by(deliveries.c.sequence))).scalars())


async def set_delivery(dash: Dashboard, delivery_id: int, **values) -> None:
    async with dash.engine.begin() as conn:
        await conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(**values))


def held_back_rows(html: str) -> dict[str, str]:
    """The held-back section's rows by id, each as its text."""
    section = re.search(r'<section id="held-back".*?</section>', html, re.S).group(0)
    return {row_id: " ".join(re.sub(r"<[^>]+>", " ", row).split())
            for row_id, row in re.findall(r'<tr id="(held-\d+-\d+)".*?>(.*?)</tr>', section, re.S)}


def held_back_hidden(html: str) -> bool:
    return bool(re.search(r'<section id="held-back"[^>]* hidden>', html))


async def test_the_deliveries_page_shows_each_held_back_conversation_and_why(dash):
    acme = await dash.org("Acme", events=0)
    globex = await dash.org("Globex", events=0)
    failing = await record_conversation(dash, acme, 501, events=3)
    sending = await record_conversation(dash, acme, 502, events=2)
    alone = await record_conversation(dash, acme, 503, events=1)
    theirs = await record_conversation(dash, globex, 501, events=3)  # the same conversation id, another organization
    assert [await dash.status(i) for i in failing] == ["pending", "queued", "queued"]
    assert [await dash.status(i) for i in alone] == ["pending"]
    # 501's head has failed four times and waits for its next try; 502's is being sent.
    await set_delivery(dash, failing[0], attempt_count=4, last_status_code=500,
                       last_error="answered 500; retry 4 in 480 s", next_attempt_at=time.time() + 120)
    await set_delivery(dash, sending[0], status="delivering", worker_id="w1", attempt_count=1,
                       last_status_code=503)
    for queued in failing[1:]:
        await set_delivery(dash, queued, created_at=NOW - timedelta(minutes=10))

    async with dash.client(acme) as client:
        page = (await client.get("/dashboard/deliveries")).text
    assert not held_back_hidden(page)
    rows = held_back_rows(page)
    assert list(rows) == [f"held-{acme.config_id}-501", f"held-{acme.config_id}-502"]  # longest wait first
    first = rows[f"held-{acme.config_id}-501"]
    assert first.startswith("501 https://hooks.example.com/in/acme configuration #")
    assert " 2 events " in first and f"#{failing[0]} pending" in first
    assert re.search(r"retrying: 4 attempts failed, last answer HTTP 500, next try in (2 min|1 min \d+ s) ", first)
    since = (NOW - timedelta(minutes=10)).strftime("%Y-%m-%d %H:%M:%S")
    # NOW was read when the tests were collected: at least 10 minutes ago
    waited = re.search(rf"{since} for (\d+) min( \d+ s)?$", first)
    assert waited and int(waited.group(1)) >= 10
    second = rows[f"held-{acme.config_id}-502"]
    assert " 1 event " in second and f"#{sending[0]} delivering" in second and "being sent (attempt 2)" in second
    assert f'href="/dashboard/deliveries/{failing[0]}" class="head-link"' in page
    assert "2 conversations with 3 events waiting" in page
    # Another organization's held-back conversation never shows, not even one with the same id.
    assert f"held-{globex.config_id}-" not in page and "/globex" not in page
    assert f'id="delivery-{theirs[1]}"' not in page

    # The section follows the configuration filter.
    async with dash.client(acme) as client:
        one = (await client.get(f"/dashboard/deliveries?config={acme.config_id}")).text
        assert list(held_back_rows(one)) == list(rows) and "configuration #" in one
        foreign = (await client.get(f"/dashboard/deliveries?config={globex.config_id}")).text
        assert held_back_hidden(foreign) and held_back_rows(foreign) == {}

        # Paused: the pending head is held, and the reason says so (and what happened before).
        await client.post(f"/dashboard/configurations/{acme.config_id}/pause", data={"reason": "maintenance"})
        paused = held_back_rows((await client.get("/dashboard/deliveries")).text)
    assert await dash.status(failing[0]) == "held"
    assert ("paused configuration (maintenance); before: 4 attempts failed, last answer HTTP 500"
            in paused[f"held-{acme.config_id}-501"])
    assert "being sent" in paused[f"held-{acme.config_id}-502"]  # a delivery being sent finishes


async def test_a_conversation_with_nothing_queued_is_not_held_back(dash):
    acme = await dash.org("Acme", events=0)
    await record_conversation(dash, acme, 601, events=1)
    async with dash.client(acme) as client:
        page = (await client.get("/dashboard/deliveries")).text
    assert held_back_hidden(page) and held_back_rows(page) == {}


async def test_queued_is_a_status_like_the_others(dash):
    from tidings.platform.deliveries.statuses import STATUSES
    from tidings.web.templating import render_macro

    for status in STATUSES:
        assert f'class="badge status-{status}"' in render_macro("_rows.html", "status_badge", status=status)
    assert ".status-queued" in (dashboard.STATIC_DIR / "tidings.css").read_text()

    acme = await dash.org("Acme", events=0)
    ids = await record_conversation(dash, acme, 701, events=3)
    async with dash.client(acme) as client:
        page = (await client.get("/dashboard/deliveries?status=queued")).text
        configurations = (await client.get("/dashboard/configurations")).text
    assert '<option value="queued" selected>queued</option>' in page
    assert sorted(shown_deliveries(page)) == ids[1:]
    assert page.count('class="badge status-queued"') == 2
    queued_link = f'href="/dashboard/deliveries?config={acme.config_id}#held-back" class="queued-link">2 queued</a>'
    assert queued_link in configurations


async def test_a_queued_delivery_says_what_it_waits_behind(dash):
    acme = await dash.org("Acme", events=0)
    head, waiting = await record_conversation(dash, acme, 801, events=2)
    await set_delivery(dash, head, attempt_count=1, last_error="connection: refused; retry 1 in 30 s",
                       next_attempt_at=time.time() + 30)
    async with dash.client(acme) as client:
        page = (await client.get(f"/dashboard/deliveries/{waiting}")).text
        head_page = (await client.get(f"/dashboard/deliveries/{head}")).text
    fact = re.search(r'<div id="waits-behind">.*?</div>', page, re.S).group(0)
    behind = " ".join(re.sub(r"<[^>]+>", " ", fact).split())
    assert behind.startswith(f"Waits behind #{head} pending "
                             "retrying: 1 attempt failed, no answer (connection: refused), next try in ")
    assert "<dt>Conversation</dt><dd>801 <span class=\"muted\">· sequence 2</span>" in page
    assert 'id="waits-behind"' not in head_page  # the head waits behind nothing


async def test_the_deliveries_stream_redraws_the_held_back_section_after_a_change(dash, monkeypatch):
    from tidings.web.dashboard import _deliveries_stream
    from tidings.platform.deliveries.reads import head

    monkeypatch.setattr(dashboard, "HELD_BACK_REFRESH", 0.3)
    acme = await dash.org("Acme", events=0)
    globex = await dash.org("Globex", events=0)
    async with dash.engine.connect() as conn:
        start = await head(conn)
    poll = _deliveries_stream(dash.app.state.platform, acme.org_id, DeliveryFilter())
    await record_conversation(dash, globex, 901, events=2)
    found = await poll(start.spelled())
    assert found.changes == []  # nothing of Acme's changed: nothing drawn

    ids = await record_conversation(dash, acme, 901, events=2)
    found = await poll(found.position)
    (section,) = [change for change in found.changes if change.key == "held-back"]
    assert [change.key for change in found.changes if change.key != "held-back"] == [f"delivery-{i}" for i in ids]
    assert list(held_back_rows(section.html)) == [f"held-{acme.config_id}-901"]
    assert not held_back_hidden(section.html)

    # Another change soon after: its row at once, the section not before HELD_BACK_REFRESH...
    more = await record_conversation(dash, acme, 901, events=1)  # every delivery of the conversation
    found = await poll(found.position)
    assert [change.key for change in found.changes] == [f"delivery-{more[-1]}"]
    # ...and then, even with nothing new: the last change is not left out.
    time.sleep(0.35)
    found = await poll(found.position)
    (section,) = found.changes
    assert " 2 events " in held_back_rows(section.html)[f"held-{acme.config_id}-901"]

    # Once nothing waits any more the section is sent empty (hidden), then not again while it stays so.
    for delivery_id in more:
        await dash.finish(delivery_id, (200, None, 3.0), status="delivered")
    time.sleep(0.35)
    found = await poll(found.position)
    (section,) = [change for change in found.changes if change.key == "held-back"]
    assert held_back_hidden(section.html) and held_back_rows(section.html) == {}
    await dash.finish(more[0], (200, None, 3.0), status="delivered")  # another attempt: a change
    time.sleep(0.35)
    found = await poll(found.position)
    assert [change.key for change in found.changes] == [f"delivery-{more[0]}"]


async def test_the_held_back_queries_use_the_ordering_indexes(sqlite_url):
    """SQLite's plan for each statement: the queued rows by ix_deliveries_config_status_id, the heads by
    ix_deliveries_order, never a scan of the whole deliveries table."""
    from sqlalchemy import event

    from tidings.platform.deliveries.reads import held_back

    dash = Dashboard(sqlite_url)
    acme = await dash.org("Acme", events=0)
    await record_conversation(dash, acme, 1001, events=3)
    statements: list[tuple[str, tuple]] = []

    def remember(_conn, _cursor, statement, parameters, _context, _many):
        if "deliveries" in statement:
            statements.append((statement, parameters))

    event.listen(dash.engine.sync_engine, "before_cursor_execute", remember)
    async with dash.engine.connect() as conn:
        found = await held_back(conn, acme.org_id, limit=1)  # at the limit: the totals are counted too
        event.remove(dash.engine.sync_engine, "before_cursor_execute", remember)
        assert (found.total_conversations, found.total_waiting) == (1, 2)
        plans = []
        for statement, parameters in statements:
            raw = await conn.get_raw_connection()
            cursor = raw.driver_connection  # aiosqlite's connection
            rows = await (await cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)).fetchall()
            plans.append(" | ".join(row[-1] for row in rows))
    await dash.engine.dispose()
    assert len(plans) == 3, plans  # the groups, their totals, the heads
    for plan in plans[:2]:
        assert "SEARCH deliveries USING INDEX ix_deliveries_config_status_id (webhook_config_id=? AND status=?)" in plan
    assert "SEARCH deliveries USING INDEX ix_deliveries_order (webhook_config_id=? AND conversation_id=?" in plans[2]
    assert not any("SCAN deliveries" in plan for plan in plans), plans
