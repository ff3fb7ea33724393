"""X-Tidings-Sequence: the pure decisions (exhaustively), the projection applying
a conversation's events in order on both engines, gaps reported after the bound,
and the header, /gaps and ``tidings receiver gaps`` end to end."""

from __future__ import annotations

import dataclasses
import json
import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.test_receiver_helpers import Keys, ServedReceiver, post, wait_until
from tidings.cli import app
from tidings.contract import dump_event, parse_event
from tidings.contract.samples import SampleFactory
from tidings.receiver.core import event_record
from tidings.receiver.inbox import InboxProjector, get_conversation, list_gaps
from tidings.receiver.log import EventLog
from tidings.receiver.sequencing import APPLY, HOLD, Arrival, Gap, Held, holes, parse_sequence, placement, plan_batch
from tidings.apps.receiver_service import ReceiverConfig
from tidings.store.receiver_tables import receiver_held_events, receiver_sequence_keys

KEY = (7, "message_updated", 42)


# ---------------------------------------------------------------- pure decisions


def test_only_positive_integers_are_a_sequence():
    assert parse_sequence("1") == 1
    assert parse_sequence("123456") == 123456
    for ignored in (None, "", "0", "-1", "+3", "1.5", " 2", "abc", "٣", str(2**63), "1e3"):
        assert parse_sequence(ignored) is None, ignored


def test_placement_exhaustively():
    for last in [None, *range(0, 8)]:
        for sequence in [None, *range(1, 10)]:
            expected = HOLD if sequence is not None and last is not None and sequence > last + 1 else APPLY
            assert placement(sequence, last) == expected, (sequence, last)


def _feed_one_by_one(order, last, gap_wait=float("inf")):
    """Each event in a batch of its own; the applied event ids (= sequences) in order."""
    last_applied, held, applied = ({KEY: last} if last is not None else {}), [], []
    for now, sequence in enumerate(order):
        plan = plan_batch([Arrival(sequence, KEY, sequence)], last_applied, held, float(now), gap_wait)
        applied += plan.applied
        held = [h for h in held if h.event_id not in plan.released] + plan.held
        last_applied.update(plan.last_applied)
    return applied, held, last_applied


@given(st.permutations(range(1, 7)))
def test_a_known_key_is_applied_in_order_whatever_the_arrival(order):
    applied, held, last = _feed_one_by_one(order, last=0)
    assert applied == [1, 2, 3, 4, 5, 6]
    assert held == [] and last == {KEY: 6}


@given(st.permutations(range(1, 7)), st.permutations(range(101, 104)))
def test_one_batch_is_applied_in_order_per_key_even_for_a_new_key(order, other):
    other_key = (7, "message_created", 42)
    arrivals = [Arrival(s, KEY, s) for s in order] + [Arrival(s, other_key, s - 100) for s in other]
    random.Random(len(order)).shuffle(arrivals)
    plan = plan_batch(arrivals, {}, [], 0.0, 30.0)
    assert [i for i in plan.applied if i < 100] == [1, 2, 3, 4, 5, 6]
    assert [i for i in plan.applied if i > 100] == [101, 102, 103]
    assert plan.last_applied == {KEY: 6, other_key: 3} and plan.held == [] and plan.reported == []


def test_unsequenced_events_keep_log_order():
    arrivals = [Arrival(i, None, None) for i in (5, 2, 9)] + [Arrival(1, KEY, None)]
    assert plan_batch(arrivals, {KEY: 3}, [], 0.0, 30.0).applied == [5, 2, 9, 1]


def test_old_and_duplicate_numbers_are_applied_without_moving_back():
    plan = plan_batch([Arrival(1, KEY, 2), Arrival(2, KEY, 5), Arrival(3, KEY, 6)], {KEY: 5}, [], 0.0, 30.0)
    assert plan.applied == [1, 2, 3] and plan.last_applied == {KEY: 6}
    assert plan.late == {1, 2}


@settings(max_examples=60)
@given(st.sets(st.integers(2, 12), min_size=1, max_size=8), st.integers(1, 100).map(float))  # whole seconds: exact sums
def test_a_hole_is_held_then_reported_and_the_held_applied_in_order(present, gap_wait):
    held_sequences = sorted(present)
    plan = plan_batch([Arrival(s, KEY, s) for s in reversed(held_sequences)], {KEY: 0}, [], 1000.0, gap_wait)
    assert plan.applied == []  # 1 is missing: nothing beyond it is applied early
    assert plan.reported == []
    held = plan.held
    assert sorted(h.sequence for h in held) == held_sequences
    # Still within the bound: nothing moves.
    waiting = plan_batch([], {KEY: 0}, held, 1000.0 + gap_wait, gap_wait)
    assert waiting.applied == [] and waiting.reported == []
    late = plan_batch([], {KEY: 0}, held, 1000.0 + gap_wait + 0.5, gap_wait)
    assert late.applied == held_sequences
    assert sorted(late.released) == held_sequences
    assert late.last_applied == {KEY: held_sequences[-1]}
    missing = {n for g in late.reported for n in range(g.first_missing, g.last_missing + 1)}
    assert missing == set(range(1, held_sequences[-1] + 1)) - present
    assert all(g.waiting_since == 1000.0 for g in late.reported)


