"""How fast the receiver acknowledges signed events, beside two baselines in the same run.

    python bench/receive.py                                   # SQLite in a temporary folder
    python bench/receive.py --db postgresql://postgres@127.0.0.1:5432/test
    python bench/receive.py --duration 8 --connections 256 --workers 2

Distinct events of ``SampleFactory`` are signed once, up front, as the
platform sends them (vendor header and Standard Webhooks ``v1a``, both
Ed25519). Three servers then take the same requests, each in its own
process, each on a fresh database:

- ``bare``: an ASGI app on uvicorn that answers 200 without reading anything;
- ``plain``: a plain FastAPI + pydantic endpoint that does the same job as
  the receiver, obviously: verify the signature, validate the event with the
  contract's pydantic models, insert it into SQLite and commit, one event at
  a time (the ``baseline_rate``);
- ``receiver``: ``tidings receive``, the service as users run it (group
  commit, inbox projection and handler runner following the log), with
  ``--workers`` processes (2 by default, one per core).

Throughput: many connections post as fast as answers come back, for
``--duration`` seconds; the rate counts 200 answers only, and for the
receiver the benchmark then checks that every one of them is in the store.
The client is ``wrk`` with a Lua script that replays the pre-signed requests
(``scripts/install-bench-tools.sh`` installs it; ``make bench`` runs that
first). Without wrk the benchmark stops and says so: the Python client of this
file (``--client python``, only when asked for) takes CPU from the servers on
the same cores and reports about half the rate. The JSON names the client and
its version.

Latency: the receiver, restarted on a fresh database, gets events at a fixed
rate (``--latency-rate``, 2,000/s) from an open-loop client: each request
is due at its own time, and its latency runs from that time to the answer's
last byte, so a server that falls behind is charged for the wait. The bare
app gets the same schedule (``bare_p99_ms``): the floor that the machine, the
client and the loopback impose, whatever the server does.

The last line printed is one JSON object:
``{"bench", "store", "rate", "baseline_rate", "ratio", "bare_rate", "p99_ms", ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from fastapi import Request  # at module level: the plain endpoint's annotation must resolve

PYTHON = sys.executable
HERE = Path(__file__).resolve()

LUA_SCRIPT = r"""
-- Replays pre-signed requests: thread i takes every n-th line of the file.
local counter = 0
local threads = {}
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  local nthreads = tonumber(args[1])
  requests = {}
  local i = 0
  for line in io.lines(args[2]) do
    if i % nthreads == tid then
      local body, vsig, id, ts, wsig = line:match("([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)")
      local headers = {["Content-Type"]="application/json", ["X-Tidings-Signature-v1"]=vsig,
                       ["webhook-id"]=id, ["webhook-timestamp"]=ts, ["webhook-signature"]=wsig}
      table.insert(requests, wrk.format("POST", args[3], headers, body))
    end
    i = i + 1
  end
  index = 0
  ok = 0
  other = 0
end
function request()
  index = index + 1
  if index > #requests then index = 1 end
  return requests[index]
end
function response(status, headers, body)
  if status == 200 then ok = ok + 1 else other = other + 1 end
end
function done(summary, latency, requests)
  local total_ok, total_other = 0, 0
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    total_other = total_other + thread:get("other")
  end
  io.write(string.format("WRK ok=%d other=%d duration_us=%d\n", total_ok, total_other, summary.duration))
