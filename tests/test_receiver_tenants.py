"""Tenants pinned and replays recognised (issue 14, item 3), over real sockets on both
HTTP paths (uvicorn's ASGI one and the fast path), on both engines:
an authentic event of an organization the receiver does not serve is refused
with 403 and stored nowhere; a delivery replayed without its ``webhook-*``
headers is stored once and its handlers run once."""

from __future__ import annotations

import threading

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from tests.test_receiver_helpers import Keys, ServedReceiver, ServerThread, post, wait_until
from tidings.contract import dump_event
from tidings.contract.samples import SampleFactory
from tidings.receiver import Handlers, Receiver, ReceivedEvent
from tidings.receiver.dedupe import body_digest, dedupe_key, is_same_delivery, replays
from tidings.receiver.fast_http import WebhookHttpProtocol
from tidings.receiver.log import EventLog
from tidings.apps.receiver_service import ReceiverConfig, ReceiverService
from tidings.receiver.tenancy import org_id_of_body, served_orgs, serves
from tidings.store.receiver_tables import receiver_events, receiver_quarantine

PROTOCOLS = {"asgi": "httptools", "fast": WebhookHttpProtocol}


def body_of(org_id: int, seed: int = 1) -> bytes:
    """A message_created event of organization ``org_id``."""
    document = orjson.loads(dump_event(SampleFactory(seed).message_created()))
    document["payload"]["org_id"] = org_id
    return orjson.dumps(document)


def rows(log: EventLog, table) -> int:
    with log.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def pinned_service(db_url: str, keys: Keys, handlers: Handlers | None = None, **options) -> ReceiverService:
    config = ReceiverConfig(db_url=db_url, public_keys=[keys.public_pem], poll_interval=0.02, backoff_base=0.0,
                            **({"org_ids": [1]} | options))
    return ReceiverService(config, handlers)


# ---------------------------------------------------------------- tenants pinned


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_with_org_id_1_an_authentic_event_of_org_2_is_403_and_stored_nowhere(db_url, protocol):
    keys = Keys()
    service = pinned_service(db_url, keys)
    theirs, ours = body_of(2, seed=1), body_of(1, seed=2)
    theirs_unparsed = b'{"type": "message_created", "payload": {"org_id": 2, "message": "new shape"}}'
    ours_unparsed = b'{"type": "message_created", "payload": {"org_id": 1, "message": "new shape"}}'
    no_org = b'{"type": "message_created", "payload": {"message": "new shape"}}'
    unknown_type_theirs = b'{"type": "conversation_closed", "payload": {"org_id": 2}}'
    with ServerThread(service.app, http=PROTOCOLS[protocol]) as server:
        url = server.url + "/webhook"
        for body in (theirs, theirs_unparsed, no_org, unknown_type_theirs):
            for headers in (keys.headers(body), keys.vendor_headers(body)):
                answer = post(url, body, headers)
                assert answer.status_code == 403, (body, answer.text)
                assert "organization" in answer.json()["error"]
        assert post(url, theirs, {"content-type": "application/json"}).status_code == 401  # unsigned: 401 first
        assert rows(service.log, receiver_events) == 0
        assert rows(service.log, receiver_quarantine) == 0
        assert post(url, ours, keys.headers(ours)).json() == {"status": "stored"}
        assert post(url, ours_unparsed, keys.headers(ours_unparsed)).json() == {"status": "quarantined"}
    assert [orjson.loads(e.body)["payload"]["org_id"] for e in service.log.events_after()] == [1]
    assert [q.body for q in service.log.quarantined()] == [ours_unparsed]


def test_any_org_takes_every_organization_and_quarantines_what_names_none(sqlite_url):
    keys = Keys()
    service = pinned_service(sqlite_url, keys, org_ids=[], any_org=True)
    no_org = b'{"type": "message_created", "payload": {"message": "new shape"}}'
    with ServerThread(service.app) as server:
        for body in (body_of(1, 3), body_of(2, 4), body_of(77, 5)):
            assert post(server.url + "/webhook", body, keys.headers(body)).json() == {"status": "stored"}
        assert post(server.url + "/webhook", no_org, keys.headers(no_org)).json() == {"status": "quarantined"}


def test_a_strict_pinned_receiver_refuses_others_with_403_before_judging_the_body(sqlite_url):
    keys = Keys()
    receiver = Receiver(sqlite_url, keys.verifier(), org_ids=[1], strict=True)
    with receiver:
        theirs = b'{"type": "message_created", "payload": {"org_id": 2}}'
        ours = b'{"type": "message_created", "payload": {"org_id": 1}}'
        assert receiver.handle_sync(theirs, keys.headers(theirs)).status == 403
        assert receiver.handle_sync(ours, keys.headers(ours)).status == 400


