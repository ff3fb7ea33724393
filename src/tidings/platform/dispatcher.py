"""The dispatcher: claims due deliveries, posts them, records every attempt
and schedules what comes next.

Three loops share one process:

- the cycle loop: one write transaction at a time (``deliveries.cycle``)
  records the results gathered since the last one and claims due
  deliveries when there is room, and hands each claimed delivery to its
  endpoint (scheme, host and port of the URL);
- each endpoint has its own queue, at most ``max_per_endpoint`` requests in
  flight and a circuit breaker, so that a slow or dead endpoint holds at
  most its own share of the dispatcher; deliveries claimed beyond what its
  queue may hold are handed back for a little later, unsent;
- the heartbeat loop proves the worker alive, hands back the work of
  workers whose heartbeat stopped, and purges deleted configurations.

Delivery is at least once: a worker that dies between a request and its
record lets another worker send it again. Each attempt is signed here, with
its own timestamp (``transport.sign_and_post``), and posted by the
``LeanTransport``. The choices that make the cycle fast (claiming ahead, one
transaction per cycle, SQLite's statements in its driver's thread) are
measured by ``bench/dispatch.py`` and ``bench/ordering.py`` (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets as _random
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings.contract.signing import Signer
from tidings.platform import configurations
from tidings.platform.circuit import CircuitBreaker, CircuitPolicy, CircuitState
from tidings.platform.deliveries import actions, leases, wakeup
from tidings.platform.deliveries.cycle import (
    AttemptRow,
    CycleClaim,
    FinishedDelivery,
    ReleaseRow,
    ResultRow,
    cycle_for,
)
from tidings.platform.deliveries.statuses import DELIVERED, FAILED, HELD, PENDING, QUEUED
from tidings.platform.retry import AttemptResult, Decision, ErrorKind, Outcome, RetryPolicy, decide
from tidings.platform.settings import DeliverySettings
from tidings.platform.sodium import sodium_signer
from tidings.platform.transport import Answer, LeanTransport, Outgoing, TargetPolicy, Transport, sign_and_post

__all__ = ["Dispatcher", "DispatcherStats", "OnFinished", "new_worker_id"]

log = logging.getLogger("tidings.dispatcher")


# Called once per cycle, inside the transaction that records the deliveries that ended.
OnFinished = Callable[[AsyncConnection, Sequence[FinishedDelivery]], Awaitable[None]]

NO_ANSWER = (ErrorKind.TIMEOUT, ErrorKind.CONNECTION)
# Enum members as plain names: in Python 3.11 reading ``CircuitState.CLOSED`` costs
# ten times a global, and these are read for every delivery.
_CLOSED = CircuitState.CLOSED
_DELIVERED = Outcome.DELIVERED
_FAILED = Outcome.FAILED
_RETRY = Outcome.RETRY
RATE_WINDOW = 0.25  # seconds; an endpoint's pace is measured over one to two of these
RUNNER_IDLE = 5.0  # seconds an endpoint's runners wait for more jobs before they end
PURGE_INTERVAL = 5.0  # seconds between looks for deleted configurations to purge
CLAIM_AHEAD = 8  # batches claimed beyond the requests in flight (see Dispatcher.capacity; bench/dispatch.py)


def may_leave_due(*, releases: int, retries: int, unapplied: int, wrote_deliveries: bool) -> bool:
    """Whether a cycle's writes may have left deliveries pending (pure): its
    hand-backs and retries, results it could not apply (the delivery was
    taken back meanwhile), and deliveries written beside them (``on_finished``
    records events). Deliveries that ended leave nothing due, so no claim
    follows them (bench/e2e.py: one transaction less per message at a trickle).

    >>> may_leave_due(releases=0, retries=0, unapplied=0, wrote_deliveries=False)
    False
    >>> may_leave_due(releases=0, retries=1, unapplied=0, wrote_deliveries=False)
    True
    """
    return bool(releases or retries or unapplied or wrote_deliveries)


def new_worker_id() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{_random.token_hex(3)}"


def endpoint_key(url: str) -> str:
    """Requests to one scheme, host and port share one endpoint's limits and circuit."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{parts.port or ''}"
    except ValueError:
        return url


