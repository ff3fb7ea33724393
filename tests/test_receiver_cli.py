"""``tidings receiver events|quarantine|dead``: tables for people, ``--json`` for scripts."""

from __future__ import annotations

import json
import time

from typer.testing import CliRunner

from tests.test_receiver_helpers import Keys
from tidings.cli import app
from tidings.contract import dump_event
from tidings.contract.samples import SampleFactory
from tidings.receiver import EventLog, Receiver
from tidings.store.receiver_tables import receiver_handler_failures

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def populate(db_url: str) -> tuple[list[bytes], EventLog]:
    keys = Keys()
    log = EventLog(db_url)
    bodies = [dump_event(e) for e in SampleFactory(2).events(3)]
    with Receiver(log, keys.verifier(), any_org=True, parse=_rejecting_updates) as receiver:
        for body in bodies + [b'{"not": "an event"}']:
            assert receiver.handle_sync(body, keys.headers(body)).status == 200
    now = time.time()
    with log.transaction() as conn:
        conn.execute(
            receiver_handler_failures.insert(),
            [
                {"handler": "crm", "event_id": 1, "attempts": 5, "next_attempt_at": now, "last_error": "ConnectionError: crm down", "dead_at": now},
                {"handler": "crm", "event_id": 2, "attempts": 1, "next_attempt_at": now + 60, "last_error": "timeout", "dead_at": None},
            ],
        )
    return bodies, log


def _rejecting_updates(raw: bytes):
    from tidings.contract import EventError, parse_event

    event = parse_event(raw)
    if event.type == "message_updated":
        raise EventError("type", "not known to this version")
    return event


def test_events_list(db_url):
    bodies, _log = populate(db_url)
    document = json.loads(invoke("receiver", "events", "list", "--db", db_url, "--json"))
    stored = [e for e in document["events"]]
    assert [e["type"] for e in stored] == ["message_created", "message_created"]  # the update is quarantined
    assert [e["event"] for e in stored] == [json.loads(b) for b in bodies if b"message_created" in b[:40]]
    assert document["next_after"] == stored[-1]["id"]
    after = json.loads(invoke("receiver", "events", "list", "--db", db_url, "--json", "--after", str(stored[0]["id"])))
    assert [e["id"] for e in after["events"]] == [stored[1]["id"]]
    table = invoke("receiver", "events", "list", "--db", db_url)
    assert "message_created" in table and "v1a" in table


def test_quarantine_list_and_reprocess(db_url):
    bodies, log = populate(db_url)
    listed = json.loads(invoke("receiver", "quarantine", "list", "--db", db_url, "--json"))["quarantined"]
    assert sorted(q["body"] for q in listed) == sorted([b'{"not": "an event"}'.decode(), bodies[0].decode()])
    assert "quarantine" in invoke("receiver", "quarantine", "list", "--db", db_url)

    # Today's parser knows message_updated: it moves into the log; the non-event stays.
    outcome = json.loads(invoke("receiver", "quarantine", "reprocess", "--db", db_url, "--json"))
    update_id = next(q["id"] for q in listed if q["body"] == bodies[0].decode())
    junk_id = next(q["id"] for q in listed if q["id"] != update_id)
    assert outcome["moved"] == [update_id]
    assert list(outcome["still_failing"]) == [str(junk_id)]
    assert [e.event_type for e in log.events_after()] == ["message_created", "message_created", "message_updated"]
    assert [q.id for q in log.quarantined()] == [junk_id]


def test_dead_list_and_replay(db_url):
    _bodies, log = populate(db_url)
    dead = json.loads(invoke("receiver", "dead", "list", "--db", db_url, "--json"))["dead"]
    assert [(d["handler"], d["event_id"], d["attempts"]) for d in dead] == [("crm", 1, 5)]
    waiting = json.loads(invoke("receiver", "dead", "list", "--db", db_url, "--json", "--waiting"))["waiting"]
    assert [w["event_id"] for w in waiting] == [2]
    assert "crm down" in invoke("receiver", "dead", "list", "--db", db_url)

    refused = runner.invoke(app, ["receiver", "dead", "replay", "--db", db_url])
    assert refused.exit_code != 0
    assert json.loads(invoke("receiver", "dead", "replay", "--db", db_url, "--all", "--json")) == {"replayed": 1}
    assert json.loads(invoke("receiver", "dead", "list", "--db", db_url, "--json"))["dead"] == []
    due = json.loads(invoke("receiver", "dead", "list", "--db", db_url, "--json", "--waiting"))["waiting"]
    assert sorted((w["event_id"], w["attempts"]) for w in due) == [(1, 0), (2, 1)]
