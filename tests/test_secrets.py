"""Secrets kept as secrets: database files 0600; whsec_ secrets and custom
headers' values encrypted at rest, under keys that rotate; no answer or page
shows a custom header's value; a URL with credentials is refused."""

from __future__ import annotations

import asyncio
import contextlib
import doctest
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from tests.cli_support import run_tidings
from tests.dispatcher_support import add_events, fast_settings, scripted_endpoint
from tests.platform_support import create_schema, running_platform
from tidings.platform import configurations, sealed
from tidings.platform.dispatcher import Dispatcher
from tidings.platform.sealed import Sealer, UnreadableSecret, new_key, reseal_configurations
from tidings.receiver.log import EventLog
from tidings.store.engine import create_engine, create_sync_engine, is_sqlite, sqlite_file
from tidings.store.platform_tables import attempts, organizations, webhook_configs
from tidings.web.dashboard import mount_dashboard

pytestmark = pytest.mark.timeout(120)

TOKEN = "tok-never-shown-8c1f2d"  # a custom header's value


def test_the_examples_in_the_docstrings_hold():
    from tidings.platform.transport import attempt
    from tidings.store import engine

    from tidings.platform import webhook_rules

    for module in (sealed, attempt, engine, webhook_rules):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, (module, result)


# ---------------------------------------------------------------- files 0600


@contextlib.contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def modes(directory: Path, name: str) -> dict[str, int]:
    return {path.name: stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir() if path.name.startswith(name)}


async def test_the_platform_database_and_its_wal_and_shm_are_0600(tmp_path):
    url = f"sqlite:///{tmp_path / 'platform.db'}"
    with umask(0o022):
        create_schema(url)  # the migrations open the file first
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(insert(organizations).values(name="Acme", created_at=datetime.now(UTC)))
            found = modes(tmp_path, "platform.db")
        finally:
            await engine.dispose()
    assert set(found) >= {"platform.db", "platform.db-wal", "platform.db-shm"}, found
    assert set(found.values()) == {0o600}, found


def test_the_receiver_database_and_its_wal_and_shm_are_0600(tmp_path):
    url = f"sqlite:///{tmp_path / 'receiver.db'}"
    with umask(0o022):
        log = EventLog(url)
        try:
            log.create_schema()
            with log.transaction() as conn:
                conn.exec_driver_sql("SELECT 1")
            found = modes(tmp_path, "receiver.db")
        finally:
            log.dispose()
    assert {"receiver.db", "receiver.db-wal", "receiver.db-shm"} <= set(found), found
    assert {found[name] for name in ("receiver.db", "receiver.db-wal", "receiver.db-shm")} == {0o600}, found


