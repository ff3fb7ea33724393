"""The receiver's request path, end to end over HTTP on loopback, on both engines:
verify -> classify -> durable append -> answer."""

from __future__ import annotations

import sqlite3
import time

import orjson
import pytest
from sqlalchemy import func, select

from tests.loopback import UvicornThread
from tests.test_receiver_helpers import Keys, ServedReceiver, ServerThread, post, wait_until
from tidings.contract import EventError, dump_event, parse_event
from tidings.contract.samples import SampleFactory
from tidings.receiver import EventLog, Receiver, ReceiverApp
from tidings.receiver.core import classify
from tidings.apps.receiver_service import ReceiverConfig, ReceiverService
from tidings.store.receiver_tables import receiver_events, receiver_quarantine


def count(log: EventLog, table) -> int:
    with log.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


@pytest.fixture
def keys() -> Keys:
    return Keys()


def config(db_url: str, keys: Keys, **options) -> ReceiverConfig:
    return ReceiverConfig(db_url=db_url, public_keys=[keys.public_pem], any_org=True, poll_interval=0.05, **options)


def service(db_url: str, keys: Keys, **options) -> ReceiverService:
    return ReceiverService(config(db_url, keys, **options))


# ---------------------------------------------------------------- acceptance: stored once, forgeries refused


def test_seed_example_is_stored_once_and_forgeries_are_refused(db_url, keys, seed_example_bytes):
    svc = service(db_url, keys)
    with UvicornThread(svc.app) as server:
        url = server.url + "/webhook"
        headers = keys.headers(seed_example_bytes, msg_id="msg_seed_1")

        first = post(url, seed_example_bytes, headers)
        assert first.status_code == 200, first.text
        assert first.json() == {"status": "stored"}
        assert count(svc.log, receiver_events) == 1

        again = post(url, seed_example_bytes, headers)  # the sender's retry: same id, same bytes
        assert again.status_code == 200
        assert count(svc.log, receiver_events) == 1

        tampered = bytearray(seed_example_bytes)
        tampered[seed_example_bytes.index(b'"id": 123') + 7] = ord("4")  # 123 -> 124, one byte
        forged = post(url, bytes(tampered), headers)
        assert forged.status_code == 401
        assert "signature" in forged.json()["error"].lower()

        unsigned = post(url, seed_example_bytes, {"content-type": "application/json"})
        assert unsigned.status_code == 401

        assert count(svc.log, receiver_events) == 1
        assert count(svc.log, receiver_quarantine) == 0
        stored = svc.log.events_after(0, 10)
        assert stored[0].body == seed_example_bytes  # the raw bytes, as received
        assert stored[0].dedupe_key == "id:msg_seed_1"
        assert stored[0].scheme == "v1a"


def test_vendor_signature_alone_dedupes_by_body(db_url, keys, seed_example_bytes):
    """The seed's own platform sends no webhook-id: the same body is the same delivery."""
    svc = service(db_url, keys)
    with UvicornThread(svc.app) as server:
        url = server.url + "/webhook"
        for _ in range(3):
            answer = post(url, seed_example_bytes, keys.vendor_headers(seed_example_bytes))
            assert answer.status_code == 200
        # A webhook-id next to a signature that does not cover it is not trusted as a key.
        spoofed = {**keys.vendor_headers(seed_example_bytes), "webhook-id": "msg_chosen_by_someone"}
        assert post(url, seed_example_bytes, spoofed).status_code == 200
        events = svc.log.events_after(0, 10)
        assert len(events) == 1
        assert events[0].dedupe_key.startswith("sha256:")
        assert events[0].scheme == "vendor"


def test_rotation_stale_timestamps_and_url_secret(sqlite_url, seed_example_bytes):
    old, new = Keys(), Keys()
    config = ReceiverConfig(db_url=sqlite_url, public_keys=[old.public_pem, new.public_pem], any_org=True, url_secret="s3cret")
    svc = ReceiverService(config)
    with UvicornThread(svc.app) as server:
        body = seed_example_bytes
        assert post(server.url + "/webhook?secret=s3cret", body, old.headers(body)).status_code == 200
        assert post(server.url + "/webhook/s3cret", body, new.headers(body)).status_code == 200
        assert post(server.url + "/webhook", body, new.headers(body)).status_code == 401  # no secret
        assert post(server.url + "/webhook?secret=wrong", body, new.headers(body)).status_code == 401
        stale = new.headers(body, timestamp=int(time.time()) - 3600)
        refused = post(server.url + "/webhook/s3cret", body, stale)
        assert refused.status_code == 401  # a replay, even though its vendor header is valid
        assert "tolerance" in refused.json()["error"]
        assert count(svc.log, receiver_events) == 2


