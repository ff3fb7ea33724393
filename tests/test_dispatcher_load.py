"""No loss under load: ``tidings worker`` processes killed with SIGKILL, and
three workers sharing one PostgreSQL, against the bench sink on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.dispatcher_support import bulk_pending, new_signer
from tidings.contract.signing import private_key_whsk
from tidings.platform.sealed import new_key
from tidings.store.engine import create_sync_engine
from tidings.store.platform_tables import attempts, deliveries

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
SINK = ROOT / "bench" / "sink.py"


class Sink:
    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, str(SINK), "--track-ids"], stdout=subprocess.PIPE, text=True)
        self.port = int(self.process.stdout.readline().split()[-1])

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stats", timeout=10) as answer:
            return json.loads(answer.read())

    def ids(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_ids", timeout=10) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def start_worker(db_url: str, key: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "tidings.cli.worker", "--db", db_url, "--signing-key", key,
               "--allow-private-targets", "--allow-http", "--no-migrate", "--heartbeat-interval", "0.2",
               "--stale-after", "1", "--retry-base", "0.2", *extra]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "TIDINGS_SECRETS_KEY": new_key()})


def counts(db_url: str) -> dict[str, int]:
    engine = create_sync_engine(db_url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(select(deliveries.c.status, func.count()).group_by(deliveries.c.status)).all())
    finally:
        engine.dispose()


def webhook_ids(db_url: str) -> set[str]:
    engine = create_sync_engine(db_url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(select(deliveries.c.webhook_id)).scalars())
    finally:
        engine.dispose()


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def test_a_worker_killed_mid_load_loses_nothing_once_another_takes_over(sqlite_url):
    signer = new_signer()
    key = private_key_whsk(signer.private_key)
    sink = Sink()
    try:
        bulk_pending(sqlite_url, sink.url(), 2000, signer)
        first = start_worker(sqlite_url, key, "--concurrency", "16", "--batch-size", "32")
        wait_until(lambda: sink.stats()["total"] >= 300, 30, "the first worker sends")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        received_at_kill = sink.stats()["unique_ids"]
        in_flight = counts(sqlite_url)
        assert received_at_kill < 2000, "the kill came too late to test anything"
        assert in_flight.get("delivering", 0) > 0  # the killed worker held a lease

        second = start_worker(sqlite_url, key)
        try:
            wait_until(lambda: counts(sqlite_url) == {"delivered": 2000}, 60, "every delivery is delivered")
        finally:
            second.terminate()
            assert second.wait(20) == 0, second.stderr.read()[-2000:]
        received = sink.ids()
        assert set(received) == webhook_ids(sqlite_url)  # every event at least once
        assert len(received) == 2000
    finally:
        sink.stop()


def test_three_workers_on_postgresql_deliver_20000_events_once_each(postgres_url):
    signer = new_signer()
    key = private_key_whsk(signer.private_key)
    sink = Sink()
    workers = []
    try:
        bulk_pending(postgres_url, sink.url(), 20_000, signer)
        started = time.monotonic()
        workers = [start_worker(postgres_url, key) for _ in range(3)]
        wait_until(lambda: counts(postgres_url) == {"delivered": 20_000}, 120, "every delivery is delivered")
        elapsed = time.monotonic() - started
        for worker in workers:
            worker.terminate()
        for worker in workers:
            assert worker.wait(20) == 0, worker.stderr.read()[-2000:]
        stats = sink.stats()
        assert stats["unique_ids"] == 20_000 and stats["duplicates"] == 0 and stats["total"] == 20_000
        assert set(sink.ids()) == webhook_ids(postgres_url)
        engine = create_sync_engine(postgres_url)
        try:
            with engine.connect() as conn:
                per_worker = dict(conn.execute(select(attempts.c.worker_id, func.count())
                                               .group_by(attempts.c.worker_id)).all())
        finally:
            engine.dispose()
        assert sum(per_worker.values()) == 20_000
        assert len(per_worker) == 3, per_worker  # all three took part
        print(f"3 workers delivered 20,000 in {elapsed:.1f} s: {per_worker}")
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        sink.stop()
