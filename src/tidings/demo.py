"""``tidings demo``: the whole system on an embedded SQLite, with traffic.

It starts the same processes a deployment runs (``tidings serve`` and
``tidings receive``), sets up two organizations through the same code as
the set-up commands, subscribes them through the ``/v2`` API, and drives
traffic through that API. One organization's webhooks go to the receiver;
the other's go to an endpoint that misbehaves now and then, so that retries
show on the dashboard.
"""

from __future__ import annotations

import asyncio
import ctypes
import contextlib
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tidings.contract import EVENT_TYPES
from tidings.contract.signing import generate_private_key, save_key_pair
from tidings.traffic import TrafficSummary, run_traffic
from tidings.traffic.flaky import FlakyEndpoint

HOST = "127.0.0.1"
DB_FILES = ("platform.db", "platform.db-wal", "platform.db-shm", "receiver.db", "receiver.db-wal", "receiver.db-shm")


@dataclass(frozen=True)
class DemoOptions:
    data_dir: Path = Path("tidings-demo")
    platform_port: int = 8000
    receiver_port: int = 8001
    flaky_port: int = 8002
    admin_port: int = 8003  # the receiver's admin listener: its inbox and read API
    rate: float = 8.0  # actions a second, over both organizations
    duration: float | None = None  # None: until Ctrl-C
    seed: int = 1


@dataclass
class Organization:
    name: str
    org_id: int
    api_key: str
    target: str


@dataclass
class DemoState:
    platform_url: str = ""
    receiver_url: str = ""
    admin_url: str = ""
    admin_token: str = ""
    organizations: list[Organization] = field(default_factory=list)
    received: int = 0
    received_after: int = 0
    deliveries: dict[str, int] = field(default_factory=dict)
    traffic: list[TrafficSummary] = field(default_factory=list)


def bound_socket(preferred: int) -> socket.socket:
    """A TCP socket on loopback bound to ``preferred`` when it is free, else to a
    port the system picks; the server it is handed to serves on it as it is
    (``--fd``), so no other process can take the port in between."""
    for candidate in (preferred, 0):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, candidate))
        except OSError:
            sock.close()
            continue
        return sock
    raise OSError("no free port on loopback")


def summary_line(state: DemoState, elapsed: float) -> str:
    sent = sum(t.sent for t in state.traffic)
    d = state.deliveries
    return (f"[{elapsed:5.0f}s] messages sent {sent}  deliveries: delivered {d.get('delivered', 0)}, "
            f"retrying {d.get('pending', 0)}, failed {d.get('failed', 0)}  receiver stored {state.received}")


