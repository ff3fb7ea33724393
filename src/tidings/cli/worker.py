"""``tidings worker``: a dispatcher on its own, until SIGTERM or Ctrl-C.

Several workers, on several machines, can share one PostgreSQL database:
each claims its own deliveries (``FOR UPDATE SKIP LOCKED``). A SQLite file
takes one worker at a time.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import typer

from tidings.cli.errors import CliError
from tidings.cli.keys import read_private_key
from tidings.contract.signing import DEFAULT_VENDOR_PREFIX, Signer
from tidings.platform.settings import DeliverySettings
from tidings.store.engine import DEFAULT_DB_URL


def worker_command(
    db: str = typer.Option(DEFAULT_DB_URL, "--db", envvar="TIDINGS_DB", help="sqlite:///FILE or postgresql://..."),
    signing_key: str = typer.Option(..., "--signing-key", envvar="TIDINGS_SIGNING_KEY",
                                    help="the platform's Ed25519 private key: a PEM file or a whsk_ string"),
    max_retries: int = typer.Option(5, "--max-retries", min=0, help="attempts after the first"),
    retry_base: float = typer.Option(30.0, "--retry-base", min=0.0, help="seconds before the first retry"),
    retry_factor: float = typer.Option(4.0, "--retry-factor", min=1.0, help="each later wait is this many times longer"),
    attempt_timeout: float = typer.Option(10.0, "--attempt-timeout", min=0.01, help="seconds for one attempt"),
    allow_private_targets: bool = typer.Option(False, "--allow-private-targets",
                                               help="allow loopback, private and link-local targets"),
    allow_http: bool = typer.Option(False, "--allow-http", help="allow plain http:// targets"),
    concurrency: int = typer.Option(256, "--concurrency", min=1, help="requests in flight, over all endpoints"),
    max_per_endpoint: int = typer.Option(32, "--max-per-endpoint", min=1, help="requests in flight to one endpoint"),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="deliveries claimed at once"),
    heartbeat_interval: float = typer.Option(2.0, "--heartbeat-interval", min=0.05, help="seconds between heartbeats"),
    stale_after: float = typer.Option(15.0, "--stale-after", min=0.1,
                                      help="a worker silent this long has its deliveries handed back"),
    vendor_prefix: str = typer.Option(DEFAULT_VENDOR_PREFIX, "--vendor-prefix", help="prefix of the vendor header"),
    worker_id: str | None = typer.Option(None, "--worker-id", help="this worker's name (default: host:pid:random)"),
    migrate: bool = typer.Option(True, "--migrate/--no-migrate", help="bring the database schema up to date first"),
) -> None:
    """Deliver every due webhook delivery of the database, until stopped."""
    signer = Signer(read_private_key(signing_key), vendor_prefix=vendor_prefix)
    settings = DeliverySettings(
        max_retries=max_retries, retry_base=retry_base, retry_factor=retry_factor, attempt_timeout=attempt_timeout,
        allow_private_targets=allow_private_targets, allow_http=allow_http, max_per_endpoint=max_per_endpoint,
        batch_size=batch_size, vendor_prefix=vendor_prefix, heartbeat_interval=heartbeat_interval,
        stale_after=stale_after)
    if migrate:
        from tidings.store.migrate import upgrade

        try:
            upgrade(db)
        except Exception as exc:  # a database that cannot be reached or migrated
            raise CliError(f"cannot prepare the database {db}: {exc}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _run(_work(db, signer, settings, concurrency, worker_id))


def _run(coroutine) -> None:
    try:
        import uvloop  # installed with uvicorn[standard]; aiohttp is about a fifth faster on it
    except ImportError:  # pragma: no cover
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


async def _work(db: str, signer: Signer, settings: DeliverySettings, concurrency: int, worker_id: str | None) -> None:
    from tidings.platform.conversations import delivery_final_callback
    from tidings.platform.dispatcher import Dispatcher
    from tidings.store.engine import create_engine

    engine = create_engine(db)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    dispatcher = Dispatcher(engine, signer, settings, worker_id=worker_id,
                            on_final=delivery_final_callback(signer), concurrency=concurrency)
    logging.getLogger("tidings.worker").info("worker %s delivering from %s", dispatcher.worker_id, engine.url)
    try:
        await dispatcher.run(stop)
    finally:
        await engine.dispose()
    stats = dispatcher.stats
    logging.getLogger("tidings.worker").info(
        "worker %s stopped: %d delivered, %d failed, %d retries scheduled", dispatcher.worker_id,
        stats.delivered, stats.failed, stats.retried)


def main() -> None:
    """``python -m tidings.cli.worker``: the same command on its own."""
    typer.run(worker_command)


if __name__ == "__main__":
    main()
