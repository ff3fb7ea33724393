"""Servers on 127.0.0.1 that hold the socket they were given.

Each helper binds port 0, keeps the listening socket and hands that very
socket to the server (uvicorn, aiohttp, a raw asyncio server), so that no
other process can take the port between choosing it and serving on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvicorn

HOST = "127.0.0.1"
STARTUP_SECONDS = 20.0


def loopback_socket() -> socket.socket:
    """A listening TCP socket on 127.0.0.1 with a port the system chose."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(1024)
    return sock


def closed_port_socket() -> socket.socket:
    """A socket bound on 127.0.0.1 that never listens: connections to its port are
    refused, and no other server can take the port while it is held."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    return sock


def port_of(sock: socket.socket) -> int:
    return sock.getsockname()[1]


def base_url(sock: socket.socket) -> str:
    return f"http://{HOST}:{port_of(sock)}"


def _uvicorn_server(app: Any, **options: Any) -> uvicorn.Server:
    settings = dict(log_level="warning", lifespan="on", access_log=False, timeout_graceful_shutdown=2)
    settings.update(options)
    return uvicorn.Server(uvicorn.Config(app, **settings))


@contextlib.asynccontextmanager
async def serve_uvicorn(app: Any, *, timeout: float = STARTUP_SECONDS, **options: Any) -> AsyncIterator[str]:
    """``app`` on uvicorn in this event loop, on a socket held from bind to close; yields the base URL."""
    with loopback_socket() as sock:
        server = _uvicorn_server(app, **options)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        deadline = asyncio.get_running_loop().time() + timeout
        while not server.started:
            if task.done():
                task.result()  # raises why it stopped
                raise RuntimeError("uvicorn stopped before it started")
            if asyncio.get_running_loop().time() > deadline:
                task.cancel()
                raise TimeoutError("uvicorn did not start")
            await asyncio.sleep(0.01)
        try:
            yield base_url(sock)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, timeout)


class UvicornThread:
    """``app`` on uvicorn in a thread of its own (for synchronous callers), on a held socket."""

    def __init__(self, app: Any, **options: Any) -> None:
        self.socket = loopback_socket()
        self.port = port_of(self.socket)
        self.server = _uvicorn_server(app, **options)
        self.thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self.socket]))
        except BaseException as exc:  # reported by __enter__
            self.error = exc

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + STARTUP_SECONDS
        while not self.server.started:
            if self.error is not None or not self.thread.is_alive():
                self.socket.close()
                raise RuntimeError(f"the test server did not start: {self.error!r}")
            if time.monotonic() > deadline:
                self.server.should_exit = True
                self.socket.close()
                raise RuntimeError("the test server did not start in time")
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.socket.close()


@contextlib.asynccontextmanager
async def serve_aiohttp(app: Any, *, shutdown_timeout: float = 0.1) -> AsyncIterator[str]:
    """An aiohttp ``web.Application`` on a held socket (``web.SockSite``); yields the base URL."""
    from aiohttp import web

    with loopback_socket() as sock:
        runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            yield base_url(sock)
        finally:
            await runner.cleanup()


Connection = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serve_connections(on_connection: Connection) -> AsyncIterator[str]:
    """A raw asyncio server on a held socket that hands each connection to
    ``on_connection`` (for endpoints that misbehave on purpose); yields the base URL."""
    tasks: set[asyncio.Task] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await on_connection(reader, writer)
        finally:
            writer.close()
            tasks.discard(asyncio.current_task())

    with loopback_socket() as sock:
        server = await asyncio.start_server(handle, sock=sock)
        try:
            yield base_url(sock)
        finally:
            server.close()
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=5)
            await server.wait_closed()


def command_on_socket(sock: socket.socket, tidings_arguments: list[str]) -> tuple[list[str], dict[str, Any]]:
    """The command line and ``Popen`` options that run ``tidings ARGUMENTS`` in a
    child serving on ``sock``, handed over as an inherited file descriptor
    (``--fd``, as a supervisor or systemd would hand it)."""
    descriptor = sock.fileno()
    command = [sys.executable, "-m", "tidings.cli", *tidings_arguments, "--fd", str(descriptor)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.join(root, "src"),
                                                                     os.environ.get("PYTHONPATH")]))}
    return command, {"pass_fds": (descriptor,), "env": env, "cwd": root}


def accepting(url: str) -> bool:
    """Whether a server answers HTTP at ``url``'s host and port (any status)."""
    import httpx

    try:
        httpx.get(url, timeout=1.0)
        return True
    except httpx.HTTPError:
        return False


@contextlib.asynccontextmanager
async def http_client(app: Any, *, timeout: float = 30.0, **options: Any) -> AsyncIterator[Any]:
    """An ``httpx.AsyncClient`` talking to ``app`` over a real socket: the app on
    uvicorn in this event loop, without its lifespan unless ``lifespan="on"`` is given."""
    import httpx

    options.setdefault("lifespan", "off")
    async with serve_uvicorn(app, **options) as url, httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        yield client


@contextlib.asynccontextmanager
async def serving_hook(handle: Callable[[Any], Awaitable[Any]]) -> AsyncIterator[str]:
    """An aiohttp app that answers ``POST /hook`` with ``handle``, on a loopback port; yields the hook's URL."""
    from aiohttp import web

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()
