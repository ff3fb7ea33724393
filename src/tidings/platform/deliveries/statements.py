"""Every statement of the delivery engine's hot path, named and described,
each engine's form side by side (``*_PG`` for PostgreSQL through SQLAlchemy
and asyncpg, ``*_SQLITE`` for sqlite3 in the aiosqlite thread).

Rules every statement here keeps:

- The claim is one statement per engine, and its filter matches the partial
  index ``ix_deliveries_due`` (``status = 'pending'``, ordered by
  ``next_attempt_at``). Statuses are literals, not bound parameters, so that
  both engines' prepared plans can use that index.
- Every status change names the status it expects in its ``WHERE`` clause
  (and for ``delivering``, the worker that holds it). A row that fails the
  guard belongs to someone else now: it is left alone, never overwritten.
- A batch is one statement: on PostgreSQL over arrays (``unnest``, ``ANY``),
  since an ``executemany`` there is one execution per row on the server; on
  SQLite an ``executemany``, or a JSON array of ids (``json_each``), so that
  each statement has one text and sqlite3 prepares it once.

The statements that are the same on both engines and off the hot path
(leases, the operator's actions, reads) are SQLAlchemy Core, in the modules
that run them (``leases``, ``actions``, ``reads``).
"""

from __future__ import annotations

from sqlalchemy import text

from tidings.platform.deliveries.statuses import DELIVERING, HEAD, PENDING, QUEUED
from tidings.platform.webhook_rules import BY_CONVERSATION
from tidings.store.platform_tables import deliveries, webhook_configs

_HEAD = ", ".join(f"'{status}'" for status in HEAD)

# What the dispatcher needs of a claimed delivery, in this order (cycle.ClaimedRow).
CLAIMED_COLUMNS = ("id", "event_id", "webhook_config_id", "org_id", "webhook_id", "signature", "conversation_id",
                   "sequence", "attempt_count", "is_tryout")
_CLAIMED = ", ".join(CLAIMED_COLUMNS)
_CLAIMED_PG = ", ".join(f"deliveries.{column}" for column in CLAIMED_COLUMNS)
_CLAIMED_TYPES = [deliveries.c[column] for column in CLAIMED_COLUMNS]

# ---------------------------------------------------------------- claim
# Up to :limit due deliveries, oldest due first, become ``delivering`` by :worker.
# PostgreSQL: the candidates are locked with SKIP LOCKED, so that concurrent
# workers take different rows without waiting for each other, in a
# materialized CTE (an ``IN`` subquery may run more than once and claim past
# the limit). SQLite runs one write transaction at a time and needs no lock.

CLAIM_PG = text(f"""
WITH due AS MATERIALIZED (
    SELECT id FROM deliveries
    WHERE status = '{PENDING}' AND next_attempt_at <= :now
    ORDER BY next_attempt_at LIMIT :limit
    FOR UPDATE SKIP LOCKED)
UPDATE deliveries SET status = '{DELIVERING}', worker_id = :worker
FROM due WHERE deliveries.id = due.id AND deliveries.status = '{PENDING}'
RETURNING {_CLAIMED_PG}
""").columns(*_CLAIMED_TYPES)

CLAIM_SQLITE = (
    f"UPDATE deliveries SET status = '{DELIVERING}', worker_id = ? WHERE id IN "
    f"(SELECT id FROM deliveries WHERE status = '{PENDING}' AND next_attempt_at <= ? "
    f"ORDER BY next_attempt_at LIMIT ?) AND status = '{PENDING}' RETURNING {_CLAIMED}")

# When the earliest pending delivery falls due (the first entry of ix_deliveries_due).
NEXT_DUE = f"SELECT min(next_attempt_at) FROM deliveries WHERE status = '{PENDING}'"
NEXT_DUE_PG = text(NEXT_DUE)
NEXT_DUE_SQLITE = NEXT_DUE

# ---------------------------------------------------------------- what sending needs
# The frozen bodies of the claimed deliveries' events, and their
# configurations as they are now (URL, secrets, custom headers, paused, deleted).

BODIES_PG = text("SELECT id, body FROM events WHERE id = ANY(CAST(:ids AS BIGINT[]))")
BODIES_SQLITE = "SELECT id, body FROM events WHERE id IN (SELECT value FROM json_each(?))"

_CONFIGURATION = ("SELECT id, url, secret, previous_secret, previous_secret_expires_at, custom_headers, paused, "
                  "deleted_at IS NOT NULL AS deleted FROM webhook_configs")
CONFIGURATIONS_PG = text(f"{_CONFIGURATION} WHERE id = ANY(CAST(:ids AS BIGINT[]))").columns(
    custom_headers=webhook_configs.c.custom_headers.type)
CONFIGURATIONS_SQLITE = f"{_CONFIGURATION} WHERE id IN (SELECT value FROM json_each(?))"

# ---------------------------------------------------------------- recording a cycle's attempts
# Attempts are facts: recorded even for a delivery whose lease was lost, but
# only for a delivery that still exists (one deleted meanwhile takes its
# attempts with it). On PostgreSQL the row is locked FOR KEY SHARE, so that a
# delete cannot slip between the check and the insert.

