"""Group commit: one writer thread stores the records of many requests in one
transaction, then answers all of them.

Requests hand their record and a waiter (an ``asyncio.Future`` or a
``concurrent.futures.Future``) to a queue. The writer takes everything that
queued up while the previous commit was flushing, appends it in one
transaction and only after the commit settles the waiters. The writer is a
thread of its own: the sqlite3 and psycopg drivers release the GIL while the
disk flushes, so requests keep being verified and parsed meanwhile.

The same thread runs other write jobs (projection, handler bookkeeping)
between batches, so that SQLite sees a single writer per process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection

from tidings.receiver.answers import BUSY, QUARANTINED, STORED, Answer
from tidings.receiver.log import EVENT, EventLog, Record

logger = logging.getLogger("tidings.receiver")

T = TypeVar("T")
Waiter = asyncio.Future | concurrent.futures.Future

_STOP = object()
CHECKPOINT_INTERVAL = 1.0  # seconds between looks at whether to checkpoint
CHECKPOINT_RECORDS = 2500  # records committed by this writer since its last checkpoint: about 1,000 WAL pages


class _Job:
    __slots__ = ("function", "future")

    def __init__(self, function: Callable[[Connection], Any]) -> None:
        self.function = function
        self.future: concurrent.futures.Future = concurrent.futures.Future()


class GroupCommitter:
    """The one writer of an ``EventLog`` in this process."""

    def __init__(self, log: EventLog, *, max_batch: int = 2000, linger: float = 0.002) -> None:
        self.log = log
        self.max_batch = max_batch
        self.linger = linger
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._stopped = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._commit_listeners: list[Callable[[int], None]] = []
        # For metrics and tests: commits of request records, records, seconds spent committing.
        self.batches = 0
        self.records = 0
        self.commit_seconds = 0.0
        self.last_commit_at = 0.0  # time.monotonic() of the last commit of records

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="tidings-receiver-writer", daemon=True)
                self._thread.start()
                if self.log.is_sqlite:
                    self._checkpointer = threading.Thread(
                        target=self._checkpoint_now_and_then, name="tidings-receiver-checkpoint", daemon=True
                    )
                    self._checkpointer.start()

    def _checkpoint_now_and_then(self) -> None:
        # Only after enough new records: a checkpoint flushes the database file,
        # and every flush on the disk delays the commits that requests wait for.
        checkpointed = last_look = 0
        while not self._stopped.wait(CHECKPOINT_INTERVAL):
            records = self.records
            enough = records - checkpointed >= CHECKPOINT_RECORDS
            quiet_with_rest = records != checkpointed and records == last_look  # nothing came in for a second
            last_look = records
            if not (enough or quiet_with_rest):
                continue
            try:
                self.log.checkpoint()
                checkpointed = records
            except Exception:  # a busy or failing checkpoint is retried at the next interval
                logger.exception("checkpointing the SQLite log failed")

    def close(self, timeout: float = 30.0) -> None:
        """Store what is queued, then stop the writer."""
        with self._start_lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)
        self._stopped.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def add_commit_listener(self, listener: Callable[[int], None]) -> None:
        """``listener(count)`` is called from the writer thread after each commit of records."""
        self._commit_listeners.append(listener)

    # ---------------------------------------------------------------- work

    def submit(self, record: Record, waiter: Waiter) -> None:
        """Queue ``record``; ``waiter`` gets the answer once it is committed (or ``BUSY``)."""
        self._queue.put((record, waiter))

    def run(self, function: Callable[[Connection], T]) -> concurrent.futures.Future:
        """Run ``function(conn)`` in a write transaction of the writer thread."""
        job = _Job(function)
        if self._closed:
            job.future.set_exception(RuntimeError("the receiver's writer is closed"))
            return job.future
        self.start()
        self._queue.put(job)
        return job.future

    def _run(self) -> None:
        get, get_nowait, empty = self._queue.get, self._queue.get_nowait, queue.Empty
        stopping = False
        while not stopping:
            batch = [get()]
            # Linger a moment for more, asleep: each commit costs a flush and a
            # few hundred microseconds of CPU, whatever its size, and waking up
            # for every record that arrives would cost a GIL hand-off each.
            if self.linger:
                time.sleep(self.linger)
            while len(batch) < self.max_batch:
                try:
                    batch.append(get_nowait())
                except empty:
                    break
            writes, jobs = [], []
            for item in batch:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, _Job):
                    jobs.append(item)
                else:
                    writes.append(item)
            if writes:
                self._commit(writes)
            for job in jobs:
                self._run_job(job)

    def _commit(self, writes: list[tuple[Record, Waiter]]) -> None:
        started = time.perf_counter()
        try:
            with self.log.transaction() as conn:
                self.log.append(conn, [record for record, _ in writes])
        except Exception:
            logger.exception("storing %d received events failed; answering 503", len(writes))
            settle([(waiter, BUSY) for _, waiter in writes])
            return
        self.batches += 1
        self.records += len(writes)
        self.commit_seconds += time.perf_counter() - started
        self.last_commit_at = time.monotonic()
        settle([(waiter, STORED if record.kind == EVENT else QUARANTINED) for record, waiter in writes])
        for listener in self._commit_listeners:
            try:
                listener(len(writes))
            except Exception:  # a listener must not stop the writer
                logger.exception("a commit listener failed")

    def _run_job(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            with self.log.transaction() as conn:
                result = job.function(conn)
        except BaseException as exc:  # handed to whoever waits for the job
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)


def settle(pairs: list[tuple[Waiter, Answer]]) -> None:
    """Give each waiter its answer: one thread-safe call per event loop, direct for the others."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Answer]]] = {}
    for waiter, answer in pairs:
        if isinstance(waiter, asyncio.Future):
            by_loop.setdefault(waiter.get_loop(), []).append((waiter, answer))
        elif not waiter.done():
            try:
                waiter.set_result(answer)
            except concurrent.futures.InvalidStateError:  # cancelled meanwhile
                pass
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_in_loop, items)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


def _settle_in_loop(items: list[tuple[asyncio.Future, Answer]]) -> None:
    for future, answer in items:
        if not future.done():  # an expired request already got 503
            future.set_result(answer)