@dataclass
class DispatcherStats:
    claimed: int = 0
    taken: int = 0  # of those, claimed for it by a writer of its process (``take``)
    attempts: int = 0
    delivered: int = 0
    failed: int = 0
    retried: int = 0
    handed_back: int = 0  # claimed, then released unsent (endpoint saturated, configuration paused)
    # Results not applied: another worker owned the delivery by then, it was
    # deleted, or its configuration was (never retried).
    dropped: int = 0
    flushes: int = 0


@dataclass(slots=True)
class _Job:
    row: Any  # as claimed
    outgoing: Outgoing
    # Ordered delivery: the next delivery of the same conversation, claimed with
    # this one and sent once this one is delivered (see tidings.platform.deliveries).
    follower: _Job | None = None


@dataclass(slots=True)
class _Result:
    job: _Job
    answer: Answer
    headers: dict[str, str]
    decision: Decision


@dataclass(slots=True)
class _Endpoint:
    key: str
    breaker: CircuitBreaker
    queue: deque = field(default_factory=deque)
    runners: int = 0  # tasks sending to this endpoint, the idle ones included
    # Runners whose queue ran dry wait here for more (True) or for the word to leave
    # (False): starting a task for each batch cost more than the rest of the bookkeeping.
    idle_runners: int = 0
    more: asyncio.Future | None = None
    last_job_at: float = 0.0
    # Completions in the current and the previous window, for rate().
    window_start: float = 0.0
    current: int = 0
    previous: int = 0
    seen_since: float | None = None  # when the first job came

    def note_completion(self, now: float) -> None:
        self._rotate(now)
        self.current += 1

    def went_idle(self) -> None:
        """Nothing queued and nothing in flight: the pace measured so far says
        nothing of the next burst (an idle spell would read as a pace of zero
        and hand that burst back for a second, ``bench/e2e.py``), so it is
        measured afresh from the next job."""
        self.seen_since = None
        self.previous = self.current = 0

    def rate(self, now: float) -> float | None:
        """Completions per second over the last one to two windows; ``None`` before
        a window has passed since the first job (nothing is known yet)."""
        if self.seen_since is None or now - self.seen_since < RATE_WINDOW:
            return None
        self._rotate(now)
        return (self.previous + self.current) / (RATE_WINDOW + (now - self.window_start))

    def _rotate(self, now: float) -> None:
        elapsed = now - self.window_start
        if elapsed >= 2 * RATE_WINDOW:
            self.previous, self.current, self.window_start = 0, 0, now
        elif elapsed >= RATE_WINDOW:
            self.previous, self.current, self.window_start = self.current, 0, self.window_start + RATE_WINDOW


