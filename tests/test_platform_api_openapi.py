"""The app's OpenAPI document, and schemathesis against it: no 5xx for any
input, on both engines."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from sqlalchemy.pool import NullPool

from tests.platform_support import create_schema, platform_settings, serve_in_thread
from tidings.contract import MessageCreated, MessageUpdated
from tidings.contract.signing import Signer, generate_private_key
from tidings.platform import tenants
from tidings.platform.api.app import create_app
from tidings.platform.api.context import PlatformContext
from tidings.platform.conversations import receive_partner_message
from tidings.platform.ingestion import IncomingMessage, ingest_custom_message
from tidings.store.engine import create_engine

# The test delivery sends a real request to the URL it is given: never to generated hosts.
SENDS_REQUESTS = "/v2/webhooks/test"


def test_the_document_is_openapi_3_1_with_both_events_as_webhooks(sqlite_url):
    app = create_app(PlatformContext(platform_settings(sqlite_url), engine=None, signer=None))
    document = app.openapi()
    assert document["openapi"].startswith("3.1.")
    assert set(document["webhooks"]) == {"message_created", "message_updated"}
    schemas = document["components"]["schemas"]
    for event_type, model in (("message_created", MessageCreated), ("message_updated", MessageUpdated)):
        body = document["webhooks"][event_type]["post"]["requestBody"]["content"]["application/json"]["schema"]
        name = body["$ref"].rsplit("/", 1)[1]
        generated = model.model_json_schema(ref_template="#/components/schemas/{model}")
        assert set(schemas[name]["properties"]) == set(generated["properties"]) == {"type", "payload"}
        assert schemas[name]["properties"]["type"]["const"] == event_type
    payload = schemas["EventPayload"]
    assert set(payload["required"]) == {"message", "conversation", "org_id"}
    assert set(schemas["Message"]["required"]) >= {"id", "conversation_id", "date", "content_type", "status"}
    assert "Open enum" in schemas["Message"]["properties"]["status"]["description"]
    paths = document["paths"]
    for path in ("/v2/webhooks", "/v2/webhooks/{webhook_id}", "/v2/webhooks/events", "/v2/webhooks/{webhook_id}/secret",
                 "/v2/webhooks/{webhook_id}/secret/rotate", "/v2/custom-channels/{channel_id}/messages",
                 "/v2/conversations", "/v2/conversations/{conversation_id}", "/v2/messages",
                 "/v2/messages/{message_id}/retry"):
        assert path in paths
    assert document["components"]["securitySchemes"]["APIKeyHeader"] == {
        "type": "apiKey", "in": "header", "name": "x-APIKey", "description": "An organization or PROVIDER API key"}


@dataclass(frozen=True)
class Seeded:
    """An organization with rows behind every route (ids 1, 2, ... exist)."""

    key: str
    business_id: str
    channel_id: str


async def _seed(url: str, signer: Signer) -> Seeded:
    engine = create_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            org_id, key = await tenants.create_organization(conn, "Fuzzed")
            business_id = await tenants.create_business(conn, org_id, "Shop")
            channel_id = await tenants.create_custom_channel(conn, org_id, "Chat")
            for i in range(3):
                await ingest_custom_message(conn, signer, org_id=org_id, channel_id=channel_id, incoming=IncomingMessage(
                    business_id=business_id, external_conversation_id=f"c{i}", external_message_id=f"m{i}",
                    content="hi"))
            await receive_partner_message(conn, signer, org_id=org_id, business_id=business_id, partner="Google",
                                          content="hello")
    finally:
        await engine.dispose()
    return Seeded(key, business_id, channel_id)


def steer(case, seeded: Seeded) -> None:
    """Points a valid case at rows that exist, so it goes past the lookups
    into the code that writes (random ids would mostly meet a 404)."""
    for name, value in (case.path_parameters or {}).items():
        if name == "channel_id":
            case.path_parameters[name] = seeded.channel_id
        elif isinstance(value, int):
            case.path_parameters[name] = 1 + value % 5
    if isinstance(case.query, dict) and isinstance(case.query.get("conversation_id"), int):
        case.query["conversation_id"] = 1 + case.query["conversation_id"] % 5
    if isinstance(case.body, dict):
        if "business_id" in case.body:
            case.body["business_id"] = seeded.business_id
        if isinstance(case.body.get("conversation_id"), int):
            case.body["conversation_id"] = 1 + case.body["conversation_id"] % 5
        if isinstance(case.body.get("url"), str):
            case.body["url"] = "https://hooks.example.com/" + case.body["url"][:100]
        for item in case.body.get("items", []) if isinstance(case.body.get("items"), list) else []:
            if isinstance(item, dict) and isinstance(item.get("url"), str):
                item["url"] = "https://hooks.example.com/" + item["url"][:100]


@pytest.fixture
def fuzzed(db_url):
    """The app behind a real uvicorn server (in a thread, with its own event
    loop and connection pool), and the seeded rows."""
    create_schema(db_url)
    signer = Signer(generate_private_key())
    seeded = asyncio.run(_seed(db_url, signer))
    engine = create_engine(db_url)
    app = create_app(PlatformContext(platform_settings(db_url), engine=engine, signer=signer), partner_seed=1)
    with serve_in_thread(app) as base_url:
        yield app, base_url, seeded


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_makes_the_api_fail(fuzzed, mode):
    """Every operation (but the one that sends requests), valid then invalid inputs."""
    app, base_url, seeded = fuzzed
    schema = schemathesis.openapi.from_dict(app.openapi()).exclude(path=SENDS_REQUESTS)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:

        @settings(max_examples=40, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case):
            if case.query:
                case.query.pop("org_id", None)  # the key's own organization; naming another is a plain 403
            if mode == GenerationMode.POSITIVE:
                steer(case, seeded)
            headers = {**(case.headers or {}), "x-APIKey": seeded.key}
            case.call_and_validate(base_url=base_url, headers=headers, checks=[not_a_server_error, response_schema_conformance])

        call()
