"""The transactional outbox: an event and its deliveries are written in the
caller's transaction, beside the change that caused them.

So a message, its event and one delivery per matching webhook configuration
commit together or not at all, and the dispatcher only ever sends events of
committed changes. The body is rendered here, once; the dispatcher sends
these bytes on every attempt.

``write_events`` writes many events in a handful of statements whatever
their number (batched ingestion), on a synchronous connection: the
ingestion's writer runs it in a thread of its own on SQLite, where each
statement through the async driver would cost two thread switches.
``record_events`` and ``record_event`` are the same for an async connection.
On the writer's SQLite connection the statements run on the sqlite3
connection underneath (``store.sqlite``), in the forms written beside them.
Sequence numbers are taken with one atomic upsert, and the rows of
``delivery_sequences`` stay locked until the transaction ends: that
serialises the writers of one conversation with the dispatcher's promotions
(``cycle``), so a promotion never misses a delivery queued behind the one
finishing.
"""

from __future__ import annotations

import secrets
import time

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.contract import MessageEvent, dump_event, utcnow
from tidings.contract.signing import Signer
from tidings.platform import configurations
from tidings.platform.deliveries.statuses import HELD, PENDING, QUEUED, UNFINISHED
from tidings.platform.deliveries.wakeup import mark_deliveries_written
from tidings.platform.webhook_rules import BY_CONVERSATION
from tidings.store.pairs import pair_condition, select_pairs
from tidings.store.platform_tables import deliveries, delivery_sequences, events
from tidings.store.sqlite import SqliteColumns, driver_sqlite, insert_rows, json_array

__all__ = ["OutgoingEvent", "initial_status", "new_webhook_id", "outgoing", "record_event", "record_events",
           "write_events"]


def new_webhook_id() -> str:
    """A Standard Webhooks message id, unique across databases."""
    return "msg_" + secrets.token_hex(12)


def initial_status(*, ordered: bool, paused: bool, waits_behind_another: bool) -> str:
    """The status a new delivery starts in (pure)."""
    if ordered and waits_behind_another:
        return QUEUED
    return HELD if paused else PENDING


class OutgoingEvent(NamedTuple):
    """An event to record, rendered: its body is the bytes every delivery sends."""

    org_id: int
    event_type: str
    conversation_id: int
    message_id: int
    body: bytes


def outgoing(org_id: int, event: MessageEvent) -> OutgoingEvent:
    """``event`` of ``org_id``, rendered (``dump_event``)."""
    return OutgoingEvent(org_id, event.type, event.payload.conversation.id, event.payload.message.id,
                         dump_event(event))


async def record_events(conn: AsyncConnection, items: Sequence[tuple[int, MessageEvent]], *, signer: Signer,
                        now: float | None = None) -> list[int]:
    """``write_events`` of ``(org_id, event)`` pairs, on an async connection."""
    return await conn.run_sync(write_events, [outgoing(org_id, event) for org_id, event in items],
                               signer=signer, now=now)


def write_events(conn: Connection, items: Sequence[OutgoingEvent], *, signer: Signer,
                 now: float | None = None) -> list[int]:
    """Writes each event and its deliveries; returns the event ids in the
    order given. Call inside a transaction."""
    if not items:
        return []
    created = utcnow()
    due = time.time() if now is None else now
    rows = [{"org_id": item.org_id, "event_type": item.event_type, "conversation_id": item.conversation_id,
             "message_id": item.message_id, "body": item.body, "created_at": created} for item in items]
    db = driver_sqlite(conn)
    # SQLite numbers the rows of an INSERT in the order of its VALUES (the
    # writer holds the database lock), so the ids in ascending order are the
    # events in order; asking SQLAlchemy for sorted RETURNING rows would make
    # it send one INSERT per event.
    if db is not None:
        event_ids = sorted(row[0] for row in insert_rows(db, _EVENT_COLUMNS, rows, returning=("id",)))
    elif conn.dialect.name == "sqlite":
        event_ids = sorted((conn.execute(_INSERT_EVENTS, rows)).scalars())
    else:
        event_ids = list((conn.execute(_INSERT_EVENTS_IN_ORDER, rows)).scalars())

    org_ids, event_types = sorted({item.org_id for item in items}), sorted({item.event_type for item in items})
    found = db.execute(SUBSCRIBED_SQLITE, (json_array(org_ids), json_array(event_types))) if db is not None else \
        conn.execute(configurations.SUBSCRIBED, {"org_ids": org_ids, "event_types": event_types})
    subscribed: defaultdict[tuple[int, str], list[tuple[int, bool, bool]]] = defaultdict(list)
    for config_id, org_id, event_type, paused, ordering in found:
        subscribed[(org_id, event_type)].append((config_id, bool(paused), ordering == BY_CONVERSATION))
    if not subscribed:
        return event_ids

    wanted: Counter[tuple[int, int]] = Counter()  # (configuration, conversation) -> sequence numbers needed
    for item in items:
        for config_id, _, _ in subscribed.get((item.org_id, item.event_type), ()):
            wanted[(config_id, item.conversation_id)] += 1
    next_number = _take_sequences(conn, wanted)
    # Ordered conversations that already have a delivery to finish: all of
    # this batch's deliveries in them wait; in the others, all but the first.
    busy = _with_unfinished(conn, [key for key, first in next_number.items() if first > 1])

    rows = []
    for event_id, item in zip(event_ids, items):
        configs = subscribed.get((item.org_id, item.event_type))
        if not configs:
            continue
        signature = signer.vendor_signature(item.body)
        org_id, conversation_id = item.org_id, item.conversation_id
        for config_id, paused, ordered in configs:
            key = (config_id, conversation_id)
            sequence = next_number[key]
            next_number[key] += 1
            status = initial_status(ordered=ordered, paused=paused, waits_behind_another=key in busy)
            busy.add(key)
            rows.append({
                "event_id": event_id, "webhook_config_id": config_id, "org_id": org_id,
                "webhook_id": new_webhook_id(), "signature": signature, "conversation_id": conversation_id,
                "sequence": sequence, "status": status, "attempt_count": 0,
                "next_attempt_at": due, "created_at": created,
            })
    if db is not None:
        insert_rows(db, _DELIVERY_COLUMNS, rows)
    else:
        conn.execute(_INSERT_DELIVERIES, rows)
    if any(row["status"] == PENDING for row in rows):
        mark_deliveries_written(conn)
    return event_ids


