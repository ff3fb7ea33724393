"""The inbox: the merge rules (pure, exhaustively), the projection on a real
database, and out-of-order delivery end to end."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.loopback import UvicornThread
from tests.test_receiver_helpers import Keys, client, wait_until
from tidings.contract import dump_event
from tidings.contract.samples import SampleFactory
from tidings.receiver.core import event_record
from tidings.receiver.inbox import InboxProjector, list_conversations, list_messages
from tidings.receiver.inbox_rules import (
    MessageState,
    conversation_wins,
    merge_message,
    merged_status,
    status_rank,
)
from tidings.receiver.log import EventLog
from tidings.receiver.service import ReceiverConfig, ReceiverService
from tidings.contract import parse_event

STATUSES = ["Sending", "Success", "Failed", "Queued", "Read", ""]


# ---------------------------------------------------------------- the status order


def test_a_final_status_never_moves_back():
    for final in ("Success", "Failed"):
        for other in ("Sending", "Queued", "Delivered"):
            assert merged_status(final, other) == final
            assert merged_status(other, final) == final
    assert merged_status("Failed", "Success") == "Success"  # a retried message that went through
    assert merged_status("Success", "Failed") == "Success"


def test_unknown_statuses_are_kept_above_sending():
    assert merged_status("Sending", "Queued") == "Queued"
    assert merged_status("Queued", "Sending") == "Queued"
    assert merged_status("Queued", "Read") == merged_status("Read", "Queued") == "Read"  # stable, by value


def test_status_rank_is_a_total_order():
    ranks = [status_rank(s) for s in STATUSES]
    assert len(set(ranks)) == len(STATUSES)
    for a, b in itertools.permutations(STATUSES, 2):
        assert (status_rank(a) < status_rank(b)) != (status_rank(b) < status_rank(a))


# ---------------------------------------------------------------- merging messages, any order


def snapshot(status: str, deleted: bool, content: str) -> dict:
    return {"id": 7, "conversation_id": 3, "status": status, "is_deleted": deleted, "content": content, "date": "2024-01-15 09:00:00.000000+00:00"}


states = st.builds(
    lambda event_type, status, deleted, content: MessageState.from_event(event_type, snapshot(status, deleted, content)),
    st.sampled_from(["message_created", "message_updated", "message_recalled"]),
    st.sampled_from(STATUSES),
    st.booleans(),
    st.sampled_from(["hello", "hello (edited)", ""]),
)


def fold(events: list[MessageState]) -> MessageState:
    state = None
    for event in events:
        state = merge_message(state, event)
    return state


@settings(max_examples=300, deadline=None)
@given(st.lists(states, min_size=1, max_size=6), st.randoms())
def test_any_permutation_of_a_messages_events_gives_the_same_state(events, random):
    shuffled = list(events)
    random.shuffle(shuffled)
    assert fold(shuffled) == fold(events)
    # merging an event twice changes nothing (retries, replays)
    assert fold(events + events[:1]) == fold(events)
    # grouped differently (one batch, then the next): the same
    cut = len(events) // 2
    assert merge_message(fold(events[:cut]) if cut else None, fold(events[cut:])) == fold(events)


@settings(max_examples=200, deadline=None)
@given(st.lists(states, min_size=1, max_size=6))
def test_deletion_sticks_and_finals_win(events):
    state = fold(events)
    assert state.is_deleted == any(e.is_deleted for e in events)
    assert state.status == max((e.status for e in events), key=status_rank)
    if any(e.status in ("Success", "Failed") for e in events):
        assert state.status in ("Success", "Failed")


def test_conversation_snapshot_with_the_newest_last_message_wins():
    older = {"id": 3, "last_message": {"id": 1, "date": "2024-01-15 09:00:00.000000+00:00"}, "is_read": True}
    newer = {"id": 3, "last_message": {"id": 2, "date": "2024-01-15 10:00:00.000000+00:00"}, "is_read": False}
    assert conversation_wins(older, 5, newer, 4)  # newer state, received earlier
    assert not conversation_wins(newer, 4, older, 5)
    assert conversation_wins(newer, 4, dict(newer, is_read=True), 9)  # same last message: the later event


# ---------------------------------------------------------------- the projection on a database


def lifecycle_bodies() -> list[bytes]:
    """One user message's events: created Sending, updated Success, updated deleted; and a consumer's reply."""
    factory = SampleFactory(21)
    created = factory.message_created(message={"sender_type": "User", "status": "Sending"})
    payload = created.payload
    message_id, conversation_id = payload.message.id, payload.conversation.id

    def updated(**fields):
        document = orjson.loads(dump_event(created))
        document["type"] = "message_updated"
        document["payload"]["message"].update(fields)
        return orjson.dumps(document)

    reply = orjson.loads(dump_event(factory.message_created(message={"sender_type": "Consumer", "status": "Success"})))
    reply["payload"]["conversation"]["id"] = conversation_id  # the consumer answers in the same conversation
    reply["payload"]["message"]["conversation_id"] = conversation_id
    return [dump_event(created), updated(status="Success"), updated(status="Success", is_deleted=True), orjson.dumps(reply)], message_id


def project_in_order(bodies: list[bytes], batch_size: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as folder:
        log = EventLog(f"sqlite:///{Path(folder) / 'inbox.db'}")
        log.create_schema()
        with log.transaction() as conn:
            log.append(conn, [event_record(parse_event(b), f"k{i}", b, "v1a", None) for i, b in enumerate(bodies)])
        InboxProjector(log, batch_size=batch_size).catch_up()
        with log.engine.connect() as conn:
            (conversation,) = list_conversations(conn)
            messages = list_messages(conn, conversation["id"])
        log.dispose()
    return messages


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.permutations(range(4)), st.integers(min_value=1, max_value=4))
def test_projection_is_the_same_in_any_arrival_order(order, batch_size):
    bodies, message_id = lifecycle_bodies()
    expected = project_in_order(bodies, batch_size=10)
    assert project_in_order([bodies[i] for i in order], batch_size) == expected
    user_message = next(m for m in expected if m["id"] == message_id)
    assert (user_message["status"], user_message["is_deleted"]) == ("Success", True)


# ---------------------------------------------------------------- acceptance: out of order, end to end


def test_update_before_create_leaves_the_message_success(db_url):
    keys = Keys()
    factory = SampleFactory(8)
    created = factory.message_created(message={"sender_type": "User", "status": "Sending"})
    document = orjson.loads(dump_event(created))
    document["type"] = "message_updated"
    document["payload"]["message"]["status"] = "Success"
    updated = orjson.dumps(document)
    conversation_id = created.payload.conversation.id

    svc = ReceiverService(ReceiverConfig(db_url=db_url, public_keys=[keys.public_pem], poll_interval=0.05))
    with UvicornThread(svc.app) as server, client(server.url) as http:
        assert http.post("/webhook", content=updated, headers=keys.headers(updated)).status_code == 200

        def status():
            answer = http.get(f"/inbox/conversations/{conversation_id}/messages")
            return answer.status_code == 200 and answer.json()["messages"][0]["status"]

        assert wait_until(status) == "Success"
        assert http.post("/webhook", content=dump_event(created), headers=keys.headers(dump_event(created))).status_code == 200
        wait_until(lambda: len(http.get("/events").json()["events"]) == 2)
        wait_until(lambda: svc.log.events_after(0, 10) and _projected_through(svc, 2))
        (message,) = http.get(f"/inbox/conversations/{conversation_id}/messages").json()["messages"]
        assert message["status"] == "Success"
        assert message["is_deleted"] is False


def _projected_through(svc: ReceiverService, position: int) -> bool:
    from tidings.receiver.inbox import INBOX_CURSOR, read_cursor

    with svc.log.engine.connect() as conn:
        return read_cursor(conn, INBOX_CURSOR) >= position
