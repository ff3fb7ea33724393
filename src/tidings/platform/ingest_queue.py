"""Group commit for custom-channel ingestion: the messages of many requests
are stored, with their events and deliveries, in one transaction.

A request hands its message to the queue and waits; the writer takes
everything that queued up while the previous transaction was being written,
ingests it with ``ingest_messages`` (about a dozen statements for the whole
batch) and answers every request after the commit. So a burst of messages
costs one commit (one disk flush) and a few statements instead of a dozen
statements and a commit each, and a message is answered only once it is
durably stored. Batches adapt to the load without waiting: a lone message is
written at once, and what arrives during a write makes the next batch. On
PostgreSQL a backlog (``OVERLAP_AT`` messages waiting) starts a second batch
beside the one being written (``may_start_batch``).

On SQLite the batch is written on a synchronous connection, in a thread of
the queue's own, holding the process's write lock for the file
(``store.engine.write_lock``): through the async driver each of its dozen
statements cost two thread switches, and with them most of a message's
time to its subscriber (``bench/e2e.py``). On PostgreSQL it goes through the
async driver.

On SQLite, when this process delivers too (``tidings serve``), the same
transaction also claims the due deliveries for its dispatcher, which sends
them once it commits (``Dispatcher.take``): a message's delivery leaves
without waiting for the writer's lock, and for a claim, of its own
(``bench/e2e.py``). What it cannot claim (no room), the commit's wake-up
leaves to the dispatcher's own cycle.

Refusals are decided before any write, so a refused message leaves the
others of its batch untouched. Should a batch fail for another reason (a
database error), each of its messages is tried again in a transaction of its
own, so that one bad message fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.contract.signing import Signer
from tidings.platform.deliveries import wakeup
from tidings.platform.deliveries.cycle import CycleClaim, claim_on_sqlite
from tidings.platform.ingestion import ChannelMessage, IngestResult, Outcome, ingest_batch, ingest_messages
from tidings.platform.sodium import sodium_signer
from tidings.store.engine import create_sync_engine, url_of, write_lock

log = logging.getLogger(__name__)

POSTGRES_WRITERS = 2
# Messages waiting before a second batch starts beside the first: at a steady
# few hundred a second one writer answers sooner (bench/e2e.py); a backlog
# this deep goes faster with two (bench/ingest.py).
OVERLAP_AT = 16


def may_start_batch(writing: int, waiting: int, writers: int) -> bool:
    """Whether the messages ``waiting`` go out now, with ``writing`` batches
    being written (pure).

    >>> may_start_batch(0, 1, 2), may_start_batch(1, 3, 2), may_start_batch(1, 16, 2), may_start_batch(1, 99, 1)
    (True, False, True, False)
    """
    return waiting > 0 and (writing == 0 or (writing < writers and waiting >= OVERLAP_AT))


class HandOff(Protocol):
    """This process's dispatcher, as a writer that claims for it sees it (``Dispatcher``)."""

    worker_id: str

    def room_to_hand_off(self) -> int: ...

    def take(self, claim: CycleClaim) -> None: ...


@dataclass
class _Pending:
    message: ChannelMessage
    answer: asyncio.Future = field(repr=False)