def test_a_receiver_must_say_which_organizations_it_serves(sqlite_url):
    keys = Keys()
    with pytest.raises(ValueError, match="org_ids"):
        Receiver(sqlite_url, keys.verifier())
    with pytest.raises(ValueError, match="not both"):
        Receiver(sqlite_url, keys.verifier(), org_ids=[1], any_org=True)
    with pytest.raises(ValueError, match="positive"):
        Receiver(sqlite_url, keys.verifier(), org_ids=[0])


def test_the_org_decision():
    assert serves(None, None) and serves(None, 5)
    assert serves(frozenset({1, 3}), 3) and not serves(frozenset({1, 3}), 2) and not serves(frozenset({1}), None)
    assert served_orgs([3, 1], False) == frozenset({1, 3}) and served_orgs([], True) is None
    assert org_id_of_body(b'{"payload": {"org_id": true}}') is None  # a boolean is no organization
    assert org_id_of_body(b'{"payload": {"org_id": "1"}}') is None
    assert org_id_of_body(b'[1, 2]') is None and org_id_of_body(b'{"payload": [1]}') is None


# ---------------------------------------------------------------- replays


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_delivery_replayed_without_its_webhook_headers_is_stored_once_and_handled_once(db_url, protocol):
    keys = Keys()
    runs: list[int] = []
    lock = threading.Lock()
    handlers = Handlers()

    @handlers.on(name="count_runs")
    def count_runs(received: ReceivedEvent) -> None:
        with lock:
            runs.append(received.id)

    config = ReceiverConfig(db_url=db_url, public_keys=[keys.public_pem], org_ids=[1], poll_interval=0.02)
    body, later = body_of(1, seed=7), body_of(1, seed=8)
    with ServedReceiver(config, handlers, http=PROTOCOLS[protocol]) as served:
        url = served.url + "/webhook"
        original = keys.headers(body, msg_id="msg_original")
        assert post(url, body, original).json() == {"status": "stored"}
        wait_until(lambda: runs == [1])
        # The replay: the same bytes, only the vendor header left (it signs the body alone).
        stripped = {name: value for name, value in original.items() if not name.lower().startswith("webhook-")}
        assert set(stripped) == {"content-type", keys.signer.vendor_header}
        for _ in range(3):
            assert post(url, body, stripped).json() == {"status": "stored"}  # acknowledged, as a retry is
        # ...and with an id of the replayer's choosing next to it, which no signature covers.
        assert post(url, body, {**stripped, "webhook-id": "msg_chosen"}).status_code == 200
        assert post(url, later, keys.headers(later)).json() == {"status": "stored"}
        wait_until(lambda: len(runs) == 2)  # handlers follow the log in order: the replay came before `later`
        assert runs == [1, 2]
        assert [e.body for e in served.service.log.events_after()] == [body, later]
        assert served.service.log.events_after()[0].dedupe_key == "id:msg_original"


def test_two_deliveries_with_distinct_signed_ids_and_equal_bodies_are_two(sqlite_url):
    """The platform can send one body for two events (a reply sent again after it failed); each has its own id."""
    keys = Keys()
    with Receiver(sqlite_url, keys.verifier(), org_ids=[1]) as receiver:
        body = body_of(1, seed=9)
        for msg_id in ("msg_first", "msg_again"):
            assert receiver.handle_sync(body, keys.headers(body, msg_id=msg_id)).status == 200
        assert receiver.handle_sync(body, keys.vendor_headers(body)).status == 200  # a replay of either
        assert receiver.handle_sync(body, keys.headers(body, msg_id="msg_first")).status == 200  # a retry
        assert [e.dedupe_key for e in receiver.log.events_after()] == ["id:msg_first", "id:msg_again"]


def test_a_body_first_stored_without_an_id_is_not_stored_again_with_one(sqlite_url):
    keys = Keys()
    with Receiver(sqlite_url, keys.verifier(), org_ids=[1]) as receiver:
        body = body_of(1, seed=10)
        assert receiver.handle_sync(body, keys.vendor_headers(body)).status == 200
        assert receiver.handle_sync(body, keys.headers(body, msg_id="msg_late")).status == 200
        assert len(receiver.log.events_after()) == 1


def test_a_quarantined_body_replayed_without_its_headers_is_kept_once(sqlite_url):
    keys = Keys()
    with Receiver(sqlite_url, keys.verifier(), org_ids=[1]) as receiver:
        body = b'{"type": "message_created", "payload": {"org_id": 1, "message": "new shape"}}'
        assert receiver.handle_sync(body, keys.headers(body)).status == 200
        assert receiver.handle_sync(body, keys.vendor_headers(body)).status == 200
        assert len(receiver.log.quarantined()) == 1