end
"""


# ---------------------------------------------------------------- the two baselines, served by this file


def bare_app():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def plain_app(db_path: str, public_pem: str):
    """The obvious FastAPI receiver: verify, validate with pydantic, insert, commit; per event."""
    import threading

    from fastapi import FastAPI, HTTPException
    from pydantic import TypeAdapter, ValidationError
    from starlette.concurrency import run_in_threadpool

    from tidings.contract import MessageCreated, MessageUpdated
    from tidings.contract.signing import SignatureError, Verifier, load_public_key

    verifier = Verifier(public_keys=[load_public_key(public_pem)])
    events = TypeAdapter(MessageCreated | MessageUpdated)
    local = threading.local()
    setup = sqlite3.connect(db_path)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, webhook_id TEXT UNIQUE, type TEXT, body BLOB)")
    setup.close()

    def connection() -> sqlite3.Connection:
        if not hasattr(local, "db"):
            local.db = sqlite3.connect(db_path)
            local.db.execute("PRAGMA synchronous=FULL")
            local.db.execute("PRAGMA busy_timeout=30000")
        return local.db

    app = FastAPI()

    @app.post("/webhook")
    async def receive(request: Request):
        body = await request.body()
        headers = dict(request.headers)
        try:
            verifier.verify(body, headers)
        except SignatureError as exc:
            raise HTTPException(401, str(exc)) from None
        try:
            event = events.validate_json(body)
        except ValidationError as exc:
            raise HTTPException(400, str(exc)) from None
        def store() -> None:
            db = connection()
            db.execute("INSERT OR IGNORE INTO events (webhook_id, type, body) VALUES (?, ?, ?)",
                       (headers.get("webhook-id"), event.type, body))
            db.commit()

        await run_in_threadpool(store)
        return {"status": "stored"}

    return app


def serve(kind: str, port: int, db_path: str, key_file: str) -> None:
    import uvicorn

    app = bare_app() if kind == "bare" else plain_app(db_path, Path(key_file).read_text())
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")


# ---------------------------------------------------------------- preparing requests


def sign_requests(count: int) -> tuple[str, list[tuple[bytes, dict[str, str]]]]:
    from tidings.contract import dump_event
    from tidings.contract.samples import SampleFactory
    from tidings.contract.signing import Signer, generate_private_key, public_key_pem

    key = generate_private_key()
    signer = Signer(key)
    run = uuid.uuid4().hex[:8]
    stamp = int(time.time())
    signed = []
    for number, event in enumerate(SampleFactory(2024).events(count)):
        body = dump_event(event)
        signed.append((body, signer.sign(body, msg_id=f"bench-{run}-{number}", timestamp=stamp)))
    return public_key_pem(key.public_key()).decode(), signed


def write_wrk_requests(signed, path: Path) -> None:
    with path.open("w") as stream:
        for body, headers in signed:
            stream.write("\t".join([body.decode(), headers["X-Tidings-Signature-v1"], headers["webhook-id"],
                                    headers["webhook-timestamp"], headers["webhook-signature"]]) + "\n")


def raw_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, command: list[str], port: int, env: dict | None = None) -> None:
        self.port = port
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        env={**os.environ, **(env or {})}, start_new_session=True)
        deadline = time.monotonic() + 30
        while not self.accepting():
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server's processes (its session), user and system."""
        ticks = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.process.pid:  # fields[3] is the session id
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def accepting(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


# ---------------------------------------------------------------- clients


def wrk_version() -> str:
    """``wrk 4.1.0``, from ``wrk -v`` (which exits 1 after printing it)."""
    shown = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10).stdout
    found = re.search(r"wrk\s+(?:\S*/)?(\d+(?:\.\d+)+)", shown)
    return f"wrk {found.group(1)}" if found else "wrk (version unknown)"


def run_wrk(port: int, requests_file: Path, connections: int, duration: float) -> tuple[int, int, float]:
    """(200 answers, other answers, seconds) from wrk replaying the pre-signed requests."""
    script = requests_file.with_suffix(".lua")
    script.write_text(LUA_SCRIPT)
    threads = 2
    finished = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s", "-s", str(script),
         f"http://127.0.0.1:{port}/", "--", str(threads), str(requests_file), "/webhook"],
        capture_output=True, text=True, timeout=duration + 60,
    )
    lines = [line for line in finished.stdout.splitlines() if line.startswith("WRK ")]
    if not lines:
        raise RuntimeError(f"wrk failed: {finished.stdout[-1000:]} {finished.stderr[-1000:]}")
    line = lines[0]
    fields = dict(part.split("=") for part in line.split()[1:])
    return int(fields["ok"]), int(fields["other"]), int(fields["duration_us"]) / 1e6


async def _read_answer(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def closed_loop(port: int, raw: list[bytes], connections: int, duration: float) -> tuple[int, int, float]:
    """The fallback for wrk: each connection posts as soon as its previous answer is in."""
    counts = [0, 0]
    stop_at = time.monotonic() + duration
    cursor = iter(range(10**9))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop_at:
            writer.write(raw[next(cursor) % len(raw)])
            status = await _read_answer(reader)
            counts[0 if status == 200 else 1] += 1
        writer.close()

    started = time.monotonic()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return counts[0], counts[1], time.monotonic() - started


async def open_loop(port: int, raw: list[bytes], rate: float, connections: int) -> tuple[list[float], dict[int, int]]:
    """Each request due at ``start + i / rate``; latency from that time to its answer."""
    queue: asyncio.Queue = asyncio.Queue()
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while True:
            item = await queue.get()
            if item is None:
                break
            due, request = item
            writer.write(request)
            status = await _read_answer(reader)
            latencies.append(time.monotonic() - due)
            statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    await asyncio.sleep(0.2)
    start = time.monotonic() + 0.05
    for number, request in enumerate(raw):
        due = start + number / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, request))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return latencies, statuses


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# ---------------------------------------------------------------- the receiver's store