class IngestQueue:
    """The one writer of ingested messages in this process."""

    def __init__(self, engine: AsyncEngine, signer: Signer, *, max_batch: int = 500,
                 hand_off: HandOff | None = None) -> None:
        self.engine = engine
        self.hand_off = hand_off  # this process's dispatcher, if it has one
        # The same signatures (Ed25519 is deterministic) for less than half the CPU: each event signs once.
        self.signer = sodium_signer(signer)
        self.max_batch = max_batch
        self._waiting: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.batches = 0  # transactions committed, for tests and metrics
        # SQLite: the file's synchronous engine and the thread that writes with it, made on first use.
        self._sync_engine: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None

    @property
    def writers(self) -> int:
        """Batches written at once: SQLite has one writer; on PostgreSQL a second
        transaction goes on while the first waits for its round trips
        (bench/ingest.py). Concurrent writers are safe there, as across processes."""
        return 1 if self.engine.dialect.name == "sqlite" else POSTGRES_WRITERS

    async def ingest(self, message: ChannelMessage) -> IngestResult:
        """Stores the message (or finds its duplicate); returns once committed.

        Raises ``MessagingError`` (or a subclass) for a refusal.
        """
        return await self.submit(message)

    def submit(self, message: ChannelMessage) -> asyncio.Future:
        """``ingest`` without a coroutine: the future of the message's outcome,
        for a caller that waits with a callback (the API's fast path). Call
        it from the event loop's thread."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            # First use, or a new event loop (a test client may run each request in its own).
            self._wake = asyncio.Event()
            self._waiting = [pending for pending in self._waiting if pending.answer.get_loop() is loop]
            self._task = loop.create_task(self._run(), name="ingest-queue")
        answer = loop.create_future()
        self._waiting.append(_Pending(message, answer))
        self._wake.set()
        return answer

    async def stop(self) -> None:
        for pending in self._waiting:
            pending.answer.cancel()
        self._waiting = []
        if self._task is not None:
            if self._task.get_loop() is asyncio.get_running_loop():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.shutdown)
            self._thread = None
        if self._sync_engine is not None:
            self._sync_engine.dispose()
            self._sync_engine = None

    async def _run(self) -> None:
        writing: set[asyncio.Task] = set()
        try:
            while True:
                if not may_start_batch(len(writing), len(self._waiting), self.writers):
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                batch, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
                task = asyncio.create_task(self._write_and_answer(batch))
                writing.add(task)
                task.add_done_callback(lambda done: (writing.discard(done), self._wake.set()))
        finally:  # cancelled (the process stops): the batches being written stop too
            for task in writing:
                task.cancel()
            await asyncio.gather(*writing, return_exceptions=True)

    async def _write_and_answer(self, batch: list[_Pending]) -> None:
        try:
            outcomes = await self._write([pending.message for pending in batch])
        except BaseException:  # cancelled (the process stops): no request waits forever
            for pending in batch:
                if not pending.answer.done():
                    pending.answer.cancel()
            raise
        for pending, outcome in zip(batch, outcomes):
            if pending.answer.done():  # the request went away meanwhile
                continue
            if isinstance(outcome, Exception):  # a refusal (MessagingError) or a failure
                pending.answer.set_exception(outcome)
            else:
                pending.answer.set_result(outcome)

    async def _write(self, batch: list[ChannelMessage]) -> list[Outcome | Exception]:
        try:
            outcomes: list[Outcome | Exception] = list(await self._write_batch(batch))
        except Exception as error:
            if len(batch) == 1:
                return [error]
            log.warning("a batch of %d messages failed; ingesting them one by one", len(batch), exc_info=True)
            return [(await self._write([message]))[0] for message in batch]
        self.batches += 1
        return outcomes

    async def _write_batch(self, batch: list[ChannelMessage]) -> list[Outcome]:
        if self.engine.dialect.name != "sqlite":
            async with self.engine.begin() as conn:
                return await ingest_messages(conn, self.signer, batch)
        if self._sync_engine is None:
            self._sync_engine = create_sync_engine(url_of(self.engine))
            wakeup.watch(self._sync_engine)
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tidings-ingest")
        hand_off = self.hand_off
        async with write_lock(self.engine):
            room = hand_off.room_to_hand_off() if hand_off is not None else 0
            outcomes, claim = await asyncio.get_running_loop().run_in_executor(
                self._thread, self._write_in_thread, batch, hand_off.worker_id if room else None, room)
        if claim is not None:
            hand_off.take(claim)
        return outcomes

    def _write_in_thread(self, batch: list[ChannelMessage], worker_id: str | None,
                         room: int) -> tuple[list[Outcome], CycleClaim | None]:
        claim = None
        with self._sync_engine.begin() as conn:
            outcomes = ingest_batch(conn, self.signer, batch)
            if worker_id is not None and wakeup.wrote_deliveries(conn):
                claim = claim_on_sqlite(conn.connection.driver_connection, worker_id=worker_id, now=time.time(),
                                        limit=room)
                if len(claim.claimed) < room:  # every due delivery is claimed: nobody else needs waking
                    wakeup.forget_deliveries_written(conn)
        return outcomes, claim
