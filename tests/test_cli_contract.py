"""``tidings event validate|sample`` and ``tidings schema`` through the real command."""

from __future__ import annotations

import orjson
import pytest

from tests.cli_support import run_tidings
from tidings.contract import EVENT_TYPES, parse_event


def test_validate_prints_the_normalised_event(tmp_path, seed_example_bytes):
    path = tmp_path / "event.json"
    document = orjson.loads(seed_example_bytes)
    document["payload"]["message"]["date"] = "2023-01-31T18:22:17.327878+02:00"
    path.write_bytes(orjson.dumps(document))
    result = run_tidings("event", "validate", str(path))
    assert result.returncode == 0, result.stderr
    out = orjson.loads(result.stdout)
    assert out["payload"]["message"]["date"] == "2023-01-31 16:22:17.327878+00:00"
    document["payload"]["message"]["date"] = "2023-01-31 16:22:17.327878+00:00"
    assert out == document


def test_validate_reads_stdin(seed_example_bytes):
    result = run_tidings("event", "validate", "-", input=seed_example_bytes)
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout) == orjson.loads(seed_example_bytes)


def test_validate_names_the_bad_field(seed_example_bytes):
    document = orjson.loads(seed_example_bytes)
    document["payload"]["conversation"]["is_read"] = "yes"
    result = run_tidings("event", "validate", "-", input=orjson.dumps(document))
    assert result.returncode == 1
    assert result.stdout == b""
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "payload.conversation.is_read" in lines[0]


def test_validate_missing_file_is_one_line(tmp_path):
    result = run_tidings("event", "validate", str(tmp_path / "nope.json"))
    assert result.returncode != 0
    assert len(result.stderr.decode().strip().splitlines()) == 1
    assert "nope.json" in result.stderr.decode()


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_sample_prints_reproducible_valid_events(event_type):
    first = run_tidings("event", "sample", "--type", event_type, "--seed", "7", "--count", "5")
    again = run_tidings("event", "sample", "--type", event_type, "--seed", "7", "--count", "5")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 5 and first.stdout == again.stdout
    assert all(parse_event(line).type == event_type for line in lines)


def test_sample_of_unknown_type_fails():
    result = run_tidings("event", "sample", "--type", "nope")
    assert result.returncode == 1 and b"unknown event type" in result.stderr


def test_schema_prints_each_type_and_all():
    one = run_tidings("schema", "message_updated")
    assert one.returncode == 0
    assert orjson.loads(one.stdout)["title"] == "message_updated"
    everything = orjson.loads(run_tidings("schema").stdout)
    assert set(everything) == set(EVENT_TYPES)
    bad = run_tidings("schema", "nope")
    assert bad.returncode == 1 and b"unknown event type" in bad.stderr


def test_usage_error_is_one_line_without_traceback():
    result = run_tidings("event", "sample", "--count", "zero")
    assert result.returncode != 0
    assert b"Traceback" not in result.stderr
    assert len(result.stderr.decode().strip().splitlines()) == 1