def test_holes_name_each_missing_range_since_the_first_event_held_past_it():
    held = [Held(10, KEY, 4, 50.0), Held(11, KEY, 7, 20.0), Held(12, KEY, 8, 90.0)]
    assert [(g.first_missing, g.last_missing, g.waiting_since) for g in holes(1, held)] == [(2, 3, 20.0), (5, 6, 20.0)]
    assert holes(8, held) == []


def test_the_largest_sequence_is_the_largest_bigint():
    assert parse_sequence(str(2**63 - 1)) == 2**63 - 1
    assert parse_sequence(str(2**63)) is None


def test_a_number_without_a_key_is_not_sequenced_and_keeps_its_log_place():
    """Events numbered but of no conversation (no key) are not sorted among themselves."""
    arrivals = [Arrival(1, None, 5), Arrival(2, None, 3), Arrival(3, KEY, None), Arrival(4, KEY, 2)]
    assert plan_batch(arrivals, {KEY: 1}, [], 0.0, 30.0).applied == [1, 2, 3, 4]


def test_a_held_event_whose_number_was_passed_meanwhile_goes_with_the_next_arrival():
    stale = Held(9, KEY, 4, 0.0)  # held at 4, and the key's last applied is 5 by now
    plan = plan_batch([Arrival(10, KEY, 6)], {KEY: 5}, [stale], 1.0, 30.0)
    assert plan.applied == [10, 9] and plan.released == [9] and plan.last_applied == {KEY: 6}


def test_a_key_given_up_on_releases_its_held_and_other_keys_keep_waiting():
    before, after = (7, "message_updated", 41), (7, "message_updated", 43)
    long_held = Held(5, KEY, 5, 0.0)  # waited past the bound
    arrivals = [Arrival(15, before, 9), Arrival(20, KEY, 7), Arrival(30, after, 9)]
    plan = plan_batch(arrivals, {KEY: 1, before: 1, after: 1}, [long_held], 100.0, 30.0)
    assert plan.applied == [5, 20] and plan.released == [5]
    # newly held on either side of the one released with its key, and still held
    assert [(h.event_id, h.sequence) for h in plan.held] == [(15, 9), (30, 9)]
    assert plan.last_applied == {KEY: 7}


