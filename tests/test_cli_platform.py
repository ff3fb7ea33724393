"""``tidings org|provider|business|channel create`` and ``tidings db upgrade``
through the real command, on both engines; the keys they print open the API."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import select

from tests.cli_support import run_tidings
from tests.platform_support import create_schema, running_platform
from tidings.platform.api.auth import hash_api_key
from tidings.store.migrate import head_revision
from tidings.store.platform_tables import api_keys, businesses, custom_channels, organizations, provider_organizations


def run_json(*args: str) -> dict:
    result = run_tidings(*args)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1, lines
    return json.loads(lines[0])


def one_line_error(*args: str) -> str:
    result = run_tidings(*args)
    assert result.returncode != 0
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


async def test_set_up_commands_create_tenants_whose_keys_open_the_api(db_url):
    create_schema(db_url)
    first = run_json("org", "create", "Acme", "--db", db_url)
    second = run_json("org", "create", "Globex", "--db", db_url)
    assert second["org_id"] == first["org_id"] + 1
    assert first["api_key"] != second["api_key"] and first["api_key"].startswith("tdk_")
    provider = run_json("provider", "create", "Agency", "--orgs", f"{first['org_id']},{second['org_id']}", "--db", db_url)
    business = run_json("business", "create", "--org", str(first["org_id"]), "--name", "Acme Lyon", "--city", "Lyon",
                        "--zipcode", "69001", "--country", "FR", "--address", "1 place Bellecour, 69001 Lyon",
                        "--db", db_url)
    channel = run_json("channel", "create", "--org", str(first["org_id"]), "--name", "Shop chat",
                       "--icon", "https://cdn.example.com/chat.png", "--db", db_url)
    feed = run_json("channel", "create", "--org", str(first["org_id"]), "--name", "Reviews", "--readonly", "--db", db_url)
    assert re.fullmatch(r"[0-9a-f]{24}", business["business_id"])
    assert re.fullmatch(r"[0-9a-f]{24}", channel["channel_id"]) and channel["channel_id"] != feed["channel_id"]

    async with running_platform(db_url) as platform:
        [org] = await platform.rows(select(organizations).where(organizations.c.id == first["org_id"]))
        assert org.name == "Acme"
        [key] = await platform.rows(select(api_keys).where(api_keys.c.key_hash == hash_api_key(first["api_key"])))
        assert (key.kind, key.org_id) == ("org", first["org_id"])
        assert await platform.count(api_keys, api_keys.c.key_hash == first["api_key"]) == 0  # only the hash is kept
        managed = await platform.rows(select(provider_organizations.c.org_id).order_by(provider_organizations.c.org_id))
        assert [row.org_id for row in managed] == [first["org_id"], second["org_id"]]
        [shop] = await platform.rows(select(businesses))
        assert (shop.id, shop.org_id, shop.name, shop.city, shop.zipcode, shop.country, shop.formatted_address) == (
            business["business_id"], first["org_id"], "Acme Lyon", "Lyon", "69001", "FR", "1 place Bellecour, 69001 Lyon")
        channels = {row.id: row for row in await platform.rows(select(custom_channels))}
        assert (channels[channel["channel_id"]].is_readonly, channels[channel["channel_id"]].icon) == (
            False, "https://cdn.example.com/chat.png")
        assert channels[feed["channel_id"]].is_readonly is True

        async with platform.client() as client:
            own = await client.post(f"/v2/custom-channels/{channel['channel_id']}/messages",
                                    headers={"x-APIKey": first["api_key"]}, json={
                                        "business_id": business["business_id"], "external_conversation_id": "c",
                                        "external_message_id": "m", "content": "hi", "sender_type": "Consumer"})
            as_provider = await client.get("/v2/conversations", headers={"x-APIKey": provider["api_key"]},
                                           params={"org_id": first["org_id"]})
            other = await client.get("/v2/conversations", headers={"x-APIKey": second["api_key"]})
        assert own.status_code == 200, own.text
        assert as_provider.status_code == 200 and as_provider.json()["count"] == 1
        assert other.status_code == 200 and other.json()["count"] == 0


def test_refusals_are_one_line_errors(sqlite_url):
    assert "tidings db upgrade" in one_line_error("org", "create", "Acme", "--db", sqlite_url)
    create_schema(sqlite_url)
    org_id = run_json("org", "create", "Acme", "--db", sqlite_url)["org_id"]
    assert one_line_error("provider", "create", "Agency", "--orgs", f"{org_id},99", "--db", sqlite_url) == (
        "error: no organization with id 99")
    assert "--orgs takes organization ids" in one_line_error("provider", "create", "A", "--orgs", "one", "--db", sqlite_url)
    assert one_line_error("business", "create", "--org", "42", "--name", "X", "--db", sqlite_url) == (
        "error: no organization with id 42")
    assert one_line_error("channel", "create", "--org", str(org_id), "--name", " ", "--db", sqlite_url) == (
        "error: a channel needs a name")
    assert "unsupported database URL" in one_line_error("org", "create", "Acme", "--db", "mysql://localhost/x")


def test_db_upgrade_brings_the_database_to_the_newest_revision(db_url):
    head = head_revision()
    assert run_json("db", "upgrade", "--db", db_url) == {"revision": head}
    assert run_json("db", "upgrade", "--db", db_url) == {"revision": head}  # idempotent
    if head == "base":
        pytest.skip("no migration revision exists yet: the tables come from metadata.create_all")
    assert "org_id" in run_json("org", "create", "Acme", "--db", db_url)
