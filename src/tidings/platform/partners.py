"""The simulated built-in partners (Facebook, Instagram, Google, WhatsApp, SMS).

They cannot be reached from here, so a background task of the API process
plays their part: a reply handed to it is answered after
``PartnerSettings.latency`` seconds, refused with probability
``PartnerSettings.failure_rate``, and its status set ``Success`` or
``Failed`` (which records ``message_updated``). Whether a partner accepts is a
pure function of a seed, the message and the attempt, so tests can pin it.
Replies still ``Sending`` when the process starts (it stopped before they
were answered) are picked up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections import defaultdict

from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.contract.signing import Signer
from tidings.platform.conversations import pending_partner_replies, settle_partner_reply
from tidings.platform.settings import PartnerSettings

log = logging.getLogger(__name__)


def partner_accepts(seed: int, message_id: int, attempt: int, failure_rate: float) -> bool:
    """Whether the partner takes attempt ``attempt`` of reply ``message_id``.

    A uniform draw in [0, 1) from a hash of the three numbers: the same
    inputs always give the same answer, and a retry is a new draw.
    """
    digest = hashlib.blake2b(f"{seed}:{message_id}:{attempt}".encode(), digest_size=8).digest()
    draw = int.from_bytes(digest, "big") / 2**64
    return draw >= failure_rate


class PartnerSimulator:
    """Answers replies sent through built-in partners, in the order they were sent."""

    def __init__(self, engine: AsyncEngine, signer: Signer, settings: PartnerSettings, *,
                 seed: int | None = None) -> None:
        self.engine = engine
        self.signer = signer
        self.settings = settings
        self.seed = secrets.randbits(32) if seed is None else seed
        self._queue: asyncio.Queue[tuple[float, int]] = asyncio.Queue()
        self._attempts: defaultdict[int, int] = defaultdict(int)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Starts answering, first the replies left ``Sending`` by an earlier process."""
        async with self.engine.connect() as conn:
            for message_id in await pending_partner_replies(conn):
                self.submit(message_id)
        self._ensure_running()

    def submit(self, message_id: int) -> None:
        """Hands a reply (already committed, ``Sending``) to its partner."""
        self._ensure_running()
        self._queue.put_nowait((time.monotonic() + self.settings.latency, message_id))

    async def stop(self) -> None:
        if self._task is not None:
            if self._task.get_loop() is asyncio.get_running_loop():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None

    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and self._task.get_loop() is not loop:
            # A new event loop (a test client may run each request in its own): start afresh there.
            self._task = None
            self._queue = asyncio.Queue()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="partner-simulator")

    async def _run(self) -> None:
        while True:
            due, message_id = await self._queue.get()
            # One latency for all, so the queue is in due order.
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            try:
                await self.answer(message_id)
            except Exception:  # a database hiccup must not stop the partner; the reply stays Sending
                log.exception("simulated partner could not answer reply %s", message_id)
            finally:
                self._queue.task_done()

    async def answer(self, message_id: int) -> bool:
        """The partner's answer to one reply, now; returns whether it was accepted."""
        self._attempts[message_id] += 1
        accepted = partner_accepts(self.seed, message_id, self._attempts[message_id], self.settings.failure_rate)
        async with self.engine.begin() as conn:
            await settle_partner_reply(conn, self.signer, message_id, accepted)
        return accepted

    async def drain(self, timeout: float = 10.0) -> None:
        """Waits until every submitted reply has been answered (tests, shutdown)."""
        await asyncio.wait_for(self._queue.join(), timeout)