RECORD_ATTEMPTS_PG = text("""
INSERT INTO attempts (delivery_id, number, started_at, duration_ms, status_code, response_excerpt, error,
                      request_headers, worker_id)
SELECT a.delivery_id, a.number, a.started_at, a.duration_ms, a.status_code, a.response_excerpt, a.error,
       CAST(a.request_headers AS JSON), a.worker_id
FROM unnest(CAST(:delivery_ids AS BIGINT[]), CAST(:numbers AS INTEGER[]), CAST(:started AS TIMESTAMPTZ[]),
            CAST(:durations AS DOUBLE PRECISION[]), CAST(:codes AS INTEGER[]), CAST(:excerpts AS VARCHAR[]),
            CAST(:errors AS VARCHAR[]), CAST(:headers AS TEXT[]), CAST(:workers AS VARCHAR[]))
     AS a(delivery_id, number, started_at, duration_ms, status_code, response_excerpt, error, request_headers,
          worker_id)
WHERE EXISTS (SELECT 1 FROM deliveries AS d WHERE d.id = a.delivery_id FOR KEY SHARE)
""")

RECORD_ATTEMPTS_SQLITE = (
    "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, status_code, response_excerpt, error, "
    "request_headers, worker_id) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9 "
    "WHERE EXISTS (SELECT 1 FROM deliveries WHERE id = ?1)")

# ---------------------------------------------------------------- results
# A delivery's state after its attempt (pending again for a retry, delivered,
# failed), guarded by ``delivering`` by this worker and by a configuration
# that was not deleted. PostgreSQL says which rows it changed (RETURNING);
# the guard is compared with columns of the arrays and the rows found by
# ``id = ANY``, so that each is read by its primary key (with constants the
# planner, trusting statistics taken while nothing was being sent, scanned
# the table). SQLite asks first which rows are still held (HELD_SQLITE).

APPLY_RESULTS_PG = text("""
UPDATE deliveries SET status = r.status, attempt_count = r.attempt_count, next_attempt_at = r.next_attempt_at,
       last_status_code = r.last_status_code, last_error = r.last_error, finished_at = r.finished_at,
       worker_id = NULL
FROM unnest(CAST(:ids AS BIGINT[]), CAST(:statuses AS VARCHAR[]), CAST(:attempt_counts AS INTEGER[]),
            CAST(:nexts AS DOUBLE PRECISION[]), CAST(:codes AS INTEGER[]), CAST(:errors AS VARCHAR[]),
            CAST(:finished AS TIMESTAMPTZ[]), CAST(:expected AS VARCHAR[]), CAST(:workers AS VARCHAR[]))
     AS r(id, status, attempt_count, next_attempt_at, last_status_code, last_error, finished_at, expected, worker)
WHERE deliveries.id = ANY(CAST(:ids AS BIGINT[])) AND deliveries.id = r.id
  AND deliveries.status = r.expected AND deliveries.worker_id = r.worker
  AND NOT EXISTS (SELECT 1 FROM webhook_configs AS c
                  WHERE c.id = deliveries.webhook_config_id AND c.deleted_at IS NOT NULL)
RETURNING deliveries.id
""")

# Which deliveries this worker still holds, and whether their configuration was deleted.
HELD_SQLITE = (
    "SELECT d.id, c.deleted_at IS NOT NULL FROM deliveries AS d JOIN webhook_configs AS c "
    "ON c.id = d.webhook_config_id WHERE d.id IN (SELECT value FROM json_each(?)) "
    f"AND d.status = '{DELIVERING}' AND d.worker_id = ?")

APPLY_RESULTS_SQLITE = (
    "UPDATE deliveries SET status = ?, attempt_count = ?, next_attempt_at = ?, last_status_code = ?, "
    f"last_error = ?, finished_at = ?, worker_id = NULL WHERE id = ? AND status = '{DELIVERING}' AND worker_id = ?")

# ---------------------------------------------------------------- hand-backs and drops
# A claimed delivery handed back unsent: ``pending`` at a later time (its
# endpoint is saturated), ``held`` (its configuration is paused) or
# ``queued`` (a follower whose head was not delivered); guarded as results are.

RELEASE_PG = text(f"""
UPDATE deliveries SET status = r.status, next_attempt_at = r.next_attempt_at, worker_id = NULL
FROM unnest(CAST(:ids AS BIGINT[]), CAST(:statuses AS VARCHAR[]), CAST(:nexts AS DOUBLE PRECISION[]),
            CAST(:workers AS VARCHAR[]))
     AS r(id, status, next_attempt_at, worker)
WHERE deliveries.id = ANY(CAST(:ids AS BIGINT[])) AND deliveries.id = r.id
  AND deliveries.status = '{DELIVERING}' AND deliveries.worker_id = r.worker
""")

RELEASE_SQLITE = (f"UPDATE deliveries SET status = ?, next_attempt_at = ?, worker_id = NULL "
                  f"WHERE id = ? AND status = '{DELIVERING}' AND worker_id = ?")