def test_the_secrets_key_files_are_0600(tmp_path):
    from tidings.cli.secrets_key import secrets_keys

    with umask(0o022):
        keys, source = secrets_keys(None, tmp_path / "data", create=True)
        assert source == str(tmp_path / "data" / "secrets.key") and len(keys) == 1
        made = run_tidings("keys", "secrets-key", "--out", str(tmp_path / "k" / "secrets.key"))
    assert made.returncode == 0, made.stderr
    for path in (tmp_path / "data" / "secrets.key", tmp_path / "k" / "secrets.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


# ---------------------------------------------------------------- never in clear, never shown


async def stored_bytes(url: str) -> bytes:
    """What the database holds: the raw bytes of the SQLite files; on
    PostgreSQL, every value of the configurations and attempts."""
    if is_sqlite(url):
        path = Path(sqlite_file(url))
        return b"".join(part.read_bytes() for part in path.parent.iterdir() if part.name.startswith(path.name))
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = [*(await conn.execute(select(webhook_configs))).all(), *(await conn.execute(select(attempts))).all()]
    finally:
        await engine.dispose()
    return repr([tuple(row) for row in rows]).encode()


async def test_secrets_and_custom_header_values_are_never_stored_in_clear_nor_shown(db_url):
    async with running_platform(db_url) as platform, scripted_endpoint(hook=[500, 200]) as endpoint:
        mount_dashboard(platform.app)
        tenant = await platform.tenant("Acme")
        async with platform.client() as client:
            created = await client.post("/v2/webhooks", headers=tenant.headers, json={"items": [{
                "url": endpoint.url("/hook"), "event_type": "message_created",
                "custom_headers": {"X-Shop-Token": TOKEN}}]})
            assert created.status_code == 200, created.text
            config = created.json()["items"][0]
            secret = config["secret"]  # shown once, on creation
            assert TOKEN not in created.text and config["custom_headers"] == {"X-Shop-Token": "********"}

            await add_events(platform.engine, platform.signer, tenant.org_id, 1)
            for _ in range(2):  # a failed attempt, then a delivered one
                await asyncio.wait_for(Dispatcher(platform.engine, platform.signer, fast_settings(retry_base=0.0))
                                       .run_until_idle(), 30)
            sent = endpoint.on("/hook")
            assert [request.headers["X-Shop-Token"] for request in sent] == [TOKEN, TOKEN]  # decrypted to be sent

            # The database holds neither the secret nor the header's value in clear.
            raw = await stored_bytes(db_url)
            assert secret.encode() not in raw and secret.removeprefix("whsec_").encode() not in raw
            assert TOKEN.encode() not in raw
            assert b"X-Shop-Token" in raw  # the name is kept

            # No answer of the API shows the value: configurations, deliveries and their attempts.
            [delivery] = (await client.get(f"/v2/webhooks/{config['id']}/deliveries",
                                           headers=tenant.headers)).json()["items"]
            answers = [await client.get(path, headers=tenant.headers) for path in (
                "/v2/webhooks", f"/v2/webhooks/{config['id']}", f"/v2/webhooks/{config['id']}/deliveries",
                f"/v2/deliveries/{delivery['id']}")]
            assert all(answer.status_code == 200 for answer in answers)
            assert not [answer.url for answer in answers if TOKEN in answer.text]
            recorded = answers[-1].json()["attempts"]
            assert [attempt["request_headers"]["X-Shop-Token"] for attempt in recorded] == ["********"] * 2
            updated = await client.put(f"/v2/webhooks/{config['id']}", headers=tenant.headers,
                                       json={"custom_headers": {"X-Shop-Token": TOKEN + "-2"}})
            assert updated.status_code == 200 and TOKEN not in updated.text
            # A configuration read and written back as it was shown keeps its values.
            shown = (await client.get(f"/v2/webhooks/{config['id']}", headers=tenant.headers)).json()
            again = await client.put(f"/v2/webhooks/{config['id']}", headers=tenant.headers,
                                     json={"custom_headers": {**shown["custom_headers"], "X-Other": "********"}})
            assert again.status_code == 422 and "X-Other" in again.json()["detail"]
            again = await client.put(f"/v2/webhooks/{config['id']}", headers=tenant.headers,
                                     json={"custom_headers": shown["custom_headers"]})
            assert again.status_code == 200
            [row] = await platform.rows(select(webhook_configs).where(webhook_configs.c.id == config["id"]))
            assert configurations.clear_headers(row) == {"X-Shop-Token": TOKEN + "-2"}

            # Nor does any page of the dashboard.
            signed_in = await client.post("/dashboard/sign-in", data={"api_key": tenant.api_key, "next": "/dashboard"})
            assert signed_in.status_code == 303
            pages = [await client.get(path) for path in (
                "/dashboard/configurations", "/dashboard/deliveries", f"/dashboard/deliveries/{delivery['id']}")]
            assert [page.status_code for page in pages] == [200, 200, 200]
            assert not [page.url for page in pages if TOKEN in page.text or secret in page.text]
            assert "X-Shop-Token" in pages[-1].text and "********" in pages[-1].text

        raw = await stored_bytes(db_url)
        assert (TOKEN + "-2").encode() not in raw


async def test_a_url_with_credentials_is_refused_with_a_pointer_to_custom_headers(sqlite_url):
    async with running_platform(sqlite_url) as platform:
        tenant = await platform.tenant("Acme")
        async with platform.client() as client:
            for url in ("https://user:hunter2@hooks.example.com/in", "https://token@hooks.example.com/in"):
                answer = await client.post("/v2/webhooks", headers=tenant.headers, json={"items": [
                    {"url": url, "event_type": "message_created"}]})
                assert answer.status_code == 422
                detail = answer.json()["detail"]
                assert "credentials" in detail and "custom_headers" in detail and "hunter2" not in detail


# ---------------------------------------------------------------- keys and their rotation


def test_a_sealer_encrypts_under_its_newest_key_and_decrypts_under_any():
    old, new = new_key(), new_key()
    sealed_old = Sealer([old]).seal("whsec_x")
    both = Sealer([new, old])
    assert sealed_old.startswith("fernet:") and "whsec_x" not in sealed_old
    assert both.open(sealed_old) == "whsec_x" and both.open("whsec_clear") == "whsec_clear"
    moved = both.reseal(sealed_old)
    assert Sealer([new]).open(moved) == "whsec_x"
    with pytest.raises(UnreadableSecret):
        Sealer([new]).open(sealed_old)
    assert Sealer([new]).open(Sealer([new]).reseal("clear")) == "clear"


async def test_rows_stored_in_clear_keep_working_and_are_encrypted_at_start(sqlite_url):
    """The rows of a database from before encryption: read as they are, then
    encrypted by the start of ``tidings serve`` (``reseal_configurations``)."""
    create_schema(sqlite_url)
    engine = create_engine(sqlite_url)
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            org_id = (await conn.execute(insert(organizations).values(name="Acme", created_at=now)
                                         .returning(organizations.c.id))).scalar_one()
            await conn.execute(insert(webhook_configs).values(
                org_id=org_id, url="https://a.example/h", event_type="message_created",
                custom_headers={"X-Token": TOKEN}, secret="whsec_legacy", created_at=now, updated_at=now))
            [row] = (await conn.execute(select(webhook_configs))).all()
            assert configurations.secrets_now(row, 0) == ["whsec_legacy"]
            assert configurations.clear_headers(row) == {"X-Token": TOKEN}
            assert await reseal_configurations(conn, clear_only=True) == 1
            assert await reseal_configurations(conn, clear_only=True) == 0
            [row] = (await conn.execute(select(webhook_configs))).all()
        assert row.secret.startswith("fernet:") and row.custom_headers["X-Token"].startswith("fernet:")
        assert configurations.secrets_now(row, 0) == ["whsec_legacy"]
        assert configurations.clear_headers(row) == {"X-Token": TOKEN}
    finally:
        await engine.dispose()


def stored_configs(url: str) -> list:
    engine = create_sync_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(webhook_configs).order_by(webhook_configs.c.id)).all())
    finally:
        engine.dispose()