class Dispatcher:
    """Delivers every due delivery of the database, at least once.

    ``on_finished(conn, finished)`` runs once per cycle, inside the
    transaction that records the deliveries that ended in it (delivered or
    finally failed). ``concurrency`` bounds the requests in flight over all
    endpoints; ``settings.max_per_endpoint`` those to one endpoint.
    """

    def __init__(self, engine: AsyncEngine, signer: Signer, settings: DeliverySettings | None = None,
                 worker_id: str | None = None, on_finished: OnFinished | None = None, *,
                 transport: Transport | None = None, concurrency: int = 256,
                 circuit: CircuitPolicy | None = None, poll_interval: float | None = None,
                 flush_interval: float = 0.02, queue_budget: float = 2.0, hand_back_delay: float = 1.0) -> None:
        self.engine = engine
        self.signer = sodium_signer(signer)  # the same signatures, for less than half the CPU
        self.settings = settings or DeliverySettings()
        self.worker_id = worker_id or new_worker_id()
        self.on_finished = on_finished
        self.cycle = cycle_for(engine)
        self.retry_policy = RetryPolicy.from_settings(self.settings)
        self.target_policy = TargetPolicy.from_settings(self.settings)
        self.circuit_policy = circuit or CircuitPolicy()
        self.concurrency = max(1, concurrency)
        self.per_endpoint = max(1, min(self.settings.max_per_endpoint, self.concurrency))
        self.batch_size = max(1, self.settings.batch_size)
        # Claimed and not yet sent, over all endpoints: enough to keep every
        # connection busy while the next cycle runs (with room for one batch
        # only, the rate could never pass batch_size / cycle time).
        self.capacity = self.concurrency + CLAIM_AHEAD * self.batch_size
        # A claim waits until this much room is free; a runner wakes the cycle loop when it is.
        self._low_water = max(1, min(self.batch_size, self.concurrency) // 4)
        self._room_at = self.capacity - self._low_water
        # An endpoint keeps what it can send within ``queue_budget`` seconds at
        # its recent pace (at least ``per_endpoint``); the rest goes back to the
        # database for later. So a slow or dead endpoint holds a small share.
        self.queue_budget = queue_budget
        self.poll_interval = self.settings.poll_interval if poll_interval is None else poll_interval
        self.flush_interval = flush_interval
        self.hand_back_delay = hand_back_delay
        self.stats = DispatcherStats()
        self._transport = transport
        self._owns_transport = transport is None
        self._endpoints: dict[str, _Endpoint] = {}
        self._endpoint_keys: dict[str, str] = {}  # URL -> endpoint key
        self._runner_tasks: set[asyncio.Task] = set()
        self._in_process = 0  # claimed and not yet sent (queued or in flight)
        self._results: list[_Result] = []
        self._first_result_at = 0.0
        self._releases: list[ReleaseRow] = []
        self._drops: list[int] = []  # claimed deliveries of deleted configurations
        self._next_claim_at = 0.0
        self._nothing_due = False  # the last claim found nothing due, and nothing will be
        self._stopping = False
        self._signal = asyncio.Event()  # something changed: the cycle loop looks again
        self._delivered_decisions: dict[int, Decision] = {}  # by 2xx status
        self._saturated: set[str] = set()  # endpoints that recently had deliveries handed back
        self._next_purge_at = 0.0
        self._taking = False  # registered and delivering: writers of this process may hand it deliveries

    # ------------------------------------------------------------ running

    def room_to_hand_off(self) -> int:
        """How many due deliveries a writer of this process may claim for this
        dispatcher in its own transaction (``take``): none unless it is
        delivering, nor while it has less room than it claims for itself."""
        if not self._taking or self._stopping:
            return 0
        room = min(self.batch_size, self.capacity - self._in_process)
        return room if room >= self._low_water else 0

    def take(self, claim: CycleClaim) -> None:
        """Sends the deliveries a writer of this process claimed for this
        dispatcher (``room_to_hand_off``) in a transaction that committed: a
        message's delivery leaves without waiting for a cycle of its own."""
        if not claim.claimed:
            return
        self.stats.claimed += len(claim.claimed)
        self.stats.taken += len(claim.claimed)
        self._route(claim.claimed, claim.bodies, claim.configs, time.time())
        self._signal.set()  # a configuration deleted meanwhile leaves drops to write

    def wake(self) -> None:
        """New deliveries were written: look for them now rather than at the next poll."""
        self._next_claim_at = 0.0
        self._signal.set()

    async def run(self, stop_event: asyncio.Event) -> None:
        """Deliver until ``stop_event`` is set; then finish what is in flight and leave cleanly."""
        await self._serve(stop_event, until_idle=False)

    async def run_until_idle(self, stop_event: asyncio.Event | None = None) -> None:
        """Deliver until nothing is pending, being sent, or waiting to be written
        (scheduled retries included, however far off), or until ``stop_event``
        is set; for tests and one-shot runs."""
        await self._serve(stop_event, until_idle=True)

    async def _serve(self, stop_event: asyncio.Event | None, *, until_idle: bool) -> None:
        self._stopping = False
        if self._transport is None:
            self._transport = LeanTransport(self.target_policy, attempt_timeout=self.settings.attempt_timeout,
                                            concurrency=self.concurrency, per_endpoint=self.per_endpoint)
        await self._register()
        try:
            async with self.cycle.wake_ups(self.wake):
                await self._deliver(stop_event, until_idle=until_idle)
        finally:
            await self._unregister()
            await self.cycle.close()
            if self._owns_transport and self._transport is not None:
                await self._transport.close()
                self._transport = None

    async def _deliver(self, stop_event: asyncio.Event | None, *, until_idle: bool) -> None:
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="dispatcher-heartbeat")
        cycles = asyncio.create_task(self._cycle_loop(until_idle=until_idle), name="dispatcher-cycles")
        watcher = asyncio.create_task(stop_event.wait()) if stop_event is not None else None
        self._taking = True
        try:
            await asyncio.wait({cycles} | ({watcher} if watcher else set()), return_when=asyncio.FIRST_COMPLETED)
            if not cycles.done():
                self._stop()
                # In-flight requests end within the attempt timeout; their results are then written.
                await asyncio.wait([cycles], timeout=self.settings.attempt_timeout + 30.0)
            cycles.result()  # re-raises a crash
        finally:
            self._taking = False
            self._stop()
            for task in (watcher, cycles, heartbeat):
                if task is not None:
                    await _cancelled(task)

    def _stop(self) -> None:
        """Stop claiming and starting requests; what was claimed and not started goes back."""
        if self._stopping:
            return
        self._stopping = True
        now = time.time()
        for endpoint in self._endpoints.values():
            while endpoint.queue:
                job = endpoint.queue.popleft()
                self._in_process -= 1
                self._hand_back(job.row.id, PENDING, now)
                self._hand_back_followers(job, now)
        self._dismiss_idle_runners()
        self._signal.set()

    # ------------------------------------------------------------ registering

    async def _register(self) -> None:
        now = time.time()
        async with self.cycle.transaction() as conn:
            await leases.register_worker(conn, worker_id=self.worker_id, hostname=socket.gethostname()[:255],
                                         pid=os.getpid(), now=now)
            # A worker id is used by one process at a time: whatever this id holds is from a dead process.
            await leases.hand_back_held_by(conn, worker_id=self.worker_id)
            await leases.reap_stalled(conn, now=now, stale_after=self.settings.stale_after)
            await leases.reap_orphans(conn)

    async def _unregister(self) -> None:
        try:
            async with self.cycle.transaction() as conn:
                await leases.unregister_worker(conn, worker_id=self.worker_id)
        except Exception:  # the heartbeat stops anyway; others reap what is left
            log.exception("worker %s could not unregister", self.worker_id)

    # ------------------------------------------------------------ the cycle: record, then claim

    async def _cycle_loop(self, *, until_idle: bool) -> None:
        """Each cycle is one write transaction: the results gathered since the
        last one, then a claim when there is room. One transaction rather than
        two keeps SQLite's single writer busy with useful work, and the claim
        never waits behind a separate flush."""
        low_water = self._low_water
        failures = 0
        while True:
            now = time.time()
            room = self.capacity - self._in_process
            claim = 0
            if not self._stopping and room >= low_water and now >= self._next_claim_at:
                claim = room
            writes = len(self._results) + len(self._releases) + len(self._drops)
            write_due = writes and (self._stopping or len(self._results) >= self.batch_size
                                    or now - self._first_result_at >= self.flush_interval)
            if claim or write_due:
                if await self._cycle(claim):
                    failures = 0
                else:
                    failures += 1
                    await asyncio.sleep(min(5.0, 0.05 * 2 ** failures))
                continue
            if self._stopping and not writes and not self._runner_tasks:
                return
            if until_idle and self._nothing_due and not writes and not self._in_process:
                return
            waits = [self.poll_interval]
            if room >= low_water and not self._stopping:
                waits.append(self._next_claim_at - now)
            if writes:
                waits.append(self._first_result_at + self.flush_interval - now)
            self._signal.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._signal.wait(), max(0.001, min(waits)))

    async def _cycle(self, claim_limit: int) -> bool:
        """One transaction: write results and hand-backs, then claim up to ``claim_limit``.
        ``False`` if the database refused; the results are kept for the next cycle."""
        results, self._results = self._results, []
        releases, self._releases = self._releases, []
        drops, self._drops = self._drops, []
        now = time.time()
        claim = CycleClaim([], None)
        kept: list[_Result] = []
        dropped = 0
        wrote_deliveries = False
        try:
            async with self.cycle.transaction() as conn:
                promoted = []
                if results or releases or drops:
                    kept, dropped, promoted = await self._record(conn, results, releases, drops, now)
                    wrote_deliveries = wakeup.wrote_deliveries(conn.sync_connection)  # by ``on_finished``
                # Ordered deliveries promoted here were claimed by the same statement; no claim
                # of pending ones follows unless one is due anyway (see _cycle_loop): with
                # ordering, a claim after each promotion found nothing (bench/ordering.py).
                if claim_limit or promoted:
                    claim = await self.cycle.claim(conn, worker_id=self.worker_id, now=now, limit=claim_limit,
                                                   promoted=promoted)
        except Exception:
            log.exception("a dispatcher cycle failed; its results are kept and written again")
            self._results[:0] = results
            self._releases[:0] = releases
            self._drops[:0] = drops
            self._first_result_at = now - self.flush_interval  # write them as soon as the database allows
            return False
        if results or releases or drops:
            self._count(results, kept, dropped)
        if may_leave_due(releases=len(releases), unapplied=len(results) - len(kept), wrote_deliveries=wrote_deliveries,
                         retries=sum(result.decision.outcome is _RETRY for result in results)):
            # Something may be pending again: "nothing due" holds only once a claim
            # after it says so (in this transaction, or in a later one).
            self._nothing_due = False
            if not claim_limit and not self._in_process:
                self._next_claim_at = 0.0  # nothing else to do: find out now
        claimed, due = claim.claimed, claim.due
        self.stats.claimed += len(claimed)
        if claim_limit:
            if len(claimed) >= claim_limit:
                self._next_claim_at = 0.0  # probably more: claim again at once
            else:
                self._next_claim_at = now + self.poll_interval if due is None else min(due, now + self.poll_interval)
            self._nothing_due = not claimed and due is None
        if claimed:
            saturated = self._route(claimed, claim.bodies, claim.configs, now, promoted=len(promoted))
            if saturated * 2 >= len(claimed):
                # Mostly for endpoints that hold all they can: claiming again now would
                # only hand more back. Wait until one of them has room (or a poll).
                self._next_claim_at = max(self._next_claim_at, now + self.poll_interval)
        return True

    async def _record(self, conn: AsyncConnection, results: list[_Result], releases: list[ReleaseRow],
                      drops: list[int], now: float) -> tuple[list[_Result], int, list]:
        """Write attempts and the deliveries' new states; returns the results
        that were applied (this worker still held their delivery, and its
        configuration was not deleted), how many deliveries were dropped, and
        the ordered deliveries whose turn came and that were claimed."""
        finished_at = datetime.now(UTC)
        recorded = await self.cycle.record(
            conn, worker_id=self.worker_id, attempts=[self._attempt_row(result) for result in results],
            results=[self._result_row(result, finished_at) for result in results], releases=releases, drops=drops,
            now=now)
        kept = [result for result in results if result.job.row.id in recorded.applied]
        for result in kept:
            if result.decision.pause_configuration:
                await actions.pause_configuration(conn, config_id=result.job.row.webhook_config_id,
                                                  reason=result.decision.reason, now=finished_at)
        if self.on_finished is not None:
            finished = [FinishedDelivery(result.job.row, result.decision.outcome is _DELIVERED) for result in kept
                        if result.decision.outcome is not _RETRY]
            if finished:
                await self.on_finished(conn, finished)
        return kept, recorded.dropped, recorded.promoted

    def _route(self, claimed: list, bodies: dict[int, bytes], configs: dict[int, Any], now: float, *,
               promoted: int = 0) -> int:
        """Queue claimed deliveries at their endpoints; returns how many were
        handed back because their endpoint was saturated. The first
        ``promoted`` were claimed by promotion: of those, a conversation's
        later delivery follows its earlier one (``_Job.follower``)."""
        saturated = 0
        followers = _followers(claimed[:promoted]) if promoted else {}
        following = {row.id for rows in followers.values() for row in rows}
        sending = {}  # per configuration: (endpoint, queue limit, URL, live secrets, custom headers, paused)
        limits: dict[str, int] = {}  # per endpoint, for this batch (its pace changes slowly)
        for config_id, config in configs.items():
            if config.deleted:
                continue
            endpoint = self._endpoint(config.url, now)
            limit = limits.get(endpoint.key)
            if limit is None:
                limit = limits[endpoint.key] = self._queue_limit(endpoint, now)
            sending[config_id] = (endpoint, limit, config.url, configurations.secrets_now(config, now),
                                  configurations.clear_headers(config), config.paused)
        per_endpoint = self.per_endpoint
        for row in claimed:
            if row.id in following:
                continue  # goes with the delivery before it
            target = sending.get(row.webhook_config_id)
            if target is None:  # its configuration was deleted: never sent, gone with its followers
                self._drops.append(row.id)
                self._drops.extend(follower.id for follower in followers.get(row.id, ()))
                continue
            endpoint, limit, url, secrets, custom_headers, paused = target
            chain = followers.get(row.id, ())
            if self._stopping or paused or len(endpoint.queue) >= limit:
                if self._stopping:
                    self._hand_back(row.id, PENDING, now)
                elif paused:
                    self._hand_back(row.id, HELD, now)
                else:
                    # Saturated: back to the database for a little later, not an attempt.
                    self._hand_back(row.id, PENDING, now + self._hand_back_wait(endpoint, now))
                    self._saturated.add(endpoint.key)
                    saturated += 1
                for follower in chain:  # waits behind it again
                    self._hand_back(follower.id, QUEUED, now)
                continue
            queue = endpoint.queue
            job = last = _job_for(row, url, bodies, secrets, custom_headers)
            for follower in chain:  # each sent after the one before
                last.follower = last = _job_for(follower, url, bodies, secrets, custom_headers)
                self._in_process += 1
            queue.append(job)
            endpoint.last_job_at = now
            self._in_process += 1
            if endpoint.idle_runners:
                more = endpoint.more
                if more is not None and not more.done():
                    more.set_result(True)
            if len(queue) > endpoint.idle_runners and endpoint.runners < per_endpoint:
                endpoint.runners += 1
                task = asyncio.create_task(self._run_endpoint(endpoint))
                self._runner_tasks.add(task)
                task.add_done_callback(self._runner_done)
        return saturated

    def _runner_done(self, task: asyncio.Task) -> None:
        self._runner_tasks.discard(task)
        if self._stopping and not self._runner_tasks:
            self._signal.set()  # the last request in flight is over: the cycle loop may finish

    def _endpoint(self, url: str, now: float) -> _Endpoint:
        key = self._endpoint_keys.get(url)
        if key is None:
            if len(self._endpoint_keys) > 10_000:
                self._endpoint_keys.clear()
            key = self._endpoint_keys[url] = endpoint_key(url)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = _Endpoint(key, CircuitBreaker(self.circuit_policy), window_start=now)
        if endpoint.seen_since is None:
            endpoint.seen_since = endpoint.window_start = now
        return endpoint

    def _queue_limit(self, endpoint: _Endpoint, now: float) -> int:
        rate = endpoint.rate(now)
        if rate is None:  # a new endpoint, for its first window: half of everything at most
            return max(self.per_endpoint, self.capacity // 2)
        return max(self.per_endpoint, int(rate * self.queue_budget))

    def _hand_back_wait(self, endpoint: _Endpoint, now: float) -> float:
        """About when the endpoint will have sent what it holds (jittered)."""
        rate = endpoint.rate(now)
        if rate is None:
            wait = RATE_WINDOW
        else:
            wait = self.hand_back_delay if not rate else min(self.hand_back_delay, len(endpoint.queue) / rate)
        return max(0.05, wait) * (0.75 + 0.5 * random.random())

    def _hand_back(self, delivery_id: int, status: str, when: float) -> None:
        self._releases.append(ReleaseRow(delivery_id, status, when))
        self.stats.handed_back += 1

    def _hand_back_followers(self, job: _Job, now: float) -> None:
        """``job``'s followers (counted in process) will not be sent by this worker now: back ``queued``."""
        for waiting in _chain(job.follower):
            self._in_process -= 1
            self._hand_back(waiting.row.id, QUEUED, now)

    # ------------------------------------------------------------ sending

    async def _run_endpoint(self, endpoint: _Endpoint) -> None:
        try:
            while not self._stopping:
                if not endpoint.queue:
                    if endpoint.idle_runners + 1 == endpoint.runners:  # the last one busy: the endpoint is idle
                        endpoint.went_idle()
                    if await self._more_jobs(endpoint):
                        continue
                    break
                job = endpoint.queue.popleft()
                try:
                    result = await self._attempt(job, endpoint)
                finally:
                    self._in_process -= 1
                now = time.time()
                follower = job.follower
                if follower is not None:
                    if result.decision.outcome is _DELIVERED and not self._stopping:
                        endpoint.queue.appendleft(follower)  # its turn came: next, on this connection
                    else:  # not yet (a retry), or not by this worker: they wait behind again
                        self._hand_back_followers(job, now)
                endpoint.note_completion(now)
                results = self._results
                if not results:
                    self._first_result_at = now
                results.append(result)
                # The cycle loop waits for a write to be due or for room to claim; waking it
                # for every result cost more than the rest of the bookkeeping.
                wake = (len(results) == 1 or len(results) >= self.batch_size
                        or self._in_process == self._room_at or not self._in_process)
                if endpoint.key in self._saturated and len(endpoint.queue) * 2 < self._queue_limit(endpoint, now):
                    self._saturated.discard(endpoint.key)
                    self._next_claim_at = 0.0
                    wake = True
                if wake:
                    self._signal.set()
        finally:
            endpoint.runners -= 1

    @staticmethod
    async def _more_jobs(endpoint: _Endpoint) -> bool:
        """Wait until the endpoint has jobs again (``True``) or its runners should end (``False``)."""
        more = endpoint.more
        if more is None or more.done():
            more = endpoint.more = asyncio.get_running_loop().create_future()
        endpoint.idle_runners += 1
        try:
            return await asyncio.shield(more)  # one runner's cancellation is not everyone's
        finally:
            endpoint.idle_runners -= 1

    def _dismiss_idle_runners(self, now: float | None = None) -> None:
        """Idle runners end: all of them (``now`` is ``None``), or those of endpoints
        that had no job for ``RUNNER_IDLE`` seconds."""
        for endpoint in self._endpoints.values():
            more = endpoint.more
            if more is None or more.done() or not endpoint.idle_runners or endpoint.queue:
                continue
            if now is None or now - endpoint.last_job_at > RUNNER_IDLE:
                more.set_result(False)

    async def _attempt(self, job: _Job, endpoint: _Endpoint) -> _Result:
        now = time.time()
        headers: dict[str, str] = {}
        breaker = endpoint.breaker
        # A closed circuit with no failure allows everything and an answer changes
        # nothing in it: those two calls are skipped in that, the usual, case.
        if (breaker.state is _CLOSED and not breaker.failures) or breaker.allows(now):
            try:
                headers, answer = await sign_and_post(self.signer, self._transport, job.outgoing)
            except BaseException:
                breaker.release_trial()
                raise
            else:
                if answer.status_code is not None:
                    if breaker.failures or breaker.state is not _CLOSED:
                        breaker.record_answer()
                elif answer.error_kind in NO_ANSWER:
                    breaker.record_failure(time.time())
                else:
                    breaker.release_trial()
        else:
            answer = Answer(now, 0.0, error_kind=ErrorKind.CIRCUIT_OPEN,
                            error=f"no request: {endpoint.key} failed {endpoint.breaker.failures} times in a row; "
                                  f"circuit open until {_iso(endpoint.breaker.opened_until)}")
        code = answer.status_code
        decision = self._delivered_decisions.get(code) if answer.retry_after is None else None
        if decision is None:
            attempt = AttemptResult(code, answer.error_kind, answer.retry_after)
            decision = decide(attempt, job.row.attempt_count + 1, self.retry_policy, time.time())
            if decision.outcome is _DELIVERED and code is not None and len(self._delivered_decisions) < 100:
                # decide() answers a 2xx the same whatever the attempt and the time: keep it.
                self._delivered_decisions[code] = decision
        return _Result(job, answer, headers, decision)

    # ------------------------------------------------------------ recording

    def _count(self, results: list[_Result], kept: list[_Result], dropped: int) -> None:
        stats = self.stats
        stats.flushes += 1
        stats.attempts += len(results)
        stats.dropped += len(results) - len(kept)
        for result in kept:
            outcome = result.decision.outcome
            if outcome is _DELIVERED:
                stats.delivered += 1
            elif outcome is _FAILED:
                stats.failed += 1
            else:
                stats.retried += 1
        if len(results) != len(kept) or dropped:
            log.warning("%d results dropped (their delivery was handed to another worker, or deleted, or its "
                        "configuration was); %d deliveries of deleted configurations removed",
                        len(results) - len(kept), dropped)

    def _attempt_row(self, result: _Result) -> AttemptRow:
        answer = result.answer
        return AttemptRow(
            delivery_id=result.job.row.id, number=result.job.row.attempt_count + 1,
            started_at=datetime.fromtimestamp(answer.started_at, UTC), duration_ms=round(answer.duration_ms, 3),
            status_code=answer.status_code, response_excerpt=answer.excerpt,
            error=_error_text(answer), request_headers=result.headers, worker_id=self.worker_id)

    @staticmethod
    def _result_row(result: _Result, finished_at: datetime) -> ResultRow:
        decision = result.decision
        row = result.job.row
        if decision.outcome is _RETRY:
            status, next_at, finished = PENDING, decision.retry_at, None
        else:
            status = DELIVERED if decision.outcome is _DELIVERED else FAILED
            next_at, finished = result.answer.started_at, finished_at
        last_error = None if decision.outcome is _DELIVERED else decision.reason[:1000]
        return ResultRow(row.id, status, row.attempt_count + 1, next_at, result.answer.status_code,
                               last_error, finished, row.webhook_config_id, row.conversation_id)

    # ------------------------------------------------------------ liveness

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            try:
                now = time.time()
                async with self.cycle.transaction() as conn:
                    if not await leases.heartbeat(conn, worker_id=self.worker_id, now=now):
                        log.warning("worker %s was declared dead; its deliveries were handed back", self.worker_id)
                        await leases.register_worker(conn, worker_id=self.worker_id,
                                                     hostname=socket.gethostname()[:255], pid=os.getpid(), now=now)
                    handed_back = await leases.reap_stalled(conn, now=now, stale_after=self.settings.stale_after)
                if handed_back:
                    log.warning("handed back %d deliveries of stalled workers", handed_back)
                    self.wake()
                self._dismiss_idle_runners(now)
            except Exception:
                log.exception("heartbeat failed")
            if time.monotonic() >= self._next_purge_at:
                self._next_purge_at = time.monotonic() + PURGE_INTERVAL
                try:  # apart: a writer racing a purge fails the purge, never the heartbeat
                    async with self.cycle.transaction() as conn:
                        await actions.purge_deleted_configurations(conn)
                except Exception:
                    log.warning("purging deleted configurations failed; trying again later", exc_info=True)


def _job_for(row: Any, url: str, bodies: dict[int, bytes], secrets: list[str],
             custom_headers: dict[str, str]) -> _Job:
    return _Job(row, Outgoing(url, bodies[row.event_id], row.webhook_id, row.signature, secrets, custom_headers,
                              row.sequence))


def _followers(promoted: list) -> dict[int, list]:
    """Of deliveries claimed by promotion, each conversation's later ones in
    sequence order, by the id of its first."""
    by_conversation: dict[tuple[int, int], list] = {}
    for row in promoted:
        by_conversation.setdefault((row.webhook_config_id, row.conversation_id), []).append(row)
    followers = {}
    for rows in by_conversation.values():
        if len(rows) > 1:
            rows.sort(key=lambda row: row.sequence)
            followers[rows[0].id] = rows[1:]
    return followers


def _chain(job: _Job | None) -> list[_Job]:
    """A job's followers, the follower's followers, and so on."""
    jobs = []
    while job is not None:
        jobs.append(job)
        job = job.follower
    return jobs


def _error_text(answer: Answer) -> str | None:
    if answer.error is None and answer.error_kind is None:
        return None
    kind = f"{answer.error_kind}: " if answer.error_kind else ""
    return f"{kind}{answer.error or ''}"[:1000]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


async def _cancelled(task: asyncio.Task) -> Any:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        return await task
