"""API keys listed, created (shown once) and revoked: through ``/v2/api-keys``
and ``tidings key``; a revoked key is refused within a second, by the process
that revoked it and by another one serving the same database."""

from __future__ import annotations

import asyncio
import contextlib
import doctest
import json
import subprocess
import time

import httpx
from sqlalchemy import select

from tests.cli_support import run_tidings
from tests.loopback import accepting, base_url, command_on_socket, loopback_socket
from tests.platform_support import create_schema, running_platform
from tidings.platform import api_keys, tenants
from tidings.platform.api.auth import hash_api_key
from tidings.platform.api.auth import REVOCATION_CHECK_INTERVAL
from tidings.store.platform_tables import api_keys as keys_table

REVOCATION_DEADLINE = 1.0  # seconds from a revocation to the key's refusal, on every process


def test_the_examples_in_the_api_keys_docstrings_hold():
    result = doctest.testmod(api_keys)
    assert result.attempted > 0 and result.failed == 0, result


def test_every_process_looks_for_revocations_well_under_a_second_apart():
    assert REVOCATION_CHECK_INTERVAL <= 0.5


async def refused_within(client: httpx.AsyncClient, path: str, key: str, deadline: float) -> float:
    """Seconds until ``key`` gets 401 on ``path``; fails past ``deadline``."""
    started = time.monotonic()
    while True:
        answer = await client.get(path, headers={"x-APIKey": key})
        elapsed = time.monotonic() - started
        if answer.status_code == 401:
            return elapsed
        assert answer.status_code == 200, answer.text
        assert elapsed < deadline, f"the revoked key still works after {elapsed:.2f} s"
        await asyncio.sleep(0.02)


async def test_an_org_key_lists_creates_and_revokes_its_organizations_keys(db_url):
    async with running_platform(db_url) as platform:
        acme = await platform.tenant("Acme")
        globex = await platform.tenant("Globex")
        async with platform.client() as client:
            created = await client.post("/v2/api-keys", json={"name": "ci bot"}, headers=acme.headers)
            assert created.status_code == 201, created.text
            new = created.json()
            assert new["api_key"].startswith("tdk_") and new["prefix"] == new["api_key"][:12]
            assert (new["name"], new["kind"], new["last_used_at"]) == ("ci bot", "org", None)
            new_headers = {"x-APIKey": new["api_key"]}
            assert (await client.get("/v2/api-keys", headers=new_headers)).status_code == 200

            listing = await client.get("/v2/api-keys", headers=acme.headers)
            assert listing.status_code == 200
            items = listing.json()["items"]
            assert [item["name"] for item in items] == ["admin", "ci bot"]
            assert new["api_key"] not in listing.text and acme.api_key not in listing.text  # never the key
            assert all(item["last_used_at"] for item in items)  # both were used just now
            # Another organization's keys are neither listed nor revocable.
            assert [item["name"] for item in (await client.get("/v2/api-keys", headers=globex.headers)).json()["items"]] \
                == ["admin"]
            assert (await client.delete(f"/v2/api-keys/{new['id']}", headers=globex.headers)).status_code == 404
            assert (await client.get("/v2/api-keys", headers=new_headers)).status_code == 200

            assert (await client.delete(f"/v2/api-keys/{new['id']}", headers=acme.headers)).status_code == 204
            assert await refused_within(client, "/v2/api-keys", new["api_key"], REVOCATION_DEADLINE) < 0.1
            assert (await client.delete(f"/v2/api-keys/{new['id']}", headers=acme.headers)).status_code == 404
            assert [item["name"] for item in (await client.get("/v2/api-keys", headers=acme.headers)).json()["items"]] \
                == ["admin"]
            assert (await client.post("/v2/api-keys", json={"name": ""}, headers=acme.headers)).status_code == 422


async def test_a_provider_key_manages_the_keys_of_the_organization_it_names(db_url):
    async with running_platform(db_url) as platform:
        acme = await platform.tenant("Acme")
        globex = await platform.tenant("Globex")
        async with platform.engine.begin() as conn:
            provider = await tenants.create_provider_key(conn, "Agency", [acme.org_id])
        headers = {"x-APIKey": provider}
        async with platform.client() as client:
            made = await client.post(f"/v2/api-keys?org_id={acme.org_id}", json={"name": "agent"}, headers=headers)
            assert made.status_code == 201 and made.json()["kind"] == "org"
            listing = (await client.get("/v2/api-keys", headers=acme.headers)).json()["items"]
            assert [item["name"] for item in listing] == ["admin", "agent"]
            assert (await client.get(f"/v2/api-keys?org_id={globex.org_id}", headers=headers)).status_code == 403
            revoked = await client.delete(f"/v2/api-keys/{made.json()['id']}?org_id={acme.org_id}", headers=headers)
            assert revoked.status_code == 204
            assert (await client.get("/v2/api-keys", headers={"x-APIKey": made.json()["api_key"]})).status_code == 401


