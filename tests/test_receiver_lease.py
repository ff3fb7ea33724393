"""The receiver's background lease (``receiver/lease.py``): one holder at a
time per database, and another process takes it over when the holder
releases it or dies. On SQLite a ``flock`` beside the database, on
PostgreSQL a session advisory lock: both engines, leases in this process
and in real processes of their own."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from tidings.receiver.lease import BackgroundLease

pytestmark = pytest.mark.timeout(60)

TAKEOVER_BOUND = 10.0  # seconds for another process to hold the lease once its holder is gone
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        time.sleep(0.02)
    return value


class LeaseHolder:
    """A process of its own that tries for the lease (``tests/lease_holder.py``); its lines are kept."""

    def __init__(self, db_url: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "tests.lease_holder", db_url], cwd=ROOT,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.strip())

    @property
    def holds(self) -> bool:
        return "held" in self.lines and "released" not in self.lines and self.process.poll() is None

    def refusals(self) -> int:
        return self.lines.count("refused")

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)  # no release: the lease must go with the process
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()  # it releases the lease and leaves
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(5)

    def why_not(self) -> str:
        return f"lines {self.lines[-3:]}, exit {self.process.poll()}, stderr {self.process.stderr.read() if self.process.poll() is not None else ''}"


def test_one_holder_at_a_time_and_a_released_lease_is_taken_over(db_url):
    """Killed by the mutations "lease granted to two holders" and "a released lease is kept"."""
    first, second = BackgroundLease(db_url), BackgroundLease(db_url)
    try:
        assert first.try_acquire() and first.held
        assert first.try_acquire()  # asking again while holding it keeps it
        for _ in range(3):
            assert not second.try_acquire() and not second.held
        first.release()
        assert not first.held
        wait_until(second.try_acquire, TAKEOVER_BOUND, "the released lease was not taken over")
        assert second.held and not first.try_acquire()
    finally:
        first.release()
        second.release()


def test_two_processes_exclude_each_other_and_the_survivor_takes_over_from_a_killed_holder(db_url):
    """Two receivers' worth of processes try for the lease at once: one holds it,
    the other keeps being refused; killed with SIGKILL, the holder's lease goes
    to the other within the bound. Killed by the mutation "lease granted to two holders"."""
    processes = [LeaseHolder(db_url), LeaseHolder(db_url)]
    try:
        holder = wait_until(lambda: next((p for p in processes if p.holds), None), TAKEOVER_BOUND,
                            "neither process took the lease")
        other = processes[1 - processes.index(holder)]
        refused_before = other.refusals()
        wait_until(lambda: other.refusals() >= refused_before + 10 or other.holds or other.process.poll() is not None,
                   TAKEOVER_BOUND, "the other process stopped trying")
        assert not other.holds, "both processes hold the lease"
        assert holder.holds
        holder.kill()
        killed_at = time.monotonic()
        wait_until(lambda: other.holds or other.process.poll() is not None, TAKEOVER_BOUND,
                   "the lease of the killed holder was not taken over")
        assert other.holds, other.why_not()
        assert time.monotonic() - killed_at < TAKEOVER_BOUND
    finally:
        for process in processes:
            process.stop()


def test_a_process_that_stops_hands_the_lease_to_this_one(db_url):
    holder = LeaseHolder(db_url)
    mine = BackgroundLease(db_url)
    try:
        wait_until(lambda: holder.holds or holder.process.poll() is not None, TAKEOVER_BOUND, "the process took no lease")
        assert holder.holds, holder.why_not()
        assert not mine.try_acquire()
        holder.stop()
        assert "released" in holder.lines
        wait_until(mine.try_acquire, TAKEOVER_BOUND, "the stopped holder's lease was not taken over")
    finally:
        holder.stop()
        mine.release()


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
def test_an_in_memory_database_has_one_process_only_so_every_lease_holds_it(url):
    first, second = BackgroundLease(url), BackgroundLease(url)
    standard = {descriptor: os.dup(descriptor) for descriptor in (0, 1, 2)}
    try:
        assert first.try_acquire() is True and second.try_acquire() is True
        assert first.held and second.held
        first.release()
        second.release()
        for descriptor in standard:
            os.fstat(descriptor)  # releasing closed no descriptor of this process (there is no file to close)
        assert not first.held and not second.held
    finally:
        for descriptor, copy in standard.items():
            os.dup2(copy, descriptor)
            os.close(copy)


def test_a_database_named_relative_to_the_working_directory_is_locked_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = BackgroundLease("sqlite:///receiver.db"), BackgroundLease("sqlite:///receiver.db")
    try:
        assert first.try_acquire() and not second.try_acquire()
        assert (tmp_path / "receiver.db.background-lease").exists()
    finally:
        first.release()
        second.release()


def test_the_sqlite_lease_file_is_private_to_its_owner(tmp_path):
    lease = BackgroundLease(f"sqlite:///{tmp_path / 'receiver.db'}")
    try:
        assert lease.try_acquire()
        (lease_file,) = tmp_path.glob("*.background-lease")
        assert stat.S_IMODE(lease_file.stat().st_mode) == 0o600
    finally:
        lease.release()


def test_the_postgresql_lease_holds_no_transaction_open(postgres_url):
    """A session lock, not a transaction: an idle transaction would hold back vacuum for as long as the lease."""
    import psycopg

    lease = BackgroundLease(postgres_url)
    try:
        assert lease.try_acquire()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            states = [row[0] for row in conn.execute(
                "SELECT state FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'")]
        assert states == ["idle"]
    finally:
        lease.release()


def test_holding_the_lease_does_not_stop_other_sessions_appending_to_the_log(postgres_url):
    """The lease and the log's append lock are two advisory locks: a lease holder never blocks the
    request workers' commits. Killed by giving the lease the append lock's key."""
    from sqlalchemy import text

    from tidings.receiver.log import EventLog

    log = EventLog(postgres_url)
    log.create_schema()
    lease = BackgroundLease(postgres_url)
    try:
        assert lease.try_acquire()
        with log.transaction() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '2s'"))  # a wait for the lease's lock fails, not hangs
            log.lock_appends(conn)
    finally:
        lease.release()
        log.dispose()


def test_a_process_without_standard_input_releases_its_lease_file_too(tmp_path):
    """With descriptor 0 closed, the lease file gets descriptor 0: releasing must close it all the same."""
    script = (
        "import os, sys\n"
        "from tidings.receiver.lease import BackgroundLease\n"
        "os.close(0)\n"
        "first = BackgroundLease(sys.argv[1])\n"
        "assert first.try_acquire()\n"
        "first.release()\n"
        "print(BackgroundLease(sys.argv[1]).try_acquire())\n")
    done = subprocess.run([sys.executable, "-c", script, f"sqlite:///{tmp_path / 'receiver.db'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "True", done.stderr
