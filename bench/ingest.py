"""How fast the platform ingests custom-channel messages, beside a plain
FastAPI endpoint committing one row per request to SQLite, in the same run.

    python bench/ingest.py                                  # SQLite
    python bench/ingest.py --db postgresql://postgres@127.0.0.1:5432/test
    python bench/ingest.py --duration 10 --concurrency 64

The platform (``create_app``, uvicorn) runs in a child process over a fresh
database holding one organization with a webhook configuration for each
event type (``message_created`` and ``message_updated``, so every message
is recorded with its event and a delivery, as the transactional outbox
does); no dispatcher runs. It is served as ``tidings serve`` serves it: the
ingestion fast path (``fast_ingest``) and the serving GC settings.
``--concurrency`` clients in this process, each on one keep-alive
connection, post messages (unique ``external_message_id``, spread over
1,000 conversations) for ``--duration`` seconds, each sending its next once
answered. The client is a lean asyncio one (``--client aiohttp`` for the
former one, which cost about 350 us of CPU per request on the same two
cores). The baseline, a plain FastAPI + pydantic endpoint inserting one row
per request into SQLite through the same engine set-up (WAL,
``synchronous=FULL``), runs in a child process under the same load and
client. Beside the rates: the CPU time per message of the server process
and of the client, and the load average at the end (the machine is shared).
The last line printed is one JSON object.
"""

# No ``from __future__ import annotations``: FastAPI reads the baseline's local model from its annotations.
import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

PYTHON = sys.executable
CONVERSATIONS = 1_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- the servers (child processes)


def serve_platform(db_url: str, port: int) -> None:
    import uvicorn

    from tidings.contract.signing import Signer, generate_private_key
    from tidings.apps.platform import platform_app
    from tidings.platform.api.app import http_protocol, serving_gc
    from tidings.platform.api.context import PlatformContext
    from tidings.platform.settings import DeliverySettings, PlatformSettings
    from tidings.store.engine import create_engine

    settings = PlatformSettings(db_url=db_url, delivery=DeliverySettings(allow_private_targets=True, allow_http=True))
    engine = create_engine(db_url, pool_size=20, max_overflow=0)
    app = platform_app(PlatformContext(settings=settings, engine=engine, signer=Signer(generate_private_key())))
    # As ``tidings serve`` runs it: with the ingestion fast path and its garbage collector settings.
    with serving_gc():
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, http=http_protocol())


def serve_baseline(db_url: str, port: int) -> None:
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel
    from sqlalchemy import Column, Integer, MetaData, String, Table, Text, insert

    from tidings.store.engine import create_engine, create_sync_engine

    metadata = MetaData()
    rows = Table("baseline_messages", metadata, Column("id", Integer, primary_key=True),
                 Column("external_message_id", String(500), nullable=False), Column("content", Text, nullable=False))
    sync_engine = create_sync_engine(db_url)
    metadata.create_all(sync_engine)
    sync_engine.dispose()
    engine = create_engine(db_url, pool_size=20, max_overflow=0)

    class Incoming(BaseModel):
        business_id: str
        external_conversation_id: str
        external_message_id: str
        content: str
        sender_type: str

    app = FastAPI()

    @app.post("/v2/custom-channels/{channel_id}/messages")
    async def ingest(channel_id: str, body: Incoming) -> dict:
        async with engine.begin() as conn:
            row_id = (await conn.execute(insert(rows).values(
                external_message_id=body.external_message_id, content=body.content).returning(rows.c.id))).scalar_one()
        return {"message_id": row_id}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class Server:
    def __init__(self, role: str, db_url: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen([PYTHON, __file__, "--child", role, "--db", db_url, "--port", str(self.port)])
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the {role} server did not start") from None
                time.sleep(0.05)

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far, user and system."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


# ---------------------------------------------------------------- the load


def message_body(run: str, number: int, business_id: str) -> bytes:
    return json.dumps({
        "business_id": business_id, "external_conversation_id": f"{run}-conv-{number % CONVERSATIONS}",
        "external_message_id": f"{run}-msg-{number}", "content": f"Hello, is order {number} ready?",
        "sender_type": "Consumer", "consumer_name": "Bench Client",
    }).encode()


def summary(latencies: list[float], errors: dict[str, int], elapsed: float) -> dict:
    latencies.sort()

    def percentile(share: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(share * len(latencies)))] * 1000, 2) if latencies else None

    return {"requests": len(latencies), "rate": round(len(latencies) / elapsed, 1), "errors": errors,
            "p50_ms": percentile(0.50), "p99_ms": percentile(0.99)}


