"""The receiver's tables: the durable event log, the quarantine, the inbox
projected from the log, and the handlers' bookkeeping.

Times are float Unix seconds: written on the hot path, compared by the
handler runner, identical on both engines.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Engine

from tidings.store.metadata import metadata
from tidings.store.types import Id, JsonText


# The log: every authentic event, raw bytes as received, in commit order.
# ``id`` is the log position that readers page by (``GET /events?after=ID``).
receiver_events = Table(
    "receiver_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # "id:<webhook-id>" or "sha256:<hex of the body>" (tidings.receiver.dedupe.dedupe_key)
    Column("dedupe_key", String(300), nullable=False, unique=True),
    Column("event_type", String(200), nullable=False),
    Column("webhook_id", String(300), nullable=True),
    Column("scheme", String(16), nullable=False),  # the signature scheme that verified it
    Column("received_at", Float, nullable=False),
    Column("message_id", BigInteger, nullable=True),
    Column("conversation_id", BigInteger, nullable=True),
    Column("body", LargeBinary, nullable=False),
    Column("sequence", BigInteger, nullable=True),  # X-Tidings-Sequence, when the request carried a valid one
    # SHA-256 of the body: a request without a signed id is a replay of any row with its body
    # (tidings.receiver.dedupe.replays).
    Column("body_sha256", LargeBinary(32), nullable=False),
    Index("ix_receiver_events_body_sha256", "body_sha256"),
)

# Authentic bodies that do not parse under the contract; kept to be re-processed.
receiver_quarantine = Table(
    "receiver_quarantine",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("dedupe_key", String(300), nullable=False, unique=True),
    Column("webhook_id", String(300), nullable=True),
    Column("scheme", String(16), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("error", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("body_sha256", LargeBinary(32), nullable=False),  # as in receiver_events
    Index("ix_receiver_quarantine_body_sha256", "body_sha256"),
)

# How far each reader of the log has come: the projector, each handler.
receiver_cursors = Table(
    "receiver_cursors",
    metadata,
    Column("name", String(300), primary_key=True),
    Column("position", BigInteger, nullable=False),
)

# The inbox: one row per conversation and per message, merged from the log.
receiver_inbox_conversations = Table(
    "receiver_inbox_conversations",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("org_id", BigInteger, nullable=True),
    Column("event_id", BigInteger, nullable=False),  # the log event the snapshot comes from
    # The projector's count of applied events when the snapshot was applied: among
    # snapshots with the same last message, the one applied last wins (sequence order).
    Column("applied_rank", BigInteger, nullable=False),
    Column("snapshot", JsonText, nullable=False),  # the conversation as of that event, unknown fields kept
)

receiver_inbox_messages = Table(
    "receiver_inbox_messages",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("conversation_id", BigInteger, nullable=False),
    Column("date", String(64), nullable=False),  # the contract's spelling; sorts as time in UTC
    Column("status", String(200), nullable=False),
    Column("is_deleted", Boolean, nullable=False),  # sticks once true, whatever the snapshot says
    Column("snapshot_event_type", String(200), nullable=False),
    Column("event_id", BigInteger, nullable=False),
    Column("snapshot", JsonText, nullable=False),  # the winning message snapshot, unknown fields kept
    Index("ix_receiver_inbox_messages_conversation", "conversation_id", "date"),
)

# Handler runs that failed: retried with backoff until they succeed or are dead.
receiver_handler_failures = Table(
    "receiver_handler_failures",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("handler", String(300), nullable=False),
    Column("event_id", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("last_error", Text, nullable=False),
    Column("dead_at", Float, nullable=True),  # set when the tries are used up: the dead-letter list
    UniqueConstraint("handler", "event_id", name="uq_receiver_handler_failures_handler_event"),
    Index("ix_receiver_handler_failures_due", "handler", "dead_at", "next_attempt_at"),
)

# Sequencing (tidings.receiver.sequencing): per (org, event type, conversation),
# the last sequence the inbox applied, the events held until a hole closes, and
# the holes given up on after the bound.
receiver_sequence_keys = Table(
    "receiver_sequence_keys",
    metadata,
    Column("org_id", BigInteger, primary_key=True, autoincrement=False),
    Column("event_type", String(200), primary_key=True),
    Column("conversation_id", BigInteger, primary_key=True, autoincrement=False),
    Column("last_applied", BigInteger, nullable=False),
)

receiver_held_events = Table(
    "receiver_held_events",
    metadata,
    Column("event_id", BigInteger, primary_key=True, autoincrement=False),  # the log position
    Column("org_id", BigInteger, nullable=False),
    Column("event_type", String(200), nullable=False),
    Column("conversation_id", BigInteger, nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("held_since", Float, nullable=False),
)

receiver_sequence_gaps = Table(
    "receiver_sequence_gaps",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("org_id", BigInteger, nullable=False),
    Column("event_type", String(200), nullable=False),
    Column("conversation_id", BigInteger, nullable=False),
    Column("first_missing", BigInteger, nullable=False),
    Column("last_missing", BigInteger, nullable=False),
    Column("waiting_since", Float, nullable=False),
    Column("reported_at", Float, nullable=False),
)

RECEIVER_TABLES = (
    receiver_events,
    receiver_quarantine,
    receiver_cursors,
    receiver_inbox_conversations,
    receiver_inbox_messages,
    receiver_handler_failures,
    receiver_sequence_keys,
    receiver_held_events,
    receiver_sequence_gaps,
)


def create_receiver_schema(sync_engine: Engine) -> None:
    """Create the receiver's tables that do not exist yet (until migrations take over)."""
    metadata.create_all(sync_engine, tables=list(RECEIVER_TABLES))