# What stops the demo cleanly; SIGHUP too, since its servers do not get the terminal's signals.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _die_with_the_demo() -> None:
    """In the child: SIGTERM when the demo dies, however it dies (Linux), since
    its servers are in sessions of their own and get no terminal signal."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def _tidings(*args: str, log: Path, env: dict[str, str] | None = None,
                   sockets: tuple[socket.socket, ...] = ()) -> asyncio.subprocess.Process:
    """Starts a ``tidings`` sub-command, its output going to ``log`` (``env``:
    added to the environment; ``sockets``: handed over, named by ``--fd``)."""
    handle = open(log, "wb")  # noqa: SIM115 - the child keeps it open
    try:
        # A session of its own: Ctrl-C reaches the demo alone, which stops the
        # traffic first and its servers after, instead of every process at once
        # (the traffic then reported the platform gone).
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tidings.cli", *args, stdout=handle, stderr=handle, stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, **(env or {})},
            pass_fds=tuple(sock.fileno() for sock in sockets), preexec_fn=_die_with_the_demo)
    finally:
        handle.close()


async def _wait_until_up(session: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process,
                         log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"{url} did not start; see {log}:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with session.get(url) as answer:
                if answer.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s; see {log}")


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()


async def set_up_organizations(db_url: str, targets: dict[str, str]) -> list[Organization]:
    """Two organizations with businesses and custom channels, as the set-up commands make them."""
    from tidings.platform import tenants
    from tidings.store.engine import create_engine

    engine = create_engine(db_url)
    organizations = []
    try:
        async with engine.begin() as conn:
            for name, target in targets.items():
                org_id, key = await tenants.create_organization(conn, name)
                for shop, city in [("Boulangerie du Coin", "Paris"), ("Garage Central", "Lyon")]:
                    await tenants.create_business(conn, org_id, f"{shop} ({name})", city=city, country="FR")
                await tenants.create_custom_channel(conn, org_id, "Shop chat", icon="https://cdn.example.com/chat.png")
                await tenants.create_custom_channel(conn, org_id, "Reviews", is_readonly=True)
                organizations.append(Organization(name, org_id, key, target))
    finally:
        await engine.dispose()
    return organizations


async def subscribe(session: aiohttp.ClientSession, platform_url: str, organization: Organization) -> None:
    items = [{"url": organization.target, "event_type": event_type} for event_type in EVENT_TYPES]
    async with session.post(f"{platform_url}/v2/webhooks", json={"items": items},
                            headers={"x-APIKey": organization.api_key}) as answer:
        if answer.status != 200:
            raise RuntimeError(f"subscribing {organization.name} failed: {answer.status} {await answer.text()}")


async def refresh(session: aiohttp.ClientSession, state: DemoState) -> None:
    """Reads the figures of the summary line from the platform and the receiver."""
    totals = {"delivered": 0, "pending": 0, "failed": 0}
    for organization in state.organizations:
        headers = {"x-APIKey": organization.api_key}
        async with session.get(f"{state.platform_url}/v2/webhooks", headers=headers) as answer:
            configs = (await answer.json())["items"]
        for config in configs:
            for status in totals:
                async with session.get(f"{state.platform_url}/v2/webhooks/{config['id']}/deliveries",
                                       params={"status": status, "per_page": "1"}, headers=headers) as answer:
                    totals[status] += (await answer.json())["count"]
    state.deliveries = totals
    while True:
        async with session.get(f"{state.admin_url}/events", params={"after": str(state.received_after), "limit": "1000"},
                               headers={"authorization": f"Bearer {state.admin_token}"}) as answer:
            page = await answer.json()
        state.received += len(page["events"])
        state.received_after = page["next_after"]
        if len(page["events"]) < 1000:
            return


async def run_demo(options: DemoOptions, say=print, status=None) -> DemoState:
    """Runs the demo until ``options.duration`` passes or SIGINT/SIGTERM."""
    from tidings.store.migrate import upgrade

    data = options.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    for name in DB_FILES:  # each demo starts from empty databases
        (data / name).unlink(missing_ok=True)
    platform_db, receiver_db = f"sqlite:///{data / 'platform.db'}", f"sqlite:///{data / 'receiver.db'}"
    private_key, public_key = save_key_pair(generate_private_key(), data)
    platform_socket, receiver_socket, flaky_socket, admin_socket = listening = [
        bound_socket(port) for port in (options.platform_port, options.receiver_port, options.flaky_port,
                                        options.admin_port)]
    ports = [sock.getsockname()[1] for sock in listening]
    state = DemoState(platform_url=f"http://{HOST}:{ports[0]}", receiver_url=f"http://{HOST}:{ports[1]}",
                      admin_url=f"http://{HOST}:{ports[3]}", admin_token=secrets.token_urlsafe(32))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)

    upgrade(platform_db)
    state.organizations = await set_up_organizations(platform_db, {
        "Acme Bakeries": f"{state.receiver_url}/webhook",
        "Globex Garages": f"http://{HOST}:{ports[2]}/hooks",
    })
    flaky = FlakyEndpoint(seed=options.seed)
    await flaky.start(flaky_socket)
    acme = state.organizations[0]  # the receiver serves Acme alone: Globex's webhooks go to the flaky endpoint
    receiver = await _tidings("receive", "--db", receiver_db, "--public-key", str(public_key),
                              "--fd", str(receiver_socket.fileno()), "--admin-fd", str(admin_socket.fileno()),
                              "--org-id", str(acme.org_id), log=data / "receiver.log",
                              env={"TIDINGS_ADMIN_TOKEN": state.admin_token}, sockets=(receiver_socket, admin_socket))
    platform = await _tidings("serve", "--db", platform_db, "--signing-key", str(private_key), "--data-dir", str(data),
                              "--fd", str(platform_socket.fileno()), "--allow-private-targets", "--allow-http",
                              "--retry-base", "2", "--retry-factor", "2", "--max-retries", "4",
                              "--attempt-timeout", "5", "--partner-failure-rate", "0.15",
                              log=data / "platform.log", sockets=(platform_socket,))
    for sock in (platform_socket, receiver_socket, admin_socket):
        sock.close()  # the servers hold them now
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            await _wait_until_up(session, f"{state.platform_url}/openapi.json", platform, data / "platform.log")
            await _wait_until_up(session, f"{state.receiver_url}/health", receiver, data / "receiver.log")
            for organization in state.organizations:
                await subscribe(session, state.platform_url, organization)
            say(f"dashboard:  {state.platform_url}/dashboard   (sign in with the API key {acme.api_key})")
            say(f"inbox:      {state.admin_url}/inbox?token={state.admin_token}")
            say(f"API:        {state.platform_url}/docs")
            say(f"logs and databases in {data}; Ctrl-C stops")
            started = time.monotonic()  # --duration counts from here, once every page answers
            duration = options.duration or 10.0 * 365 * 24 * 3600
            shares = [0.7, 0.3]
            state.traffic = [TrafficSummary() for _ in state.organizations]

            def follow(i: int):
                return lambda live: state.traffic.__setitem__(i, live)

            traffic = [asyncio.create_task(run_traffic(
                state.platform_url, organization.api_key, rate=options.rate * share, duration=duration,
                seed=options.seed + i, stop=stop, on_result=follow(i)))
                for i, (organization, share) in enumerate(zip(state.organizations, shares))]
            while not stop.is_set() and time.monotonic() - started < duration:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, KeyError):
                    await refresh(session, state)
                if status is not None:
                    status(summary_line(state, time.monotonic() - started))
                if any(t.done() and t.exception() for t in traffic):
                    break
            stop.set()
            finished = await asyncio.gather(*traffic, return_exceptions=True)
            for i, outcome in enumerate(finished):
                if isinstance(outcome, TrafficSummary):
                    state.traffic[i] = outcome
                else:
                    say(f"traffic of {state.organizations[i].name} stopped: {outcome}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, KeyError):
                await refresh(session, state)
    finally:
        await asyncio.gather(_stop(platform), _stop(receiver))
        await flaky.stop()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    return state
