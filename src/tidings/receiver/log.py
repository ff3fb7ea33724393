"""The durable event log and the quarantine: every SQL statement that touches them.

The log is written by one writer per process (``GroupCommitter``), in batches,
with ``INSERT ... ON CONFLICT (dedupe_key) DO NOTHING`` so that a retry of a
stored delivery is a no-op on both engines; a request without a signed id
whose body is stored already (a replay stripped of its ``webhook-*``
headers) is left out before the insert, by the rule of ``dedupe.replays``. Log positions (``id``) are handed
out in commit order: SQLite has one writer at a time anyway, and on
PostgreSQL each batch takes a transaction-level advisory lock, so that a
reader paging with ``id > after`` never skips an event committed late with a
smaller id, even with several receiver processes on one database.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, delete, event, func, select, text
from sqlalchemy.engine import Engine

from tidings.receiver.dedupe import BODY_PREFIX, body_digest, is_body_key, replays
from tidings.store.engine import create_sync_engine, is_sqlite
from tidings.store.receiver_tables import create_receiver_schema, receiver_events, receiver_quarantine

EVENT = "event"
QUARANTINE = "quarantine"


_DIGESTS_PER_QUERY = 500  # body digests looked up per statement: well under both drivers' parameter limits

# Any constant: the key of the lock that orders the writers of one database.
_APPEND_LOCK_KEY = 0x7469_6469_6E67  # "tiding"


@dataclass(frozen=True, slots=True)
class Record:
    """One authentic request, ready to be stored: in the log, or in the quarantine."""

    kind: str  # EVENT or QUARANTINE
    dedupe_key: str
    body: bytes
    scheme: str
    webhook_id: str | None
    received_at: float
    event_type: str = ""
    message_id: int | None = None
    conversation_id: int | None = None
    error: str = ""  # why a quarantined body does not parse
    sequence: int | None = None  # X-Tidings-Sequence
    body_sha256: bytes = b""  # the body's SHA-256; computed here when not given

    def __post_init__(self) -> None:
        if not self.body_sha256:
            object.__setattr__(self, "body_sha256", body_digest(self.body))


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    dedupe_key: str
    event_type: str
    webhook_id: str | None
    scheme: str
    received_at: float
    message_id: int | None
    conversation_id: int | None
    body: bytes
    sequence: int | None = None
    body_sha256: bytes | None = None


@dataclass(frozen=True, slots=True)
class QuarantinedBody:
    id: int
    dedupe_key: str
    webhook_id: str | None
    scheme: str
    received_at: float
    error: str
    body: bytes
    body_sha256: bytes | None = None


@dataclass(frozen=True)
class ReprocessOutcome:
    moved: list[int]  # quarantine ids now in the log
    still_failing: dict[int, str]  # quarantine id -> why it still does not parse


def create_log_engine(url: str, **kwargs) -> Engine:
    """A sync engine whose SQLite write transactions take the write lock at ``BEGIN``.

    A deferred SQLite transaction that reads and then writes fails at once
    (``SQLITE_BUSY``, no busy wait) when another connection committed in
    between; ``BEGIN IMMEDIATE`` waits for the lock instead. Only writes
    (``EventLog.transaction``) begin so: a reader that took the write lock
    would hold up every commit behind it.
    """
    engine = create_sync_engine(url, **kwargs)
    if is_sqlite(url):

        @event.listens_for(engine, "connect")
        def _manual_transactions(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None
            # Checkpoints run beside the commits (EventLog.checkpoint), not inside one.
            dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")

        @event.listens_for(engine, "begin")
        def _begin(connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.info.get(_WRITING) else "BEGIN")

    return engine


_WRITING = "tidings.receiver.writing"


_EVENT_COLUMNS = ("dedupe_key", "event_type", "webhook_id", "scheme", "received_at", "message_id", "conversation_id", "body",
                  "sequence", "body_sha256")
_QUARANTINE_COLUMNS = ("dedupe_key", "webhook_id", "scheme", "received_at", "error", "body", "body_sha256")


def _insert_sql(table, columns: tuple[str, ...], dialect) -> str:
    """One row's insert, unless it repeats a stored delivery, in the driver's parameter style.

    ``ON CONFLICT (dedupe_key) DO NOTHING`` skips a row whose key is stored;
    ``NOT EXISTS`` skips one whose body is stored under a body key, or whose
    own key is a body key and whose body is stored at all: the stored half of
    ``tidings.receiver.dedupe.is_same_delivery``, in the same statement, so a
    batch of requests with signed ids is one round trip under the append lock
    (``bench/receive.py``; ``EventLog._first_deliveries`` says when more). The
    row's parameters are followed by its body's digest and whether its key is
    a body key (1 or 0). PostgreSQL types the selected parameters by casts;
    SQLite gives them the columns' affinity.
    """
    placeholder = "?" if dialect.paramstyle == "qmark" else "%s"
    if dialect.name == "postgresql":
        values = [f"CAST({placeholder} AS {table.c[name].type.compile(dialect=dialect)})" for name in columns]
    else:
        values = [placeholder] * len(columns)
    return (
        f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT {', '.join(values)} "
        f"WHERE NOT EXISTS (SELECT 1 FROM {table.name} WHERE body_sha256 = {placeholder} "
        f"AND (substr(dedupe_key, 1, {len(BODY_PREFIX)}) = '{BODY_PREFIX}' OR {placeholder} = 1)) "
        "ON CONFLICT (dedupe_key) DO NOTHING"
    )


class EventLog:
    """The receiver's store: the event log and the quarantine, on SQLite or PostgreSQL."""

    def __init__(self, url: str, engine: Engine | None = None) -> None:
        self.url = url
        self.engine = engine or create_log_engine(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._insert_event_sql = _insert_sql(receiver_events, _EVENT_COLUMNS, self.engine.dialect)
        self._insert_quarantined_sql = _insert_sql(receiver_quarantine, _QUARANTINE_COLUMNS, self.engine.dialect)
        database = self.engine.url.database if self.is_sqlite else None
        self._write_lock_path = f"{database}.write-lock" if database and database != ":memory:" else None

    def create_schema(self) -> None:
        create_receiver_schema(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    # ---------------------------------------------------------------- writing

    @contextlib.contextmanager
    def transaction(self):
        """A write transaction (``with log.transaction() as conn: ...``).

        On SQLite the writers of one file, in any process, first queue on a
        ``flock`` beside it: a writer that finds SQLite's own lock taken
        sleeps 1, 2, 5, 10... ms before it looks again, while a ``flock``
        wakes the next writer the moment the previous one commits, which
        keeps the latency of several processes on one file at a few
        milliseconds (``bench/receive.py --workers 2``).
        """
        if not self.is_sqlite:
            with self.engine.begin() as conn:
                yield conn
            return
        descriptor = os.open(self._write_lock_path, os.O_RDWR | os.O_CREAT, 0o600) if self._write_lock_path else None
        try:
            if descriptor is not None:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
            with self.engine.connect() as conn:
                conn.info[_WRITING] = True
                try:
                    with conn.begin():
                        yield conn
                finally:
                    conn.info.pop(_WRITING, None)
        finally:
            if descriptor is not None:
                os.close(descriptor)  # releases the flock

    def lock_appends(self, conn: Connection) -> None:
        """Serialise appends across processes so that positions commit in order (PostgreSQL)."""
        if not self.is_sqlite:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPEND_LOCK_KEY})

    def append(self, conn: Connection, records: Sequence[Record]) -> None:
        """Store ``records`` in the caller's transaction; duplicates of stored ones are skipped.

        The hot path: the statements are compiled once (above) and the rows go
        to the driver's ``executemany`` as tuples, because SQLAlchemy's
        per-row parameter processing costs as much as the insert itself
        (``bench/receive.py``).
        """
        self.lock_appends(conn)
        events = [_event_row(r) + _replay_check(r) for r in self._first_deliveries(conn, receiver_events, records, EVENT)]
        quarantined = [_quarantine_row(r) + _replay_check(r)
                       for r in self._first_deliveries(conn, receiver_quarantine, records, QUARANTINE)]
        if events:
            conn.exec_driver_sql(self._insert_event_sql, events)
        if quarantined:
            conn.exec_driver_sql(self._insert_quarantined_sql, quarantined)

    def _first_deliveries(self, conn: Connection, table, records: Sequence[Record], kind: str) -> list[Record]:
        """The records of ``kind`` that repeat no earlier one of the batch, nor, when one of them has a
        body key, a stored delivery.

        Requests with a signed id (every delivery the platform makes) are checked against the stored
        rows by the insert itself (``_insert_sql``). A body-keyed one (a request without ``webhook-*``
        headers) needs the stored keys of its body first: whether it repeats a stored delivery
        decides whether it hides a later one of the batch with the same body.
        """
        mine = [r for r in records if r.kind == kind]
        stored: dict[bytes, list[str]] = {}
        if any(is_body_key(r.dedupe_key) for r in mine):
            digests = sorted({r.body_sha256 for r in mine})
            for start in range(0, len(digests), _DIGESTS_PER_QUERY):
                chunk = tuple(digests[start : start + _DIGESTS_PER_QUERY])
                sql = _same_bodies_sql(table.name, len(chunk), self.engine.dialect.paramstyle)
                for digest, key in conn.exec_driver_sql(sql, chunk):
                    stored.setdefault(bytes(digest), []).append(key)
        verdicts = replays([(r.dedupe_key, r.body_sha256) for r in mine], stored)
        return [record for record, repeated in zip(mine, verdicts) if not repeated]

    def checkpoint(self) -> None:
        """Copy the SQLite write-ahead log into the database, without blocking writers.

        With SQLite's automatic checkpoint, the commit that crosses 1,000 WAL
        pages (about 2,500 events) copies them and flushes the database file
        before it returns, and the requests waiting on that commit wait for
        it too. ``GroupCommitter`` runs this in a thread of its own instead,
        once its writer has committed about as many records since the last one.
        """
        if not self.is_sqlite:
            return
        connection = self.engine.raw_connection()  # outside any transaction, as a checkpoint must be
        try:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            connection.close()

    # ---------------------------------------------------------------- reading

    def events_after(self, after: int = 0, limit: int = 100, conn: Connection | None = None) -> list[StoredEvent]:
        query = (
            select(receiver_events).where(receiver_events.c.id > after).order_by(receiver_events.c.id).limit(limit)
        )
        return [StoredEvent(**row._mapping) for row in self._read(query, conn)]

    def events_by_id(self, ids: Iterable[int], conn: Connection | None = None) -> dict[int, StoredEvent]:
        wanted = list(ids)
        if not wanted:
            return {}
        rows = self._read(select(receiver_events).where(receiver_events.c.id.in_(wanted)), conn)
        return {row.id: StoredEvent(**row._mapping) for row in rows}

    def count_events(self) -> int:
        return self._read(select(func.count()).select_from(receiver_events))[0][0]

    def last_position(self, conn: Connection | None = None) -> int:
        return self._read(select(func.coalesce(func.max(receiver_events.c.id), 0)), conn)[0][0]

    def stored_keys(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` are in the log (a check for tests and operators)."""
        wanted = list(keys)
        found: set[str] = set()
        column = receiver_events.c.dedupe_key
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            found.update(row[0] for row in self._read(select(column).where(column.in_(chunk))))
        return found

    def quarantined(self, limit: int = 100, conn: Connection | None = None) -> list[QuarantinedBody]:
        query = select(receiver_quarantine).order_by(receiver_quarantine.c.id).limit(limit)
        return [QuarantinedBody(**row._mapping) for row in self._read(query, conn)]

    def _read(self, query, conn: Connection | None = None):
        if conn is not None:
            return conn.execute(query).all()
        with self.engine.connect() as own:
            return own.execute(query).all()

    # ---------------------------------------------------------------- quarantine

    def reprocess_quarantine(
        self, classify: Callable[[QuarantinedBody], Record], ids: Iterable[int] | None = None
    ) -> ReprocessOutcome:
        """Parse quarantined bodies again; those that parse now move into the log.

        ``classify`` turns a quarantined body into a ``Record`` with the parser
        in use now (an upgraded contract, a fixed sender): an ``EVENT`` record
        is appended to the log and its quarantine row deleted, in one
        transaction; a ``QUARANTINE`` record stays, with its new error.
        """
        wanted = None if ids is None else set(ids)
        moved: list[int] = []
        failing: dict[int, str] = {}
        with self.transaction() as conn:
            for body in self.quarantined(limit=1_000_000, conn=conn):
                if wanted is not None and body.id not in wanted:
                    continue
                record = classify(body)
                if record.kind != EVENT:
                    failing[body.id] = record.error
                    continue
                self.append(conn, [record])
                conn.execute(delete(receiver_quarantine).where(receiver_quarantine.c.id == body.id))
                moved.append(body.id)
        return ReprocessOutcome(moved, failing)


@functools.lru_cache(maxsize=128)
def _same_bodies_sql(table_name: str, count: int, paramstyle: str) -> str:
    """The rows with one of ``count`` body digests, in the driver's parameter style (no SQLAlchemy on the hot path)."""
    placeholders = ", ".join(["?" if paramstyle == "qmark" else "%s"] * count)
    return f"SELECT body_sha256, dedupe_key FROM {table_name} WHERE body_sha256 IN ({placeholders})"


def _replay_check(record: Record) -> tuple:
    """The parameters of the insert's replay check (``_insert_sql``)."""
    return (record.body_sha256, int(is_body_key(record.dedupe_key)))


def _event_row(record: Record) -> tuple:
    return (
        record.dedupe_key,
        record.event_type,
        record.webhook_id,
        record.scheme,
        record.received_at,
        record.message_id,
        record.conversation_id,
        record.body,
        record.sequence,
        record.body_sha256,
    )


def _quarantine_row(record: Record) -> tuple:
    return (record.dedupe_key, record.webhook_id, record.scheme, record.received_at, record.error, record.body,
            record.body_sha256)