def _upsert_sequences(dialect):
    """Adds to each (configuration, conversation)'s last sequence number, or starts it."""
    statement = dialect.insert(delivery_sequences)
    return statement.on_conflict_do_update(
        index_elements=[delivery_sequences.c.webhook_config_id, delivery_sequences.c.conversation_id],
        set_={"last_sequence": delivery_sequences.c.last_sequence + statement.excluded.last_sequence},
    ).returning(delivery_sequences.c.webhook_config_id, delivery_sequences.c.conversation_id,
                delivery_sequences.c.last_sequence)


# The statements, built once: building one costs about as much as running it.
_INSERT_EVENTS = insert(events).returning(events.c.id)
_INSERT_EVENTS_IN_ORDER = insert(events).returning(events.c.id, sort_by_parameter_order=True)
_INSERT_DELIVERIES = insert(deliveries)
_UPSERT_SEQUENCES = {"postgresql": _upsert_sequences(postgresql), "sqlite": _upsert_sequences(sqlite)}
_UNFINISHED_PAIRS = (
    select(deliveries.c.webhook_config_id, deliveries.c.conversation_id).distinct()
    .where(pair_condition(deliveries.c.webhook_config_id, deliveries.c.conversation_id),
           deliveries.c.status.in_(UNFINISHED)))


# Their SQLite forms, for the ingestion writer's sqlite3 connection (``driver_sqlite``).
_EVENT_COLUMNS = SqliteColumns(events, [name for name in events.c.keys() if name != "id"])
_DELIVERY_COLUMNS = SqliteColumns(deliveries, ["event_id", "webhook_config_id", "org_id", "webhook_id", "signature",
                                               "conversation_id", "sequence", "status", "attempt_count",
                                               "next_attempt_at", "created_at"])
_SEQUENCE_COLUMNS = SqliteColumns(delivery_sequences)
SUBSCRIBED_SQLITE = (
    "SELECT id, org_id, event_type, paused, ordering FROM webhook_configs "
    "WHERE org_id IN (SELECT value FROM json_each(?)) AND event_type IN (SELECT value FROM json_each(?)) "
    "AND deleted_at IS NULL ORDER BY id")
_ADD_TO_SEQUENCES_SQLITE = ("ON CONFLICT (webhook_config_id, conversation_id) "
                            "DO UPDATE SET last_sequence = last_sequence + excluded.last_sequence")
UNFINISHED_PAIRS_SQLITE = (
    "SELECT DISTINCT deliveries.webhook_config_id, deliveries.conversation_id FROM json_each(?) AS k "
    "CROSS JOIN deliveries ON deliveries.webhook_config_id = json_extract(k.value, '$[0]') "
    "AND deliveries.conversation_id = json_extract(k.value, '$[1]') "
    f"AND deliveries.status IN ({', '.join(repr(status) for status in UNFINISHED)})")


def _take_sequences(conn: Connection, wanted: Counter[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """Reserves ``wanted[key]`` consecutive sequence numbers for each
    (configuration, conversation); returns the first of each.

    One atomic upsert that adds the counts, so concurrent writers on
    PostgreSQL never share a number; keys in a fixed order, so two writers
    lock the rows in the same order.
    """
    taken = {}
    rows = [{"webhook_config_id": config_id, "conversation_id": conversation_id, "last_sequence": wanted[(config_id, conversation_id)]}
            for config_id, conversation_id in sorted(wanted)]
    if (db := driver_sqlite(conn)) is not None:
        found = insert_rows(db, _SEQUENCE_COLUMNS, rows, on_conflict=_ADD_TO_SEQUENCES_SQLITE,
                            returning=("webhook_config_id", "conversation_id", "last_sequence"))
    else:
        found = conn.execute(_UPSERT_SEQUENCES["postgresql" if conn.dialect.name == "postgresql" else "sqlite"],
                             rows).all()
    for config_id, conversation_id, last in found:
        taken[(config_id, conversation_id)] = last - wanted[(config_id, conversation_id)] + 1
    return taken


def _with_unfinished(conn: Connection, keys: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """Which (configuration, conversation) pairs have a delivery still to finish."""
    if not keys:
        return set()
    if (db := driver_sqlite(conn)) is not None:
        return {tuple(row) for row in db.execute(UNFINISHED_PAIRS_SQLITE, (json_array(sorted(keys)),))}
    return {tuple(row) for row in select_pairs(conn, _UNFINISHED_PAIRS, keys)}


async def record_event(conn: AsyncConnection, *, org_id: int, event: MessageEvent, signer: Signer,
                       now: float | None = None) -> int:
    """Writes ``event`` and a delivery for each configuration of ``org_id``
    subscribed to its type; returns the event's id. Call inside a transaction."""
    [event_id] = await record_events(conn, [(org_id, event)], signer=signer, now=now)
    return event_id