@pytest.mark.parametrize("value", [Arrival(1, KEY, 2), Held(1, KEY, 2, 0.0), Gap(KEY, 2, 3, 0.0)])
def test_what_the_sequencer_passes_around_cannot_change(value):
    """A plan shares its Held values with the caller's list: neither side may change them under the other."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.key = None


# ---------------------------------------------------------------- the projection, both engines


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _bodies(count: int) -> tuple[list[bytes], int]:
    """``count`` message_updated events of one conversation, the same last message, labelled 1..count."""
    created = SampleFactory(11).message_created(message={"sender_type": "User", "status": "Sending"})
    bodies = []
    for number in range(1, count + 1):
        document = orjson.loads(dump_event(created))
        document["type"] = "message_updated"
        document["payload"]["conversation"]["label"] = f"seq{number}"
        bodies.append(orjson.dumps(document))
    return bodies, created.payload.conversation.id


def _append(log: EventLog, bodies: list[bytes], sequences: list[int | None]) -> None:
    with log.transaction() as conn:
        log.append(
            conn,
            [
                event_record(parse_event(bodies[i]), f"k{i}-{s}", bodies[i], "v1a", None, sequence=s)
                for i, s in zip([(s or 1) - 1 for s in sequences], sequences)
            ],
        )


def _label(log: EventLog, conversation_id: int) -> str:
    with log.engine.connect() as conn:
        return get_conversation(conn, conversation_id)["label"]


def test_three_one_two_in_one_batch_are_applied_one_two_three(db_url):
    log = EventLog(db_url)
    log.create_schema()
    bodies, conversation_id = _bodies(3)
    _append(log, bodies, [3, 1, 2])
    assert InboxProjector(log).catch_up() == 3
    assert _label(log, conversation_id) == "seq3"  # log order would have left seq2 last
    log.dispose()


def test_events_beyond_a_hole_wait_for_it_across_steps(db_url):
    log = EventLog(db_url)
    log.create_schema()
    bodies, conversation_id = _bodies(4)
    projector = InboxProjector(log, clock=Clock())
    _append(log, bodies, [1])
    projector.catch_up()
    _append(log, bodies, [4])
    projector.catch_up()
    assert _label(log, conversation_id) == "seq1"  # 4 is held
    _append(log, bodies, [2])
    projector.catch_up()
    assert _label(log, conversation_id) == "seq2"
    _append(log, bodies, [3])
    projector.catch_up()
    assert _label(log, conversation_id) == "seq4"  # 3 closed the hole: 3 then 4
    with log.engine.connect() as conn:
        assert conn.execute(receiver_held_events.select()).all() == []
        assert conn.execute(receiver_sequence_keys.select()).one().last_applied == 4
        assert list_gaps(conn, include_waiting=True) == []
    log.dispose()


def test_a_hole_that_never_fills_is_reported_after_the_bound(db_url):
    log = EventLog(db_url)
    log.create_schema()
    bodies, conversation_id = _bodies(4)
    clock = Clock()
    projector = InboxProjector(log, gap_wait=5.0, clock=clock)
    _append(log, bodies, [1])
    projector.catch_up()
    held_at = clock.now
    _append(log, bodies, [4, 3])
    projector.catch_up()
    clock.now += 5.0
    projector.catch_up()
    with log.engine.connect() as conn:
        assert list_gaps(conn) == []
        (waiting,) = list_gaps(conn, include_waiting=True)
    assert waiting["missing"] == {"first": 2, "last": 2} and waiting["reported_at"] is None
    assert _label(log, conversation_id) == "seq1"
    clock.now += 0.5
    projector.catch_up()  # no new event: the wait alone releases them
    assert _label(log, conversation_id) == "seq4"  # 3 then 4
    with log.engine.connect() as conn:
        (gap,) = list_gaps(conn)
        assert conn.execute(receiver_held_events.select()).all() == []
    org_id = orjson.loads(bodies[0])["payload"]["org_id"]
    assert gap == {
        "key": {"org_id": org_id, "event_type": "message_updated", "conversation_id": conversation_id},
        "missing": {"first": 2, "last": 2},
        "waiting_since": held_at,
        "reported_at": clock.now,
    }
    _append(log, bodies, [2])  # the lost one turns up at last: applied, without moving back
    projector.catch_up()
    assert _label(log, conversation_id) == "seq4"
    log.dispose()


def test_events_without_a_sequence_are_applied_in_log_order_as_before(db_url):
    log = EventLog(db_url)
    log.create_schema()
    bodies, conversation_id = _bodies(3)
    with log.transaction() as conn:
        log.append(conn, [event_record(parse_event(bodies[i]), f"k{i}", bodies[i], "v1a", None) for i in (2, 0, 1)])
    InboxProjector(log, gap_wait=0.0).catch_up()
    assert _label(log, conversation_id) == "seq2"  # the last received wins, as before
    with log.engine.connect() as conn:
        assert conn.execute(receiver_sequence_keys.select()).all() == []
    log.dispose()


# ---------------------------------------------------------------- end to end: header, /gaps, the CLI


def test_the_header_is_kept_and_gaps_are_served_and_listed(sqlite_url):
    keys = Keys()
    bodies, conversation_id = _bodies(3)
    config = ReceiverConfig(db_url=sqlite_url, public_keys=[keys.public_pem], any_org=True, poll_interval=0.05, gap_wait=0.3)
    with ServedReceiver(config) as served, served.admin_client() as http:
        svc = served.service
        for body, header in [(bodies[0], "1"), (bodies[2], "3"), (bodies[1], "not a number")]:
            answer = post(served.url + "/webhook", body, {**keys.headers(body), "X-Tidings-Sequence": header})
            assert answer.status_code == 200
        assert [e.sequence for e in svc.log.events_after(0, 10)] == [1, 3, None]
        gaps = wait_until(lambda: http.get("/gaps").json()["gaps"], timeout=10)
        assert gaps[0]["missing"] == {"first": 2, "last": 2}
        assert gaps[0]["key"]["conversation_id"] == conversation_id
        assert wait_until(lambda: _label(svc.log, conversation_id) == "seq3")
    result = CliRunner().invoke(app, ["receiver", "gaps", "--db", sqlite_url, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["gaps"] == gaps
    table = CliRunner().invoke(app, ["receiver", "gaps", "--db", sqlite_url], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and str(conversation_id) in table.output and "message_updated" in table.output