def test_the_secrets_key_rotates_and_reencrypt_moves_every_row_to_the_newest_key(db_url, tmp_path):
    key_file = tmp_path / "secrets.key"
    assert run_tidings("keys", "secrets-key", "--out", str(key_file)).returncode == 0
    [first] = key_file.read_text().split()
    refused = run_tidings("keys", "secrets-key", "--out", str(key_file))
    assert refused.returncode == 1 and b"--rotate" in refused.stderr

    create_schema(db_url)
    now = datetime.now(UTC)
    engine = create_sync_engine(db_url)
    try:
        with engine.begin() as conn:
            org_id = conn.execute(insert(organizations).values(name="Acme", created_at=now)
                                  .returning(organizations.c.id)).scalar_one()
            conn.execute(insert(webhook_configs).values(
                org_id=org_id, url="https://a.example/h", event_type="message_created",
                custom_headers={"X-Token": TOKEN}, secret="whsec_clear", created_at=now, updated_at=now))
            conn.execute(insert(webhook_configs), [
                {"org_id": org_id, "url": "https://a.example/u", "event_type": "message_updated",
                 "custom_headers": {"X-Token": Sealer([first]).seal(TOKEN)}, "secret": Sealer([first]).seal("whsec_s"),
                 "previous_secret": Sealer([first]).seal("whsec_p"), "created_at": now, "updated_at": now}])
    finally:
        engine.dispose()

    def reencrypt() -> dict:
        result = run_tidings("db", "reencrypt", "--db", db_url, "--secrets-key-file", str(key_file))
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    assert reencrypt() == {"reencrypted": 2}
    clear, under_first = stored_configs(db_url)
    assert Sealer([first]).open(clear.secret) == "whsec_clear"
    assert Sealer([first]).open_headers(clear.custom_headers) == {"X-Token": TOKEN}

    assert run_tidings("keys", "secrets-key", "--out", str(key_file), "--rotate").returncode == 0
    newest, older = key_file.read_text().split()
    assert older == first and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert reencrypt() == {"reencrypted": 2}
    only_newest = Sealer([newest])
    for row, (secret, previous) in zip(stored_configs(db_url), [("whsec_clear", None), ("whsec_s", "whsec_p")]):
        assert only_newest.open(row.secret) == secret and only_newest.open_headers(row.custom_headers) == {"X-Token": TOKEN}
        assert (row.previous_secret and only_newest.open(row.previous_secret)) == previous
        with pytest.raises(UnreadableSecret):
            Sealer([first]).open(row.secret)

    key_file.write_text(newest + "\n")  # the older key can go now
    assert reencrypt() == {"reencrypted": 2}
    key_file.write_text(new_key() + "\n")  # a wrong key: one clear line, nothing changed
    wrong = run_tidings("db", "reencrypt", "--db", db_url, "--secrets-key-file", str(key_file))
    assert wrong.returncode == 1 and wrong.stderr.decode().startswith("error: ") and TOKEN not in wrong.stderr.decode()
