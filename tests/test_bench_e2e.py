"""bench/e2e.py runs the installed ``tidings serve`` and reports what it
measured (a short, slow run on SQLite; the figures themselves are not judged
here), and stops what it started, when it ends and when interrupted."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

BENCH = Path(__file__).resolve().parent.parent / "bench" / "e2e.py"
FIRST_LINE = re.compile(r"tidings serve \(pid (\d+)\) listening on http://127\.0\.0\.1:(\d+),.* "
                        r"the subscriber on http://127\.0\.0\.1:(\d+)/hook")


@functools.cache
def bench_module():
    spec = importlib.util.spec_from_file_location("bench_e2e", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def assert_stopped(first_line: str) -> None:
    """``tidings serve`` has exited and neither it nor the subscriber listens any more."""
    found = FIRST_LINE.search(first_line)
    assert found, first_line
    pid, api_port, hook_port = (int(value) for value in found.groups())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass
    else:
        raise AssertionError(f"tidings serve (pid {pid}) is still running")
    for port in (api_port, hook_port):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still listens"


def test_a_short_run_delivers_every_message_and_reports_one_json_line():
    result = subprocess.run([sys.executable, str(BENCH), "--rate", "10", "--duration", "3", "--grace", "20"],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["bench"] == "e2e" and report["store"] == "sqlite" and report["workers"] == 0
    assert re.fullmatch(r"[0-9a-f]{40}", report["commit"] or ""), report["commit"]
    assert report["sent"] == report["acknowledged"] == report["received"] == 30
    assert report["lost"] == 0 and report["errors"] == {} and report["unanswered"] == 0
    assert 0 < report["p50_ms"] <= report["p99_ms"] <= report["max_ms"]
    assert 0 < report["baseline_p50_ms"] <= report["baseline_p99_ms"] <= report["baseline_max_ms"]
    assert report["baseline"] == {"sent": 30, "acknowledged": 30, "received": 30, "lost": 0, "errors": {}}
    assert_stopped(lines[0])


def test_an_interrupted_run_stops_serve_and_the_subscriber():
    bench = subprocess.Popen([sys.executable, str(BENCH), "--rate", "10", "--duration", "60"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first_line = bench.stdout.readline()  # printed once serve listens and the configuration exists
        assert FIRST_LINE.search(first_line), first_line + bench.stderr.read()[-3000:]
        bench.send_signal(signal.SIGINT)
        _, errors = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == 130, errors[-3000:]
    assert "interrupted" in errors
    assert_stopped(first_line)


sent_keys = st.dictionaries(st.text("abc", min_size=1, max_size=3), st.floats(0, 100), max_size=12)


@given(sent_keys, st.data())
def test_lost_counts_acknowledged_messages_never_received(sent, data):
    tally = bench_module().tally
    keys = sorted(sent)
    acknowledged = set(data.draw(st.lists(st.sampled_from(keys), unique=True)) if keys else [])
    arrived = data.draw(st.lists(st.sampled_from(keys), unique=True)) if keys else []
    arrivals = {key: sent[key] + data.draw(st.floats(0, 10)) for key in arrived}
    figures = tally(sent, acknowledged, arrivals)
    assert figures["sent"] == len(sent) and figures["acknowledged"] == len(acknowledged)
    assert figures["received"] == len(arrivals)
    assert figures["lost"] == len(acknowledged - arrivals.keys())
    if arrivals:
        assert figures["max_ms"] == round(max(arrivals[key] - sent[key] for key in arrivals) * 1000, 2)
        assert figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    else:
        assert figures["p50_ms"] is figures["max_ms"] is None