async def test_the_last_use_is_written_at_most_once_a_minute(db_url):
    async with running_platform(db_url) as platform:
        acme = await platform.tenant("Acme")
        async with platform.client() as client:
            await client.get("/v2/api-keys", headers=acme.headers)
            [first] = await platform.rows(select(keys_table.c.last_used_at)
                                          .where(keys_table.c.key_hash == hash_api_key(acme.api_key)))
            platform.context.known_keys.forget_all()  # the key is read again
            await client.get("/v2/api-keys", headers=acme.headers)
            [second] = await platform.rows(select(keys_table.c.last_used_at)
                                           .where(keys_table.c.key_hash == hash_api_key(acme.api_key)))
    assert first.last_used_at is not None and second.last_used_at == first.last_used_at


def run_json(*args: str) -> dict:
    result = run_tidings(*args)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def test_the_key_commands_list_create_and_revoke(db_url):
    create_schema(db_url)
    acme = run_json("org", "create", "Acme", "--db", db_url)
    globex = run_json("org", "create", "Globex", "--db", db_url)
    made = run_json("key", "create", "deploy", "--org", str(acme["org_id"]), "--db", db_url)
    assert made["api_key"].startswith("tdk_") and made["prefix"] == made["api_key"][:12]
    assert (made["name"], made["org_id"], made["kind"]) == ("deploy", acme["org_id"], "org")

    listed = run_tidings("key", "list", "--org", str(acme["org_id"]), "--db", db_url)
    assert made["api_key"].encode() not in listed.stdout and acme["api_key"].encode() not in listed.stdout
    assert [item["name"] for item in json.loads(listed.stdout)["items"]] == ["admin", "deploy"]
    assert [item["org_id"] for item in run_json("key", "list", "--db", db_url)["items"]] \
        == [acme["org_id"], globex["org_id"], acme["org_id"]]

    assert run_json("key", "revoke", str(made["id"]), "--db", db_url) == {"revoked": made["id"]}
    assert [item["name"] for item in run_json("key", "list", "--org", str(acme["org_id"]), "--db", db_url)["items"]] \
        == ["admin"]
    again = run_tidings("key", "revoke", str(made["id"]), "--db", db_url)
    assert again.returncode == 1 and again.stderr.decode().strip() == f"error: no live API key with id {made['id']}"
    unknown_org = run_tidings("key", "create", "x", "--org", "999", "--db", db_url)
    assert unknown_org.returncode == 1 and b"no organization with id 999" in unknown_org.stderr


@contextlib.contextmanager
def serving(db_url: str, data_dir: str):
    """``tidings serve`` in a child process on a socket of its own; yields its base URL."""
    sock = loopback_socket()
    command, options = command_on_socket(sock, ["serve", "--db", db_url, "--data-dir", data_dir, "--no-dispatcher"])
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **options)
    url = base_url(sock)
    try:
        started = time.monotonic()
        while not accepting(url + "/health"):
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() - started < 60, "tidings serve did not start"
            time.sleep(0.1)
        yield url
    finally:
        child.terminate()
        child.wait(timeout=30)
        sock.close()


def ingest(client: httpx.Client, channel: dict, business: dict, key: str, number: int) -> int:
    """Posts one message on the ingestion fast path; its status."""
    body = {"business_id": business["business_id"], "external_conversation_id": "c1",
            "external_message_id": f"m{number}", "content": "hello", "sender_type": "Consumer"}
    return client.post(f"/v2/custom-channels/{channel['channel_id']}/messages", json=body,
                       headers={"x-APIKey": key}).status_code


def test_a_key_revoked_on_one_server_is_refused_by_another_within_a_second(db_url, tmp_path):
    """Two ``tidings serve`` processes on one database: the key is revoked
    through the first, and the second, which has just used it on the
    ingestion fast path, refuses it within a second."""
    create_schema(db_url)
    acme = run_json("org", "create", "Acme", "--db", db_url)
    business = run_json("business", "create", "--org", str(acme["org_id"]), "--name", "Shop", "--db", db_url)
    channel = run_json("channel", "create", "--org", str(acme["org_id"]), "--name", "Chat", "--db", db_url)
    doomed = run_json("key", "create", "doomed", "--org", str(acme["org_id"]), "--db", db_url)
    with serving(db_url, str(tmp_path / "one")) as first, serving(db_url, str(tmp_path / "two")) as second, \
            httpx.Client(base_url=first, timeout=10) as one, httpx.Client(base_url=second, timeout=10) as two:
        for number in range(5):  # the key is now in the second server's cache
            assert ingest(two, channel, business, doomed["api_key"], number) == 200
        assert one.delete(f"/v2/api-keys/{doomed['id']}", headers={"x-APIKey": acme["api_key"]}).status_code == 204
        revoked_at = time.monotonic()
        number = 5
        while (status := ingest(two, channel, business, doomed["api_key"], number)) != 401:
            assert status == 200
            assert time.monotonic() - revoked_at < REVOCATION_DEADLINE, "the second server still takes the key"
            number += 1
            time.sleep(0.02)
        assert two.get("/v2/api-keys", headers={"x-APIKey": doomed["api_key"]}).status_code == 401
        assert two.get("/v2/api-keys", headers={"x-APIKey": acme["api_key"]}).status_code == 200