keys_and_bodies = st.lists(
    st.tuples(st.one_of(st.sampled_from(["id:a", "id:b", "id:c"]), st.just("body")), st.sampled_from([b"1", b"2", b"3"])),
    max_size=12,
)


@settings(max_examples=400)
@given(batch=keys_and_bodies, stored=keys_and_bodies)
def test_replays_keep_exactly_one_of_each_delivery(batch, stored):
    def key_of(kind: str, body: bytes) -> str:
        return dedupe_key(body, None, "vendor") if kind == "body" else kind

    batch = [(key_of(kind, body), body_digest(body)) for kind, body in batch]
    earlier: dict[bytes, list[str]] = {}
    for kind, body in stored:
        earlier.setdefault(body_digest(body), []).append(key_of(kind, body))
    verdicts = replays(batch, earlier)
    kept = [item for item, repeated in zip(batch, verdicts) if not repeated]
    event(f"kept {len(kept)} of {len(batch)}")
    every_stored = [(key, digest) for digest, keys in earlier.items() for key in keys]
    for index, (key, digest) in enumerate(batch):
        before = every_stored + [item for item, repeated in zip(batch[:index], verdicts[:index]) if not repeated]
        same = [other for other in before if other[1] == digest and is_same_delivery(key, other[0], True)]
        assert verdicts[index] == bool(same)
    for i, (key, digest) in enumerate(kept):  # no two kept requests with one body are one delivery
        assert not any(digest == other_digest and is_same_delivery(key, other, True) for other, other_digest in kept[i + 1:])


def test_the_migration_gives_rows_stored_before_it_their_digest(db_url):
    from sqlalchemy import text

    from tidings.store.engine import create_sync_engine
    from tidings.store.migrate import upgrade

    revision = "de8d93eb7f77"  # the migration that adds body_sha256
    upgrade(db_url, f"{revision}-1")
    engine = create_sync_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO receiver_events (dedupe_key, event_type, scheme, received_at, body) "
                              "VALUES ('id:old', 'message_created', 'v1a', 1.0, :body)"), {"body": b"old body"})
            conn.execute(text("INSERT INTO receiver_quarantine (dedupe_key, scheme, received_at, error, body) "
                              "VALUES ('sha256:x', 'vendor', 1.0, 'e', :body)"), {"body": b"odd body"})
        upgrade(db_url, revision)
        with engine.connect() as conn:
            assert bytes(conn.execute(text("SELECT body_sha256 FROM receiver_events")).scalar()) == body_digest(b"old body")
            assert bytes(conn.execute(text("SELECT body_sha256 FROM receiver_quarantine")).scalar()) == body_digest(
                b"odd body")
    finally:
        engine.dispose()
    log = EventLog(db_url)
    try:  # a replay of the old row without its id is recognised
        with log.transaction() as conn:
            from tidings.receiver.log import EVENT, Record

            log.append(conn, [Record(EVENT, dedupe_key(b"old body", None, "vendor"), b"old body", "vendor", None, 2.0,
                                     event_type="message_created")])
        assert rows(log, receiver_events) == 1
    finally:
        log.dispose()


@pytest.fixture
def event_log(db_url):
    log = EventLog(db_url)
    log.create_schema()
    yield log
    log.dispose()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # rows deleted per example
@given(batches=st.lists(keys_and_bodies, min_size=1, max_size=4))
def test_the_store_keeps_what_the_replay_rule_keeps(event_log, batches):
    """The insert's own replay check (``NOT EXISTS`` in SQL) against the pure rule, batch after batch, on both engines."""
    from sqlalchemy import delete

    from tidings.receiver.log import EVENT, Record

    with event_log.transaction() as conn:
        conn.execute(delete(receiver_events))
    expected: list[str] = []
    stored: dict[bytes, list[str]] = {}
    for batch in batches:
        records = [Record(EVENT, dedupe_key(body, None, "vendor") if kind == "body" else kind, body, "vendor",
                          None, 1.0, event_type="message_created") for kind, body in batch]
        verdicts = replays([(r.dedupe_key, r.body_sha256) for r in records], stored)
        with event_log.transaction() as conn:
            event_log.append(conn, records)
        for record, repeated in zip(records, verdicts):
            if not repeated and record.dedupe_key not in expected:  # a key stored under another body: a retry
                expected.append(record.dedupe_key)
                stored.setdefault(record.body_sha256, []).append(record.dedupe_key)
    assert [e.dedupe_key for e in event_log.events_after(limit=1000)] == expected