def fresh_store(base_url: str | None, folder: Path, name: str) -> tuple[str, callable]:
    """A database URL for one server, and a function that removes it."""
    if base_url is None or base_url.startswith("sqlite"):
        path = folder / f"{name}.db"
        return f"sqlite:///{path}", lambda: None
    import psycopg
    from sqlalchemy.engine import make_url

    database = f"tidings_bench_{name}_{uuid.uuid4().hex[:8]}"
    admin = make_url(base_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    return make_url(base_url).set(database=database).render_as_string(hide_password=False), drop


def stored_keys(db_url: str) -> set[str]:
    from sqlalchemy import select

    from tidings.store.engine import create_sync_engine
    from tidings.store.receiver_tables import receiver_events

    engine = create_sync_engine(db_url)
    with engine.connect() as conn:
        keys = {row[0] for row in conn.execute(select(receiver_events.c.dedupe_key))}
    engine.dispose()
    return keys


def receiver_command(db_url: str, key_file: Path, port: int, workers: int, verify_threads: int) -> list[str]:
    """What ``tidings receive --db URL --public-key FILE --port P --workers N`` runs, without the rest of the CLI."""
    from tidings.apps.receiver_service import ReceiverConfig

    config = ReceiverConfig(db_url=db_url, public_keys=[key_file.read_text()], any_org=True, workers=workers,
                            verify_threads=verify_threads)
    code = ("import sys; from tidings.apps.receiver_service import ReceiverConfig, run_service; "
            "run_service(ReceiverConfig.from_json(sys.argv[1]), '127.0.0.1', int(sys.argv[2]))")
    return [PYTHON, "-c", code, config.to_json(), str(port)]


# ---------------------------------------------------------------- the run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=None, help="database URL for the receiver (default: SQLite in a temporary folder)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of each throughput run")
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the receiver")
    parser.add_argument("--verify-threads", type=int, default=1, help="per worker; 0 verifies in the event loop")
    parser.add_argument("--latency-rate", type=float, default=2000.0)
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    parser.add_argument("--events", type=int, default=0, help="distinct events to sign (default: enough for the runs)")
    parser.add_argument("--client", choices=["wrk", "python"], default="wrk",
                        help="the throughput client: wrk (default), or this file's asyncio one when asked for")
    parser.add_argument("--only-receiver", action="store_true", help="skip the baselines (while tuning)")
    args = parser.parse_args()

    client = args.client
    if client == "wrk" and not shutil.which("wrk"):
        sys.exit("error: wrk is not installed: run scripts/install-bench-tools.sh "
                 "(or pass --client python for the slower Python client)")
    client_name = wrk_version() if client == "wrk" else f"asyncio closed loop (Python {sys.version.split()[0]})"
    store = "postgresql" if args.db and args.db.startswith("postgres") else "sqlite"
    latency_count = int(args.latency_rate * args.latency_seconds)
    count = args.events or int(14_000 * args.duration) + latency_count
    load_at_start = os.getloadavg()[0]
    print(f"signing {count} distinct events ...", file=sys.stderr, flush=True)
    public_pem, signed = sign_requests(count)
    throughput_requests, latency_requests = signed[:-latency_count], signed[-latency_count:]

    folder = Path(tempfile.mkdtemp(prefix="tidings-bench-receive-"))
    key_file = folder / "sender.pub.pem"
    key_file.write_text(public_pem)
    requests_file = folder / "requests.tsv"
    write_wrk_requests(throughput_requests, requests_file)
    raw = [raw_request("/webhook", body, headers) for body, headers in throughput_requests]

    def throughput(port: int) -> tuple[int, int, float]:
        if client == "wrk":
            return run_wrk(port, requests_file, args.connections, args.duration)
        return asyncio.run(closed_loop(port, raw, args.connections, args.duration))

    results: dict[str, dict] = {}
    try:
        for kind in () if args.only_receiver else ("bare", "plain"):
            port = free_port()
            db_path = folder / f"{kind}.db"
            server = Server([PYTHON, str(HERE), "--serve", kind, "--port", str(port), "--db-path", str(db_path),
                             "--key-file", str(key_file)], port)
            try:
                ok, other, seconds = throughput(port)
                if kind == "bare":  # the machine's own latency floor at the same rate, for context
                    bare_latency_raw = [raw_request("/webhook", body, headers) for body, headers in latency_requests]
                    bare_latencies, _ = asyncio.run(open_loop(port, bare_latency_raw, args.latency_rate, 64))
            finally:
                server.stop()
            results[kind] = {"rate": ok / seconds, "ok": ok, "other": other}
            print(f"{kind}: {ok / seconds:,.0f} answers/s ({ok} ok, {other} other, {seconds:.1f} s)", file=sys.stderr)

        db_url, drop = fresh_store(args.db, folder, "throughput")
        port = free_port()
        server = Server(receiver_command(db_url, key_file, port, args.workers, args.verify_threads), port)
        try:
            cpu_before = server.cpu_seconds()
            ok, other, seconds = throughput(port)
            cpu_used = server.cpu_seconds() - cpu_before
        finally:
            server.stop()
        keys = stored_keys(db_url)
        sent_ids = {f"id:{headers['webhook-id']}" for _, headers in throughput_requests}
        drop()
        # Every 200 is for a stored event: the store holds at least as many of ours as were acknowledged.
        stored = len(keys & sent_ids)
        cpu_per_event = cpu_used / ok * 1e6 if ok else None
        results["receiver"] = {"rate": ok / seconds, "ok": ok, "other": other, "stored": stored, "cpu_us": cpu_per_event}
        print(f"receiver: {ok / seconds:,.0f} events/s ({ok} ok, {other} other, {stored} stored, "
              f"{cpu_per_event:.0f} µs of server CPU per event)", file=sys.stderr)

        db_url, drop = fresh_store(args.db, folder, "latency")
        port = free_port()
        server = Server(receiver_command(db_url, key_file, port, args.workers, args.verify_threads), port)
        try:
            latency_raw = [raw_request("/webhook", body, headers) for body, headers in latency_requests]
            latencies, statuses = asyncio.run(open_loop(port, latency_raw, args.latency_rate, 64))
        finally:
            server.stop()
        drop()
        p50, p99 = percentile(latencies, 0.5) * 1e3, percentile(latencies, 0.99) * 1e3
        print(f"latency at {args.latency_rate:,.0f}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms, answers {statuses}", file=sys.stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    bare_p99 = round(percentile(bare_latencies, 0.99) * 1e3, 2) if not args.only_receiver else None
    receiver = results["receiver"]
    plain = results.get("plain", {"rate": 0})
    bare = results.get("bare", {"rate": 0})
    summary = {
        "bench": "receive",
        "store": store,
        "rate": round(receiver["rate"]),
        "baseline_rate": round(plain["rate"]),
        "ratio": round(receiver["rate"] / plain["rate"], 2) if plain["rate"] else None,
        "bare_rate": round(bare["rate"]),
        "p99_ms": round(p99, 2),
        "p50_ms": round(p50, 2),
        "bare_p99_ms": bare_p99,
        "latency_rate": args.latency_rate,
        "latency_answers": {str(k): v for k, v in statuses.items()},
        "acknowledged": receiver["ok"],
        "acknowledged_and_stored": receiver["stored"],
        "not_200": receiver["other"],
        "server_cpu_us_per_event": round(receiver["cpu_us"]) if receiver["cpu_us"] else None,
        "connections": args.connections,
        "workers": args.workers,
        "verify_threads": args.verify_threads,
        "duration_s": args.duration,
        "client": client_name,
        "latency_client": f"asyncio open loop (Python {sys.version.split()[0]})",
        "cpus": os.cpu_count(),
        "loadavg_1m": [round(load_at_start, 2), round(os.getloadavg()[0], 2)],  # other work on the machine, start and end
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve_parser = argparse.ArgumentParser()
        serve_parser.add_argument("--serve", choices=["bare", "plain"])
        serve_parser.add_argument("--port", type=int)
        serve_parser.add_argument("--db-path")
        serve_parser.add_argument("--key-file")
        options = serve_parser.parse_args()
        serve(options.serve, options.port, options.db_path, options.key_file)
    else:
        main()