def client_name(client: str) -> str:
    """The client that made the load, with its version, for the JSON line."""
    if client == "aiohttp":
        from importlib.metadata import version

        return f"aiohttp {version('aiohttp')}"
    return f"lean asyncio client (Python {sys.version.split()[0]})"


async def load(url: str, api_key: str, channel_id: str, business_id: str, *, duration: float, concurrency: int,
               run: str, client: str = "lean") -> dict:
    """``concurrency`` clients post messages for ``duration`` seconds, each
    sending its next message once its previous one is answered."""
    if client == "aiohttp":
        return await load_aiohttp(url, api_key, channel_id, business_id, duration=duration,
                                  concurrency=concurrency, run=run)
    return await load_lean(url, api_key, channel_id, business_id, duration=duration, concurrency=concurrency, run=run)


class _Answers(asyncio.Protocol):
    """One keep-alive connection of the lean client: parses answers (status
    line, Content-Length, body) and hands each to the waiting request."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self.buffer[:head_end]).lower()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name == b"content-length":
                length = int(value)
        if len(self.buffer) < head_end + 4 + length:
            return
        del self.buffer[:head_end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(int(head[9:12]))  # b"http/1.1 200 ok"

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))


async def load_lean(url: str, api_key: str, channel_id: str, business_id: str, *, duration: float, concurrency: int,
                    run: str) -> dict:
    """The default client: raw HTTP/1.1 on asyncio protocols. It costs a
    fraction of aiohttp's CPU per request (measured: about 350 us with
    aiohttp), and it runs on the same two cores as the server; the baseline
    gets the same client."""
    loop = asyncio.get_running_loop()
    host, port = url.removeprefix("http://").split(":")
    head = (f"POST /v2/custom-channels/{channel_id}/messages HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"x-APIKey: {api_key}\r\nContent-Type: application/json\r\n").encode()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(10**12))

    async def client(stop_at: float) -> None:
        transport, answers = await loop.create_connection(_Answers, "127.0.0.1", int(port))
        try:
            while time.perf_counter() < stop_at:
                body = message_body(run, next(counter), business_id)
                answers.waiter = loop.create_future()
                started = time.perf_counter()
                transport.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                try:
                    status = await answers.waiter
                except ConnectionError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    return
                if status != 200:
                    errors[str(status)] = errors.get(str(status), 0) + 1
                    continue
                latencies.append(time.perf_counter() - started)
        finally:
            transport.close()

    started = time.perf_counter()
    await asyncio.gather(*[client(started + duration) for _ in range(concurrency)])
    return summary(latencies, errors, time.perf_counter() - started)


async def load_aiohttp(url: str, api_key: str, channel_id: str, business_id: str, *, duration: float,
                       concurrency: int, run: str) -> dict:
    """The former client (``--client aiohttp``): aiohttp, one session."""
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(10**12))
    path = f"{url}/v2/custom-channels/{channel_id}/messages"
    headers = {"x-APIKey": api_key, "Content-Type": "application/json"}

    async def client(session: aiohttp.ClientSession, stop_at: float) -> None:
        while time.perf_counter() < stop_at:
            body = message_body(run, next(counter), business_id)
            started = time.perf_counter()
            try:
                async with session.post(path, data=body, headers=headers) as answer:
                    await answer.read()
                    if answer.status != 200:
                        errors[str(answer.status)] = errors.get(str(answer.status), 0) + 1
                        continue
            except aiohttp.ClientError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        started = time.perf_counter()
        await asyncio.gather(*[client(session, started + duration) for _ in range(concurrency)])
        elapsed = time.perf_counter() - started
    return summary(latencies, errors, elapsed)


# ---------------------------------------------------------------- set-up


def prepare_platform_database(db_url: str) -> tuple[str, str, str]:
    """Schema, one organization, its business and channel, and its two
    webhook configurations; returns ``(api_key, channel_id, business_id)``."""
    from tidings.store.migrate import head_revision, upgrade

    if head_revision() != "base":
        upgrade(db_url)
    else:
        from tidings.store import all_tables  # noqa: F401
        from tidings.store.engine import create_sync_engine
        from tidings.store.metadata import metadata

        engine = create_sync_engine(db_url)
        metadata.create_all(engine)
        engine.dispose()

    async def tenants() -> tuple[str, str, str]:
        from sqlalchemy import insert

        from tidings.contract import utcnow
        from tidings.contract.signing import generate_secret
        from tidings.platform import tenants as setup
        from tidings.store.engine import create_engine
        from tidings.store.platform_tables import webhook_configs

        engine = create_engine(db_url)
        try:
            async with engine.begin() as conn:
                org_id, key = await setup.create_organization(conn, "Bench")
                business_id = await setup.create_business(conn, org_id, "Bench shop")
                channel_id = await setup.create_custom_channel(conn, org_id, "Bench chat")
                now = utcnow()
                for event_type in ("message_created", "message_updated"):
                    await conn.execute(insert(webhook_configs).values(
                        org_id=org_id, url="http://127.0.0.1:9/hook", event_type=event_type, custom_headers={},
                        secret=generate_secret(), created_at=now, updated_at=now))
        finally:
            await engine.dispose()
        return key, channel_id, business_id

    return asyncio.run(tenants())


def stored_counts(db_url: str) -> dict:
    from sqlalchemy import func, select

    from tidings.store.engine import create_sync_engine
    from tidings.store.platform_tables import deliveries, events, messages

    engine = create_sync_engine(db_url)
    try:
        with engine.connect() as conn:
            return {name: conn.execute(select(func.count()).select_from(table)).scalar_one()
                    for name, table in (("messages", messages), ("events", events), ("deliveries", deliveries))}
    finally:
        engine.dispose()


class PostgresDatabase:
    def __init__(self, server_url: str) -> None:
        import psycopg
        from sqlalchemy.engine import make_url

        self.server_url = server_url
        self.name = f"tidings_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.url = make_url(server_url).set(database=self.name).render_as_string(hide_password=False)

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


# ---------------------------------------------------------------- main


def run_async(coroutine):
    """``asyncio.run``, on uvloop when it is installed (the servers use it too)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def measure(role: str, db_url: str, setup, *, duration: float, concurrency: int, client: str) -> dict:
    key, channel_id, business_id = setup
    server = Server(role, db_url)
    try:
        # A short warm-up, so that imports and first connections are not measured.
        run_async(load(server.url, key, channel_id, business_id, duration=min(1.0, duration),
                       concurrency=concurrency, run="warm", client=client))
        server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
        result = run_async(load(server.url, key, channel_id, business_id, duration=duration,
                                concurrency=concurrency, run="run", client=client))
        server_cpu, client_cpu = server.cpu_seconds() - server_cpu, time.process_time() - client_cpu
        done = max(1, result["requests"])
        # CPU per message beside the rate: the machine is shared, so rates are noisy; CPU per message less so.
        result["server_cpu_us"] = round(server_cpu / done * 1e6)
        result["client_cpu_us"] = round(client_cpu / done * 1e6)
        return result
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=None, help="a PostgreSQL server URL (a fresh database is made); SQLite if absent")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load for each server")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent clients")
    parser.add_argument("--client", choices=["lean", "aiohttp"], default="lean",
                        help="the HTTP client of the load (the same for both servers)")
    parser.add_argument("--child", choices=["platform", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "platform":
        serve_platform(args.db, args.port)
        return
    if args.child == "baseline":
        serve_baseline(args.db, args.port)
        return

    with tempfile.TemporaryDirectory(prefix="tidings-bench-") as scratch:
        postgres = PostgresDatabase(args.db) if args.db else None
        try:
            platform_url = postgres.url if postgres else f"sqlite:///{Path(scratch) / 'platform.db'}"
            baseline_url = f"sqlite:///{Path(scratch) / 'baseline.db'}"
            setup = prepare_platform_database(platform_url)
            baseline = measure("baseline", baseline_url, setup, duration=args.duration, concurrency=args.concurrency,
                               client=args.client)
            print(f"baseline (FastAPI, one SQLite row per request): {baseline}", flush=True)
            platform = measure("platform", platform_url, setup, duration=args.duration, concurrency=args.concurrency,
                               client=args.client)
            print(f"platform (ingestion, event and delivery per message): {platform}", flush=True)
            counts = stored_counts(platform_url)
        finally:
            if postgres:
                postgres.drop()
    result = {
        "bench": "ingest", "store": "postgresql" if args.db else "sqlite",
        "rate": platform["rate"], "baseline_rate": baseline["rate"],
        "ratio": round(platform["rate"] / baseline["rate"], 3) if baseline["rate"] else None,
        "requests": platform["requests"], "errors": platform["errors"],
        "p50_ms": platform["p50_ms"], "p99_ms": platform["p99_ms"],
        "baseline_p50_ms": baseline["p50_ms"], "baseline_p99_ms": baseline["p99_ms"],
        "server_cpu_us": platform["server_cpu_us"], "client_cpu_us": platform["client_cpu_us"],
        "baseline_server_cpu_us": baseline["server_cpu_us"], "baseline_client_cpu_us": baseline["client_cpu_us"],
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "concurrency": args.concurrency, "duration_s": args.duration, "client": client_name(args.client),
        "webhook_configs": 2,
        "stored": counts, "cpus": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
