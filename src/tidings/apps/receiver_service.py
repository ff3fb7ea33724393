"""The receiver as a service: the public webhook endpoint, the private admin
listener (inbox, read API, repairs), and the background work (inbox
projection, handlers) that follows the log.

``tidings receive`` builds a ``ReceiverConfig`` and an ``AdminListener`` and
calls ``run_service``. The request workers (``workers``, each with its own
writer: SQLite serialises them, PostgreSQL takes an advisory lock per batch)
serve the public listener only: the webhook and ``/health``. The follower
process runs the background work and serves the admin listener, so that
neither competes with the acknowledgements for a worker's GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import importlib.util
import json
import logging
import os
import signal
import socket
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from tidings.contract.headers import DEFAULT_VENDOR_PREFIX
from tidings.contract.signing import Verifier, load_public_key
from tidings.apps.receiver_admin import AdminListener, admin_app
from tidings.receiver.asgi import receiver_app
from tidings.receiver.builtin_handlers import append_jsonl, forward_to, run_command
from tidings.receiver.core import Receiver
from tidings.receiver.handler_runner import HandlerRunner
from tidings.receiver.handlers import EventFilter, Handlers, load_handlers
from tidings.receiver.inbox import DEFAULT_GAP_WAIT, InboxProjector
from tidings.receiver.lease import BackgroundLease
from tidings.receiver.log import EventLog
from tidings.serving.limits import DEFAULT_LIMITS, ConnectionLimits, limited_config

logger = logging.getLogger("tidings.receiver")

CONFIG_ENV = "TIDINGS_RECEIVER_CONFIG"

# While requests come in, the background work takes a bounded share: at most
# BUSY_BATCH events per BUSY_PAUSE, about 1,000 events/s; it catches up when
# the load eases; unpaced, projection halves the acknowledgement rate (bench/receive.py).
BUSY_PAUSE = 0.1
BUSY_BATCH = 100
PROJECTION_BATCH = 100
# A follower behind the log sleeps this many times as long as its last batch
# took: at most a quarter of a core while it catches up.
BEHIND_PAUSE_FACTOR = 3.0
FOLLOWER_POLL = 0.2  # the follower sees no commits of its own: it looks at the log this often
WORKER_LEASE_GRACE = 5.0  # request workers leave the lease to the follower, unless it is gone


@dataclass
class ReceiverConfig:
    db_url: str
    public_keys: list[str] = field(default_factory=list)  # PEM or whpk_ texts
    org_ids: list[int] = field(default_factory=list)  # the organizations served (tidings.receiver.tenancy)...
    any_org: bool = False  # ...or every one: exactly one of the two
    signing_secrets: list[str] = field(default_factory=list)  # whsec_ secrets, for the HMAC scheme v1
    path: str = "/webhook"
    url_secret: str | None = None
    strict: bool = False
    tolerance_seconds: int = 300
    max_wait: float = 2.0
    handler_specs: list[str] = field(default_factory=list)  # module:function or module:registry
    forward_urls: list[str] = field(default_factory=list)
    jsonl_paths: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    on_types: list[str] = field(default_factory=list)  # filter for plain functions and built-ins
    where: list[str] = field(default_factory=list)  # field=value conditions, likewise
    max_tries: int = 5
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    poll_interval: float = 0.5
    workers: int = 1
    verify_threads: int = 1  # per worker; 0 verifies in the event loop itself
    lease_grace: float = 0.0  # seconds before this process first tries for the background lease
    gap_wait: float = DEFAULT_GAP_WAIT  # seconds a hole in a conversation's sequence is waited on before it is reported
    vendor_prefix: str = DEFAULT_VENDOR_PREFIX  # the platform's: its signature and sequence headers carry it
    limits: ConnectionLimits = DEFAULT_LIMITS  # on each listener's connections, per process

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ReceiverConfig:
        fields = json.loads(text)
        return cls(**{**fields, "limits": ConnectionLimits(**fields.get("limits", {}))})

    def verifier(self) -> Verifier:
        return Verifier(
            public_keys=[load_public_key(key) for key in self.public_keys],
            secrets=list(self.signing_secrets),
            tolerance_seconds=self.tolerance_seconds,
            vendor_prefix=self.vendor_prefix,
        )

    def handlers(self) -> Handlers:
        """The handlers named by the configuration: modules, then built-ins."""
        default_filter = EventFilter.parse(self.on_types, self.where)
        registry = Handlers()
        for spec in self.handler_specs:
            registry.extend(load_handlers(spec, default_filter))
        for url in self.forward_urls:
            registry.add(forward_to(url), name=f"forward:{url}", filter=default_filter, max_tries=self.max_tries)
        for path in self.jsonl_paths:
            registry.add(append_jsonl(path), name=f"jsonl:{path}", filter=default_filter, max_tries=self.max_tries)
        for command in self.commands:
            registry.add(run_command(command), name=f"command:{command}", filter=default_filter, max_tries=self.max_tries)
        return registry


class ReceiverService:
    """What ``tidings receive`` runs in one process: the public app (``.app``: the webhook
    and ``/health``), the admin app (``.admin_app``, when an ``AdminListener`` is given),
    and the background work, started by the public app's lifespan or by ``follow``."""

    def __init__(self, config: ReceiverConfig, handlers: Handlers | None = None,
                 admin: AdminListener | None = None) -> None:
        self.config = config
        self.log = EventLog(config.db_url)
        self.receiver = Receiver(
            self.log,
            config.verifier(),
            org_ids=config.org_ids,
            any_org=config.any_org,
            url_secret=config.url_secret,
            strict=config.strict,
            max_wait=config.max_wait,
            create_schema=False,
            verify_threads=config.verify_threads,
        )
        self.log.create_schema()
        self.handlers = config.handlers()
        if handlers is not None:
            self.handlers.extend(handlers)
        # Small batches: the projection's write transaction holds the database's
        # writers up while it runs, and large ones show in the acknowledgement
        # p99 (bench/receive.py).
        self.projector = InboxProjector(self.log, batch_size=PROJECTION_BATCH, gap_wait=config.gap_wait)
        self.runner = HandlerRunner(
            self.log, self.handlers, self._write, backoff_base=config.backoff_base, backoff_cap=config.backoff_cap
        )
        self.lease = BackgroundLease(config.db_url)
        self._wake: asyncio.Event | None = None
        self._background: asyncio.Task | None = None
        self.app = receiver_app(self.receiver, config.path, lifespan=self._lifespan)
        self.admin = admin
        self.admin_app = admin_app(self.receiver, admin) if admin is not None else None

    async def _write(self, function):
        return await asyncio.wrap_future(self.receiver.committer.run(function))

    @asynccontextmanager
    async def _lifespan(self, _app):
        # What is alive now lives as long as the service: keep it out of the
        # collector's full passes, which otherwise stall every request a moment.
        gc.freeze()
        self.receiver.start()
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        wake = self._wake
        self.receiver.committer.add_commit_listener(lambda _count: loop.call_soon_threadsafe(wake.set))
        self._background = asyncio.create_task(self._follow_log(), name="tidings-receiver-background")
        try:
            yield
        finally:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
            await asyncio.to_thread(self.receiver.close)
            self.lease.release()
            self.log.dispose()

    async def follow(self, admin_socket: socket.socket | None = None) -> None:
        """The background work, forever, and the admin listener on ``admin_socket``: the follower process."""
        gc.freeze()
        self._wake = asyncio.Event()  # nothing commits here: the log is polled
        try:
            if admin_socket is None or self.admin_app is None:
                await self._follow_log()
                return
            background = asyncio.create_task(self._follow_log(), name="tidings-receiver-background")
            try:
                await admin_server(self.admin_app, self.config.limits).serve(sockets=[admin_socket])
            finally:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        finally:
            await asyncio.to_thread(self.receiver.close)
            self.lease.release()
            self.log.dispose()

    async def _follow_log(self) -> None:
        """Project the inbox and run the handlers, forever, in the lease holder only."""
        await asyncio.sleep(self.config.lease_grace)
        while True:
            try:
                if not self.lease.held and not await asyncio.to_thread(self.lease.try_acquire):
                    await asyncio.sleep(2.0)
                    continue
                started = time.monotonic()
                projected, runs = await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("background work failed; trying again shortly")
                await asyncio.sleep(1.0)
                continue
            if projected or runs:
                if self.busy():
                    # Requests are coming in here: their commits go first, the inbox may lag a little.
                    await asyncio.sleep(BUSY_PAUSE)
                elif projected >= self.projector.batch_size:
                    # Behind the log: catch up with a share of one core, not all of it.
                    await asyncio.sleep((time.monotonic() - started) * BEHIND_PAUSE_FACTOR)
                continue
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.poll_interval)

    def busy(self) -> bool:
        """Whether requests were committed in this process a moment ago."""
        return time.monotonic() - self.receiver.committer.last_commit_at < BUSY_PAUSE

    async def step(self) -> int:
        """One round of background work: a batch of projection, then the handlers' due work."""
        projected, runs = await self._step()
        return projected + runs

    async def _step(self) -> tuple[int, int]:
        batch = BUSY_BATCH if self.busy() else None
        projected = await asyncio.to_thread(self.projector.step, batch)
        return projected, await self.runner.step()