# Deliveries this worker holds whose configuration was deleted: they go, with
# their attempts (ON DELETE CASCADE), and are never retried.
DROP_PG = text(f"""
DELETE FROM deliveries WHERE id = ANY(CAST(:ids AS BIGINT[])) AND status = '{DELIVERING}' AND worker_id = :worker
  AND EXISTS (SELECT 1 FROM webhook_configs AS c WHERE c.id = deliveries.webhook_config_id
              AND c.deleted_at IS NOT NULL)
""")

DROP_SQLITE = (
    f"DELETE FROM deliveries WHERE id IN (SELECT value FROM json_each(?)) AND status = '{DELIVERING}' "
    "AND worker_id = ? AND webhook_config_id IN (SELECT id FROM webhook_configs WHERE deleted_at IS NOT NULL)")

# ---------------------------------------------------------------- ordered delivery: promotion
# When a conversation's head finishes, its next ``queued`` deliveries (at
# most :per_conversation, in sequence order) take its place, unless something
# of the conversation is already pending, being sent or held. The worker
# that finished the head claims them at once (``delivering``, with the one
# behind the head as its follower); an operator's action promotes one to
# ``pending`` or ``held``. The conversation is named by one of its
# deliveries (``finished``).

# PostgreSQL first locks the conversations' sequence rows, in one order: a
# writer adding an event to the same conversation holds its row until it
# commits (outbox.record_events), so a promotion never misses a delivery
# queued behind the one finishing. Only configurations ordered as they are
# now: one switched to ordered meanwhile already queues new events. The
# count of the locked rows makes sure the locking CTE runs.
ORDERED_CONVERSATIONS_PG = text(f"""
WITH ordered AS MATERIALIZED (
    SELECT f.webhook_config_id, f.conversation_id
    FROM unnest(CAST(:configs AS BIGINT[]), CAST(:conversations AS BIGINT[])) AS f(webhook_config_id, conversation_id)
    JOIN webhook_configs AS c ON c.id = f.webhook_config_id
    WHERE c.ordering = '{BY_CONVERSATION}'),
locked AS MATERIALIZED (
    SELECT s.webhook_config_id FROM delivery_sequences AS s
    WHERE (s.webhook_config_id, s.conversation_id) IN (SELECT * FROM ordered)
    ORDER BY s.webhook_config_id, s.conversation_id
    FOR UPDATE)
SELECT webhook_config_id, conversation_id, (SELECT count(*) FROM locked) AS locked FROM ordered
""")

ORDERED_CONFIGURATIONS_SQLITE = ("SELECT id FROM webhook_configs WHERE id IN (SELECT value FROM json_each(?)) "
                                 f"AND ordering = '{BY_CONVERSATION}'")

# One index seek on ix_deliveries_order per conversation (LATERAL ... LIMIT),
# the finished ids as one array.
PROMOTE_PG = text(f"""
UPDATE deliveries SET status = CAST(:status AS VARCHAR), worker_id = :worker, next_attempt_at = :now
WHERE deliveries.status = '{QUEUED}' AND deliveries.id IN (
    SELECT next.id
    FROM deliveries AS finished
    CROSS JOIN LATERAL (
        SELECT other.id FROM deliveries AS other
        WHERE other.webhook_config_id = finished.webhook_config_id
          AND other.conversation_id = finished.conversation_id AND other.status = '{QUEUED}'
        ORDER BY other.sequence LIMIT :per_conversation) AS next
    WHERE finished.id = ANY(CAST(:finished AS BIGINT[]))
      AND NOT EXISTS (SELECT 1 FROM deliveries AS head
                      WHERE head.webhook_config_id = finished.webhook_config_id
                        AND head.conversation_id = finished.conversation_id
                        AND head.status IN ({_HEAD})))
RETURNING {_CLAIMED_PG}
""").columns(*_CLAIMED_TYPES)

# SQLite has no LATERAL: one seek per place behind the head, the places
# beyond ?4 (per conversation) left out.
PROMOTED_AT_MOST = 2
_QUEUED_AT_SQLITE = f"""
    SELECT (SELECT other.id FROM deliveries AS other
            WHERE other.webhook_config_id = finished.webhook_config_id
              AND other.conversation_id = finished.conversation_id AND other.status = '{QUEUED}'
            ORDER BY other.sequence LIMIT 1 OFFSET {{place}})
    FROM deliveries AS finished
    WHERE {{place}} < ?4 AND finished.id IN (SELECT value FROM json_each(?1))
      AND NOT EXISTS (SELECT 1 FROM deliveries AS head
                      WHERE head.webhook_config_id = finished.webhook_config_id
                        AND head.conversation_id = finished.conversation_id
                        AND head.status IN ({_HEAD}))"""
PROMOTE_SQLITE = (
    "UPDATE deliveries SET status = ?5, worker_id = ?2, next_attempt_at = ?3 "
    f"WHERE status = '{QUEUED}' AND id IN ("
    + " UNION ALL ".join(_QUEUED_AT_SQLITE.format(place=place) for place in range(PROMOTED_AT_MOST))
    + f") RETURNING {_CLAIMED}")
