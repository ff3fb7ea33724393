"""``tidings worker``: a dispatcher on its own, until SIGTERM or Ctrl-C.

Several workers, on several machines, can share one PostgreSQL database:
each claims its own deliveries (``FOR UPDATE SKIP LOCKED``). A SQLite file
takes one worker at a time.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import typer

from tidings.cli.delivery_options import (
    DEFAULTS,
    AllowHttp,
    AllowPrivateTargets,
    AttemptTimeout,
    Concurrency,
    Db,
    MaxPerEndpoint,
    MaxRetries,
    PollInterval,
    RetryBase,
    RetryFactor,
    VendorPrefix,
)
from tidings.cli.errors import CliError
from tidings.cli.secrets_key import SecretsKeyFile, use_secrets_keys
from tidings.cli.serve import prepare_database
from tidings.cli.keys import read_private_key
from tidings.contract.signing import DEFAULT_VENDOR_PREFIX, Signer
from tidings.platform.settings import DeliverySettings
from tidings.store.engine import DEFAULT_DB_URL


def worker_command(
    db: Db = DEFAULT_DB_URL,
    signing_key: str = typer.Option(..., "--signing-key", envvar="TIDINGS_SIGNING_KEY",
                                    help="the platform's Ed25519 private key: a PEM file or a whsk_ string"),
    max_retries: MaxRetries = DEFAULTS.max_retries,
    retry_base: RetryBase = DEFAULTS.retry_base,
    retry_factor: RetryFactor = DEFAULTS.retry_factor,
    attempt_timeout: AttemptTimeout = DEFAULTS.attempt_timeout,
    allow_private_targets: AllowPrivateTargets = False,
    allow_http: AllowHttp = False,
    concurrency: Concurrency = 256,
    max_per_endpoint: MaxPerEndpoint = DEFAULTS.max_per_endpoint,
    batch_size: int = typer.Option(DEFAULTS.batch_size, "--batch-size", min=1, help="deliveries claimed at once"),
    heartbeat_interval: float = typer.Option(DEFAULTS.heartbeat_interval, "--heartbeat-interval", min=0.05,
                                             help="seconds between heartbeats"),
    stale_after: float = typer.Option(DEFAULTS.stale_after, "--stale-after", min=0.1,
                                      help="a worker silent this long has its deliveries handed back"),
    vendor_prefix: VendorPrefix = DEFAULT_VENDOR_PREFIX,
    poll_interval: PollInterval = DEFAULTS.poll_interval,
    worker_id: str | None = typer.Option(None, "--worker-id", help="this worker's name (default: host:pid:random)"),
    migrate: bool = typer.Option(True, "--migrate/--no-migrate", help="bring the database schema up to date first"),
    secrets_key_file: SecretsKeyFile = None,
    data_dir: Path = typer.Option(Path(".tidings"), "--data-dir",
                                  help="where `tidings serve` keeps its secrets key (secrets.key)"),
) -> None:
    """Deliver every due webhook delivery of the database, until stopped."""
    use_secrets_keys(secrets_key_file, data_dir, create=False)
    signer = Signer(read_private_key(signing_key), vendor_prefix=vendor_prefix)
    settings = DeliverySettings(
        max_retries=max_retries, retry_base=retry_base, retry_factor=retry_factor, attempt_timeout=attempt_timeout,
        allow_private_targets=allow_private_targets, allow_http=allow_http, max_per_endpoint=max_per_endpoint,
        batch_size=batch_size, vendor_prefix=vendor_prefix, heartbeat_interval=heartbeat_interval,
        stale_after=stale_after, poll_interval=poll_interval)
    if migrate:
        prepare_database(db)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _run(_work(db, signer, settings, concurrency, worker_id))


def _run(coroutine) -> None:
    try:
        import uvloop  # installed with uvicorn[standard]; aiohttp is about a fifth faster on it
    except ImportError:  # pragma: no cover
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


async def check_secrets_key(engine) -> None:
    """One clear line, before delivering, when the secrets key is not the one the secrets were encrypted with."""
    from tidings.platform.sealed import UnreadableSecret, check_keys_open

    async with engine.connect() as conn:
        try:
            await check_keys_open(conn)
        except UnreadableSecret:
            await engine.dispose()
            raise CliError("the secrets key does not decrypt the secrets in the database: give the worker the key "
                           "`tidings serve` uses (--secrets-key-file, TIDINGS_SECRETS_KEY)") from None


async def _work(db: str, signer: Signer, settings: DeliverySettings, concurrency: int, worker_id: str | None) -> None:
    from tidings.platform.workers import build_dispatcher
    from tidings.store.engine import create_engine

    engine = create_engine(db)
    await check_secrets_key(engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    dispatcher = build_dispatcher(engine, signer, settings, concurrency=concurrency, worker_id=worker_id)
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
    """``python -m tidings.cli.worker``: the same command on its own, with its one-line errors."""
    try:
        typer.run(worker_command)
    except CliError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