def admin_server(app, limits: ConnectionLimits = DEFAULT_LIMITS):
    """A uvicorn server for the admin app, with ``limits``: no lifespan, no access log; open streams
    get a second at shutdown."""
    import uvicorn

    config = limited_config(app, limits, lifespan="off", log_level="warning", access_log=False,
                            proxy_headers=False, server_header=False, timeout_graceful_shutdown=1,
                            http=_bounded_http_protocol())
    return uvicorn.Server(config)


def follow_forever(config: ReceiverConfig, handlers: Handlers | None = None, admin: AdminListener | None = None,
                   admin_socket: socket.socket | None = None, public_socket: socket.socket | None = None) -> None:
    """The follower process: takes the background lease first, so the workers only serve requests;
    serves the admin listener, if any (the public listener it inherited is closed here)."""
    _die_with_parent()
    if public_socket is not None:
        public_socket.close()
    polling = dataclasses.replace(config, poll_interval=min(config.poll_interval, FOLLOWER_POLL), lease_grace=0.0)
    asyncio.run(ReceiverService(polling, handlers, admin).follow(admin_socket))


def create_app():
    """The ASGI app of one worker process (``uvicorn --factory``), configured by the environment."""
    _die_with_parent()
    return ReceiverService(ReceiverConfig.from_json(os.environ[CONFIG_ENV])).app


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when its supervisor dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the supervisor's shutdown still stops workers
        pass


