"""``tidings serve``: the platform's API, its dashboard and a dispatcher in one process."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Annotated

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
from tidings.cli.limit_options import (
    DEFAULT_LIMITS,
    BodyTimeout,
    HeadTimeout,
    MaxBodyBytes,
    MaxConnections,
    connection_limits,
)
from tidings.cli.secrets_key import SecretsKeyFile, use_secrets_keys
from tidings.cli.sockets import inherited_socket
from tidings.contract.signing import DEFAULT_VENDOR_PREFIX, PRIVATE_KEY_FILENAME, Signer, generate_private_key, save_key_pair
from tidings.platform.settings import DeliverySettings, PartnerSettings, PlatformSettings
from tidings.serving.limits import ConnectionLimits, limited_config, raise_open_file_limit
from tidings.store.engine import DEFAULT_DB_URL

log = logging.getLogger("tidings.serve")


def signing_key_path(data_dir: Path, given: str | None) -> tuple[str, bool]:
    """The signing key to use, and whether it must be generated first."""
    if given:
        return given, False
    path = data_dir / PRIVATE_KEY_FILENAME
    return str(path), not path.exists()


def serve_command(
    db: Db = DEFAULT_DB_URL,
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="port to listen on")] = 8000,
    fd: Annotated[int | None, typer.Option(
        "--fd", help="serve on this inherited listening socket (a supervisor's, systemd's) instead of --host/--port")] = None,
    signing_key: Annotated[str | None, typer.Option(
        "--signing-key", envvar="TIDINGS_SIGNING_KEY",
        help="Ed25519 private key (PEM file or whsk_); generated into the data directory when not given")] = None,
    data_dir: Annotated[Path, typer.Option(
        "--data-dir", help="where a generated signing key and secrets key are kept")] = Path(".tidings"),
    secrets_key_file: SecretsKeyFile = None,
    max_retries: MaxRetries = DEFAULTS.max_retries,
    retry_base: RetryBase = DEFAULTS.retry_base,
    retry_factor: RetryFactor = DEFAULTS.retry_factor,
    attempt_timeout: AttemptTimeout = DEFAULTS.attempt_timeout,
    allow_private_targets: AllowPrivateTargets = False,
    allow_http: AllowHttp = False,
    concurrency: Concurrency = 256,
    max_per_endpoint: MaxPerEndpoint = DEFAULTS.max_per_endpoint,
    vendor_prefix: VendorPrefix = DEFAULT_VENDOR_PREFIX,
    poll_interval: PollInterval = DEFAULTS.poll_interval,
    partner_latency: Annotated[float, typer.Option("--partner-latency", min=0.0,
                                                   help="seconds a simulated partner takes to answer")] = 0.2,
    partner_failure_rate: Annotated[float, typer.Option("--partner-failure-rate", min=0.0, max=1.0,
                                                        help="share of replies a simulated partner refuses")] = 0.05,
    dispatcher: Annotated[bool, typer.Option("--dispatcher/--no-dispatcher",
                                             help="deliver from this process too")] = True,
    max_connections: MaxConnections = DEFAULT_LIMITS.max_connections,
    max_body_bytes: MaxBodyBytes = DEFAULT_LIMITS.max_body_bytes,
    head_timeout: HeadTimeout = DEFAULT_LIMITS.head_timeout,
    body_timeout: BodyTimeout = DEFAULT_LIMITS.body_timeout,
) -> None:
    """Serve the /v2 API and the dashboard, and deliver webhooks."""
    from tidings.cli.keys import read_private_key

    raise_open_file_limit()  # so that --max-connections, not EMFILE, decides
    limits = connection_limits(max_connections, max_body_bytes, head_timeout, body_timeout)

    prepare_database(db)
    use_secrets_keys(secrets_key_file, data_dir, create=True)
    key_source, generate = signing_key_path(data_dir, signing_key)
    if generate:
        try:
            private, public = save_key_pair(generate_private_key(), data_dir)
        except OSError as exc:
            raise CliError(f"cannot write a signing key into {data_dir}: {exc.strerror}") from None
        print(f"generated a signing key: {private} (public key for subscribers: {public})")
    signer = Signer(read_private_key(key_source), vendor_prefix=vendor_prefix)
    settings = PlatformSettings(
        db_url=db,
        signing_key_path=Path(key_source) if not key_source.startswith("whsk_") else None,
        delivery=DeliverySettings(max_retries=max_retries, retry_base=retry_base, retry_factor=retry_factor,
                                  attempt_timeout=attempt_timeout, allow_private_targets=allow_private_targets,
                                  allow_http=allow_http, max_per_endpoint=max_per_endpoint,
                                  vendor_prefix=vendor_prefix, poll_interval=poll_interval),
        partners=PartnerSettings(latency=partner_latency, failure_rate=partner_failure_rate),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sock = inherited_socket(fd) if fd is not None else None
    asyncio.run(run_platform(settings, signer, host=host, port=port, concurrency=concurrency,
                             with_dispatcher=dispatcher, sock=sock, limits=limits))


def prepare_database(db: str) -> None:
    """Migrates ``db``; one clear line when it cannot be reached."""
    from tidings.store.migrate import upgrade

    try:
        upgrade(db)
    except Exception as exc:  # unreachable server, bad URL, unwritable file
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"cannot prepare the database {db}: {first_line}") from None


async def seal_clear_secrets(engine) -> None:
    """Checks that the secrets key opens the stored secrets, and encrypts those
    still stored in clear (rows from before encryption at rest)."""
    from tidings.platform.sealed import UnreadableSecret, check_keys_open, reseal_configurations
    from tidings.store.engine import begin_write

    async with begin_write(engine) as conn:
        try:
            await check_keys_open(conn)
        except UnreadableSecret:
            raise CliError("the secrets key does not decrypt the secrets in the database: start with the key "
                           "they were encrypted with (--secrets-key-file, TIDINGS_SECRETS_KEY)") from None
        if sealed := await reseal_configurations(conn, clear_only=True):
            log.info("encrypted the secrets of %d webhook configurations stored in clear", sealed)


async def run_platform(settings: PlatformSettings, signer: Signer, *, host: str, port: int, concurrency: int = 256,
                       with_dispatcher: bool = True, ready: asyncio.Event | None = None,
                       stop: asyncio.Event | None = None, sock: socket.socket | None = None,
                       limits: ConnectionLimits = DEFAULT_LIMITS) -> None:
    """Serves the API on ``host:port``, or on ``sock`` when given (and delivers),
    with ``limits`` on its connections, until stopped by a signal or ``stop``."""
    import uvicorn

    from tidings.apps.platform import platform_app
    from tidings.platform.api.app import http_protocol, serving_gc
    from tidings.platform.api.context import PlatformContext
    from tidings.platform.workers import build_dispatcher
    from tidings.store.engine import create_engine

    engine = create_engine(settings.db_url)
    await seal_clear_secrets(engine)
    dispatcher = build_dispatcher(engine, signer, settings.delivery, concurrency=concurrency) \
        if with_dispatcher else None
    app = platform_app(PlatformContext(settings=settings, engine=engine, signer=signer, dispatcher=dispatcher))
    # A short graceful shutdown: the dashboard's live pages hold streams open. The
    # http protocol answers custom-channel ingestion without ASGI (fast_ingest).
    server = uvicorn.Server(limited_config(app, limits, host=host, port=port, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=3, http=http_protocol()))
    stop = stop or asyncio.Event()
    tasks = []
    if dispatcher is not None:
        tasks.append(asyncio.create_task(dispatcher.run(stop), name="dispatcher"))

    async def stop_server_on_event() -> None:
        await stop.wait()
        server.should_exit = True

    tasks.append(asyncio.create_task(stop_server_on_event()))
    with serving_gc():
        serving = asyncio.create_task(server.serve(sockets=[sock] if sock is not None else None), name="api")
        while not server.started and not serving.done():
            await asyncio.sleep(0.02)
        if server.started:
            bound = server.servers[0].sockets[0].getsockname()  # the port the system picked for --port 0
            log.info("platform listening on http://%s:%d", *bound[:2])
            if ready is not None:
                ready.set()
        try:
            await serving
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await engine.dispose()