# ---------------------------------------------------------------- acceptance: unknowns kept, non-events quarantined


def test_unknown_enum_values_and_fields_are_stored_and_projected_intact(db_url, keys):
    event = SampleFactory(3).message_created(
        message={"content_type": "Hologram", "sender_type": "Robot", "status": "Queued"},
        conversation={"messaging_partner": "Carrier Pigeon", "status": "Snoozed"},
    )
    document = orjson.loads(dump_event(event))
    document["payload"]["message"]["reactions"] = [{"emoji": "👍", "count": 2}]
    document["payload"]["conversation"]["priority"] = "high"
    document["payload"]["trace"] = {"region": "eu-west"}
    body = orjson.dumps(document)
    message_id = document["payload"]["message"]["id"]
    conversation_id = document["payload"]["conversation"]["id"]

    with ServedReceiver(config(db_url, keys)) as served, served.admin_client() as http:
        assert post(served.url + "/webhook", body, keys.headers(body)).status_code == 200
        events = http.get("/events", params={"after": 0}).json()["events"]
        assert [e["event"] for e in events] == [document]  # byte-for-byte values, unknown ones included

        def projected():
            answer = http.get(f"/inbox/conversations/{conversation_id}/messages")
            return answer.json()["messages"] if answer.status_code == 200 else None

        (message,) = wait_until(projected)
        assert message["id"] == message_id
        assert (message["content_type"], message["sender_type"], message["status"]) == ("Hologram", "Robot", "Queued")
        assert message["reactions"] == [{"emoji": "👍", "count": 2}]
        assert sorted(message["unknown_values"]) == ["content_type", "sender_type", "status"]

        (conversation,) = http.get("/inbox/conversations").json()["conversations"]
        assert conversation["messaging_partner"] == "Carrier Pigeon"
        assert conversation["status"] == "Snoozed"
        assert conversation["priority"] == "high"
        assert sorted(conversation["unknown_values"]) == ["messaging_partner", "status"]
        assert conversation["last_message"]["id"] == message_id


def test_authentic_non_event_is_quarantined_and_acknowledged(db_url, keys):
    svc = service(db_url, keys)
    with UvicornThread(svc.app) as server:
        for body in (b'{"hello": "world"}', b"not json at all", b'{"type": "message_created", "payload": {}}'):
            headers = keys.headers(body)
            for _attempt in range(2):  # the retry of a quarantined delivery is kept once too
                answer = post(server.url + "/webhook", body, headers)
                assert answer.status_code == 200
                assert answer.json() == {"status": "quarantined"}
    assert count(svc.log, receiver_events) == 0
    quarantined = svc.log.quarantined()
    assert len(quarantined) == 3
    assert {q.body for q in quarantined} == {b'{"hello": "world"}', b"not json at all", b'{"type": "message_created", "payload": {}}'}
    assert any("payload.message" in q.error for q in quarantined)  # the error names the field


def test_strict_mode_answers_400_and_stores_nothing(db_url, keys):
    svc = service(db_url, keys, strict=True)
    with UvicornThread(svc.app) as server:
        body = b'{"type": "message_created", "payload": {"org_id": "not a number"}}'
        answer = post(server.url + "/webhook", body, keys.headers(body))
        assert answer.status_code == 400
        assert "payload" in answer.json()["error"]
        forged = post(server.url + "/webhook", body, {"x-tidings-signature-v1": "AAAA"})
        assert forged.status_code == 401  # the signature is checked before the body is judged
    assert count(svc.log, receiver_events) == 0
    assert count(svc.log, receiver_quarantine) == 0


def older_parser(raw: bytes):
    """A receiver from before ``message_updated`` existed: that type did not parse."""
    event = parse_event(raw)
    if event.type == "message_updated":
        raise EventError("type", "unknown event type 'message_updated'")
    return event