def _http_protocol() -> str:
    """uvicorn's httptools protocol with the webhook fast path, or uvicorn's choice without httptools."""
    if importlib.util.find_spec("httptools") is None:
        return "auto"
    return "tidings.receiver.fast_http:WebhookHttpProtocol"


def _bounded_http_protocol() -> str:
    """uvicorn's httptools protocol with the connection limits, or uvicorn's choice without httptools."""
    if importlib.util.find_spec("httptools") is None:
        return "auto"
    return "tidings.serving.bounded_http:BoundedHttpProtocol"


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: one the system picks), as uvicorn binds one.

    It listens once its server starts (``create_server`` calls ``listen``):
    until then a connection is refused rather than queued, so whoever waits
    for the port to accept waits for a server that answers.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def run_service(config: ReceiverConfig, host: str = "127.0.0.1", port: int = 8000, handlers: Handlers | None = None,
                *, admin: AdminListener | None = None, public_socket: socket.socket | None = None,
                admin_socket: socket.socket | None = None) -> None:
    """Serve until interrupted: a follower process for the background work and the admin listener, then uvicorn.

    The public listener is ``public_socket``, or ``host:port``; the admin
    listener, when ``admin`` is given, is ``admin_socket`` or
    ``admin.host:admin.port``. Both are bound before anything starts, so a
    port another server listens on fails at once.

    The projection and the handlers run in a process of their own, the
    follower, which holds the background lease; request workers take the
    lease over only if the follower dies: projection inside a request worker
    shares its GIL and raises the acknowledgement p99 (bench/receive.py).
    uvloop and httptools are used when installed.
    """
    import multiprocessing

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    public_socket = public_socket or listen(host, port)
    if admin is not None:
        admin_socket = admin_socket or listen(admin.host, admin.port)
        admin = admin.with_port(admin_socket.getsockname()[1])
    log = EventLog(config.db_url)
    log.create_schema()  # once, before any process that might race to create the tables
    log.dispose()  # no connection may cross the fork below
    follower = multiprocessing.get_context("fork").Process(
        target=follow_forever, args=(config, handlers, admin, admin_socket, public_socket), name="tidings-receiver-follower",
        daemon=True,
    )
    follower.start()
    if admin_socket is not None:
        admin_socket.close()  # the follower holds it now
    config = dataclasses.replace(config, lease_grace=max(config.lease_grace, WORKER_LEASE_GRACE))
    # No proxy-header rewriting and no Server header: less work per request on the hot path.
    options = dict(loop="auto", http=_http_protocol(), access_log=False, log_level="warning",
                   proxy_headers=False, server_header=False)
    try:
        if config.workers <= 1:
            uvicorn.Server(limited_config(ReceiverService(config, handlers).app, config.limits, **options)).run(
                sockets=[public_socket])
            return
        if handlers is not None:
            raise ValueError("handlers given as objects need workers=1; name them as module:function instead")
        os.environ[CONFIG_ENV] = config.to_json()
        workers = limited_config("tidings.apps.receiver_service:create_app", config.limits, factory=True,
                                 workers=config.workers, **options)
        Multiprocess(workers, sockets=[public_socket]).run()
    finally:
        public_socket.close()
        follower.terminate()
        follower.join(10)
