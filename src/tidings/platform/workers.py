"""The dispatcher as the platform's processes run it.

``tidings serve``, ``tidings worker`` and every benchmark build their
dispatcher here, so that each of them does what the others do per delivery
(a reply carried by the webhook settles when its delivery ends).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.contract.signing import Signer
from tidings.platform.conversations import replies_settled_by
from tidings.platform.dispatcher import Dispatcher
from tidings.platform.settings import DeliverySettings

__all__ = ["build_dispatcher"]


def build_dispatcher(engine: AsyncEngine, signer: Signer, settings: DeliverySettings, *, concurrency: int = 256,
                     worker_id: str | None = None, **tuning) -> Dispatcher:
    """The platform's dispatcher over ``engine``; ``tuning`` passes the
    dispatcher's own knobs (poll interval, transport, ...) to tests and benchmarks."""
    return Dispatcher(engine, signer, settings, worker_id=worker_id, on_finished=replies_settled_by(signer),
                      concurrency=concurrency, **tuning)