def test_quarantined_body_moves_into_the_log_once_the_cause_is_fixed(db_url, keys):
    factory = SampleFactory(11)
    created, updated = dump_event(factory.message_created()), dump_event(factory.message_updated())
    log = EventLog(db_url)
    receiver = Receiver(log, keys.verifier(), any_org=True, parse=older_parser)
    with ServerThread(ReceiverApp(receiver)) as server:
        for body in (created, updated):
            assert post(server.url + "/webhook", body, keys.headers(body, msg_id=f"m{len(body)}")).status_code == 200
    assert [e.body for e in log.events_after()] == [created]
    (quarantined,) = log.quarantined()
    assert quarantined.body == updated and "message_updated" in quarantined.error

    still = log.reprocess_quarantine(lambda q: classify(older_parser, q))  # nothing fixed yet
    assert still.moved == [] and list(still.still_failing) == [quarantined.id]

    fixed = log.reprocess_quarantine(lambda q: classify(parse_event, q))  # the upgraded parser
    assert fixed.moved == [quarantined.id]
    assert log.quarantined() == []
    events = log.events_after()
    assert [e.body for e in events] == [created, updated]
    assert events[1].event_type == "message_updated"
    assert events[1].dedupe_key == quarantined.dedupe_key


# ---------------------------------------------------------------- backpressure: 503, never a 200 for what is not stored


def test_requests_get_503_when_the_store_cannot_keep_up(sqlite_url, keys, seed_example_bytes):
    log = EventLog(sqlite_url)
    receiver = Receiver(log, keys.verifier(), any_org=True, max_wait=0.3)
    path = sqlite_url.removeprefix("sqlite:///")
    with UvicornThread(ReceiverApp(receiver)) as server:
        url = server.url + "/webhook"
        assert post(url, seed_example_bytes, keys.headers(seed_example_bytes)).status_code == 200
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the database
        try:
            bodies = [dump_event(e) for e in SampleFactory(5).events(3)]
            headers = [keys.headers(b) for b in bodies]
            started = time.monotonic()
            answers = [post(url, b, h) for b, h in zip(bodies, headers)]
            assert [a.status_code for a in answers] == [503, 503, 503]
            assert all(a.headers["retry-after"] == "1" for a in answers)
            assert time.monotonic() - started < 3 * 0.3 + 2  # waited within the bound
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        # The sender retries: now each is stored, once, and only then acknowledged.
        retried = [post(url, b, h) for b, h in zip(bodies, headers)]
        assert [a.status_code for a in retried] == [200, 200, 200]
        keys_stored = log.stored_keys(f"id:{h['webhook-id']}" for h in headers)
        assert len(keys_stored) == 3
    assert len(log.events_after(0, 100)) == 4


def test_handle_sync_and_async_share_one_writer(sqlite_url, keys):
    """The decision and the group commit, without HTTP: many requests, few commits."""
    import concurrent.futures

    log = EventLog(sqlite_url)
    bodies = [dump_event(e) for e in SampleFactory(9).events(200)]
    with Receiver(log, keys.verifier(), any_org=True) as receiver:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda b: receiver.handle_sync(b, keys.headers(b)), bodies))
        assert {a.status for a in answers} == {200}
        assert receiver.committer.records == 200
        assert receiver.committer.batches < 200  # commits were shared
    assert len(log.events_after(0, 1000)) == 200


def test_the_write_ahead_log_is_checkpointed_beside_the_commits(sqlite_url, keys, monkeypatch):
    """Commits never checkpoint (it would hold up their requests); the writer's own thread does."""
    import os

    from tidings.receiver import group_commit

    monkeypatch.setattr(group_commit, "CHECKPOINT_INTERVAL", 0.05)
    path = sqlite_url.removeprefix("sqlite:///")
    log = EventLog(sqlite_url)
    bodies = [dump_event(e) for e in SampleFactory(12).events(300)]
    with Receiver(log, keys.verifier(), any_org=True) as receiver:
        for body in bodies:
            assert receiver.handle_sync(body, keys.vendor_headers(body)).status == 200
        # Quiet now: the rest of the log is copied into the database file.
        wait_until(lambda: os.path.getsize(path) > sum(len(b) for b in bodies))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000  # a fresh connection's default
    with log.engine.connect() as conn:
        engine_setting = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
    assert engine_setting == 0  # the log's own connections leave checkpoints to that thread
