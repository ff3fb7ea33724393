"""How fast the dispatcher delivers, beside a bare aiohttp client in the same run.

    python bench/dispatch.py                      # SQLite, 100,000 pending over 10 endpoints
    python bench/dispatch.py --db postgresql://postgres@127.0.0.1:5432/test
    python bench/dispatch.py --isolation          # one of the 10 endpoints never answers
    python bench/dispatch.py --pending 1000000 --duration 30   # peak memory with 1,000,000 pending

A local sink process (``bench/sink.py``) listens on 10 ports: 10 endpoints.
The benchmark writes N pending deliveries (events of ``SampleFactory``,
rendered and signed once, as the outbox does), then, each in a child process
of its own so that neither shares a core with the seeding or the other:

- the baseline: a bare aiohttp client (one ``ClientSession``, the same
  connector limits, no database, no signing) posts the same bodies to the
  same endpoints, once before the dispatcher and once after it; the
  baseline rate is the mean of the two;
- the dispatcher: ``Dispatcher.run_until_idle()`` delivers them all.

The rate is deliveries per second from the dispatcher's start to the last
delivery recorded. Peak memory is the dispatcher process's maximum resident
set. CPU time per delivery (and per bare request) is reported beside the
rates, and their quotient as ``cpu_ratio``: on a machine shared with other
work the rates follow its load, the CPU cost per delivery much less. With ``--isolation`` the dispatcher runs twice on fresh data, all
endpoints answering and then one never answering; the rate compared is that
of the nine others, from the sink's clock.

With ``--db postgresql://...`` a fresh database is created on that server
and dropped at the end. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
SINK = HERE / "sink.py"
PYTHON = sys.executable
BARE_CAP = 60_000  # the baseline posts at most this many requests; enough for a steady rate


def client_names() -> dict[str, str]:
    """The clients of the JSON line, with their versions: the dispatcher (the client measured) and the bare baseline."""
    from importlib.metadata import version

    return {"client": f"tidings {version('tidings')} dispatcher, lean transport",
            "baseline_client": f"aiohttp {version('aiohttp')}"}


# ---------------------------------------------------------------- the sink


class Sink:
    def __init__(self, endpoints: int, hang_index: int | None) -> None:
        command = [PYTHON, str(SINK), "--listeners", str(endpoints)]
        if hang_index is not None:
            command += ["--hang", f"/hook/{hang_index}"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("listening on"):
            raise RuntimeError(f"the sink did not start: {line!r}")
        self.ports = [int(port) for port in line.split()[-1].split(",")]

    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}/hook/{index}" for index, port in enumerate(self.ports)]

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[0]}/_stats", timeout=30) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(10)


def rate_of(stats: dict, paths: list[str]) -> tuple[int, float]:
    """Requests on ``paths`` and their rate between the first and the last one."""
    count = sum(stats["per_path"].get(path, 0) for path in paths)
    first = min(stats["first"][path] for path in paths if path in stats["first"])
    last = max(stats["last"][path] for path in paths if path in stats["last"])
    return count, count / max(1e-9, last - first)


# ---------------------------------------------------------------- the database


class Database:
    """The URL to use; for PostgreSQL a fresh database, dropped at the end."""

    def __init__(self, url: str | None, scratch: Path) -> None:
        self.server_url = url
        self.name = None
        if url is None:
            self.url = f"sqlite:///{scratch / f'dispatch-{uuid.uuid4().hex[:8]}.db'}"
            self.store = "sqlite"
        else:
            import psycopg
            from sqlalchemy.engine import make_url

            self.name = f"tidings_bench_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(_plain(url), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.name}"')
            self.url = make_url(url).set(database=self.name).render_as_string(hide_password=False)
            self.store = "postgresql"

    def drop(self) -> None:
        if self.name is not None:
            import psycopg

            with psycopg.connect(_plain(self.server_url), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://").replace("postgresql+psycopg://", "postgresql://")


def seed(url: str, urls: list[str], pending: int, signer_key: str, *, conversations: int = 0,
         ordering: str = "none") -> list[bytes]:
    """One organization and configuration per endpoint, ``pending`` deliveries
    spread over them in turn; returns the distinct bodies used.

    With ``conversations``, the deliveries belong to that many conversations
    (each conversation to one endpoint) and are numbered in sequence within
    each, the last numbers kept in ``delivery_sequences`` as the outbox keeps
    them; with ``ordering="conversation"`` they are written as the outbox
    writes them then: each conversation's first ``pending``, the rest ``queued``.
    """
    from datetime import UTC, datetime

    from sqlalchemy import insert

    import tidings.store.all_tables  # noqa: F401
    from tidings.contract import dump_event
    from tidings.contract.samples import SampleFactory
    from tidings.contract.signing import Signer, generate_secret, load_private_key
    from tidings.platform.deliveries.outbox import new_webhook_id
    from tidings.store.engine import create_sync_engine
    from tidings.store.metadata import metadata
    from tidings.store.platform_tables import deliveries, delivery_sequences, events, organizations, webhook_configs

    signer = Signer(load_private_key(signer_key))
    engine = create_sync_engine(url)
    metadata.create_all(engine)
    now = datetime.now(UTC)
    bodies = [dump_event(event) for event in SampleFactory(7).events(500, "message_created")]
    signatures = [signer.vendor_signature(body) for body in bodies]
    due = time.time() - 1.0
    with engine.begin() as conn:
        config_ids = []
        org_ids = []
        for index, target in enumerate(urls):
            org_id = conn.execute(insert(organizations).values(name=f"bench {index}", created_at=now)
                                  .returning(organizations.c.id)).scalar_one()
            config_ids.append(conn.execute(insert(webhook_configs).values(
                org_id=org_id, url=target, event_type="message_created", custom_headers={"X-Bench": str(index)},
                secret=generate_secret(), ordering=ordering, created_at=now,
                updated_at=now).returning(webhook_configs.c.id)).scalar_one())
            org_ids.append(org_id)
    sequences: dict[int, int] = {}  # conversation -> last sequence
    chunk = 20_000
    for start in range(0, pending, chunk):
        count = min(chunk, pending - start)
        with engine.begin() as conn:
            event_rows = []
            delivery_rows = []
            for number in range(start + 1, start + count + 1):
                endpoint = number % len(urls)
                body_index = number % len(bodies)
                event_rows.append({"id": number, "org_id": org_ids[endpoint], "event_type": "message_created",
                                   "body": bodies[body_index], "created_at": now})
                conversation = sequence = None
                status = "pending"
                if conversations:  # conversation c goes to endpoint c % len(urls), as number does
                    conversation = number % conversations
                    sequence = sequences[conversation] = sequences.get(conversation, 0) + 1
                    if ordering == "conversation" and sequence > 1:
                        status = "queued"
                delivery_rows.append({"id": number, "event_id": number, "webhook_config_id": config_ids[endpoint],
                                      "org_id": org_ids[endpoint], "webhook_id": new_webhook_id(),
                                      "signature": signatures[body_index], "status": status,
                                      "conversation_id": conversation, "sequence": sequence,
                                      "attempt_count": 0, "next_attempt_at": due, "created_at": now})
            conn.execute(insert(events), event_rows)
            conn.execute(insert(deliveries), delivery_rows)
    if sequences:  # each conversation's last number, as the outbox keeps it (and a promotion locks it)
        with engine.begin() as conn:
            conn.execute(insert(delivery_sequences), [
                {"webhook_config_id": config_ids[conversation % len(urls)], "conversation_id": conversation,
                 "last_sequence": last} for conversation, last in sequences.items()])
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return bodies


# ---------------------------------------------------------------- the children


def run_child(arguments: list[str], *, stop_when=None, poll: float = 0.5) -> dict:
    """Runs ``bench/dispatch.py --child ...``; returns the JSON it prints last.

    ``stop_when()`` is polled; when true, the child is asked to stop (SIGTERM).
    """
    process = subprocess.Popen([PYTHON, __file__, "--child", *arguments], stdout=subprocess.PIPE, text=True)
    if stop_when is not None:
        while process.poll() is None:
            time.sleep(poll)
            if stop_when():
                process.send_signal(signal.SIGTERM)
                break
    output, _ = process.communicate(timeout=3600)
    if process.returncode != 0:
        raise RuntimeError(f"child {arguments[0]} failed ({process.returncode}): {output[-2000:]}")
    return json.loads(output.strip().splitlines()[-1])


async def child_bare(urls: list[str], bodies: list[bytes], requests: int, concurrency: int, per_endpoint: int) -> dict:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=per_endpoint)
    headers = {"Content-Type": "application/json"}
    counter = iter(range(requests))
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            for number in counter:
                async with session.post(urls[number % len(urls)], data=bodies[number % len(bodies)],
                                        headers=headers) as answer:
                    await answer.read()
                    if answer.status != 200:
                        raise RuntimeError(f"the sink answered {answer.status}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"requests": requests, "seconds": elapsed, "rate": requests / elapsed,
            "cpu_share": (usage.ru_utime + usage.ru_stime) / elapsed}


async def child_dispatch(url: str, signer_key: str, *, concurrency: int, batch: int, duration: float | None,
                         attempt_timeout: float) -> dict:
    from tidings.contract.signing import Signer, load_private_key
    from tidings.platform.settings import DeliverySettings
    from tidings.platform.workers import build_dispatcher
    from tidings.store.engine import create_engine

    engine = create_engine(url)
    settings = DeliverySettings(allow_private_targets=True, allow_http=True, batch_size=batch,
                                attempt_timeout=attempt_timeout)
    # Built as ``tidings serve`` and ``tidings worker`` build theirs.
    dispatcher = build_dispatcher(engine, Signer(load_private_key(signer_key)), settings, concurrency=concurrency)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    started = time.perf_counter()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    if duration is None:
        await dispatcher.run_until_idle(stop)
    else:
        await dispatcher.run(stop)
    elapsed = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    await engine.dispose()
    stats = dispatcher.stats
    return {"seconds": elapsed, "delivered": stats.delivered, "attempts": stats.attempts,
            "handed_back": stats.handed_back, "retried": stats.retried, "failed": stats.failed,
            "cycles": stats.flushes,
            "rate": stats.delivered / elapsed,
            "cpu_share": (cpu_after.ru_utime - cpu_before.ru_utime + cpu_after.ru_stime - cpu_before.ru_stime) / elapsed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["bare", "dispatch"])
    parser.add_argument("--urls", default="")
    parser.add_argument("--db")
    parser.add_argument("--key")
    parser.add_argument("--requests", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--per-endpoint", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--attempt-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    try:
        import uvloop
        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    if args.kind == "bare":
        from tidings.contract import dump_event
        from tidings.contract.samples import SampleFactory

        bodies = [dump_event(event) for event in SampleFactory(7).events(500, "message_created")]
        result = run(child_bare(args.urls.split(","), bodies, args.requests, args.concurrency, args.per_endpoint))
    else:
        result = run(child_dispatch(args.db, args.key, concurrency=args.concurrency, batch=args.batch,
                                    duration=args.duration, attempt_timeout=args.attempt_timeout))
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- the benchmark


def dispatcher_run(args, urls: list[str], key: str, scratch: Path, sink: Sink, *, healthy_paths=None) -> tuple[dict, dict, str]:
    """Seeds a fresh database and runs the dispatcher on it; returns its
    result, the sink's counts afterwards, and the store's name."""
    database = Database(args.db, scratch)
    try:
        before = sink.stats()["per_path"]
        seconds = time.perf_counter()
        seed(database.url, urls, args.pending, key, conversations=getattr(args, "conversations", 0),
             ordering=getattr(args, "ordering", "none"))
        print(f"seeded {args.pending:,} pending deliveries in {time.perf_counter() - seconds:.1f} s", file=sys.stderr)
        stop_when = None
        if healthy_paths is not None:
            expected = sum(1 for number in range(1, args.pending + 1)
                           if f"/hook/{number % len(urls)}" in healthy_paths)
            goal = {path: before.get(path, 0) for path in healthy_paths}

            def stop_when() -> bool:
                counts = sink.stats()["per_path"]
                return sum(counts.get(path, 0) - goal[path] for path in healthy_paths) >= expected

        child = ["dispatch", "--db", database.url, "--key", key, "--concurrency", str(args.concurrency),
                 "--batch", str(args.batch), "--attempt-timeout", str(args.attempt_timeout)]
        if args.duration:
            child += ["--duration", str(args.duration)]
        result = run_child(child, stop_when=stop_when, poll=0.2)
        return result, sink.stats(), database.store
    finally:
        database.drop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description="Dispatcher throughput beside a bare aiohttp client.")
    parser.add_argument("--db", help="postgresql://... (a fresh database is created there); SQLite by default")
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--per-endpoint", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--attempt-timeout", type=float, default=10.0)
    parser.add_argument("--duration", type=float, help="stop the dispatcher after this many seconds")
    parser.add_argument("--isolation", action="store_true", help="compare with one endpoint never answering")
    args = parser.parse_args()

    from tidings.contract.signing import generate_private_key, private_key_whsk

    key = private_key_whsk(generate_private_key())
    with tempfile.TemporaryDirectory(prefix="tidings-bench-") as scratch_name:
        scratch = Path(scratch_name)
        if args.isolation:
            report = isolation(args, key, scratch)
        else:
            report = throughput(args, key, scratch)
    print(json.dumps(report))


def _load_average() -> list[float]:
    """The machine's load average (1, 5, 15 minutes) at the end of the run: how shared the cores were."""
    return [round(value, 2) for value in os.getloadavg()]


def throughput(args, key: str, scratch: Path) -> dict:
    """The bare client runs before and after the dispatcher, and the baseline is
    the mean of the two: on a machine whose load changes (other test suites),
    one bare run before would compare the dispatcher with another minute."""
    sink = Sink(args.endpoints, None)
    load_before = _load_average()
    try:
        urls = sink.urls()
        bare_command = ["bare", "--urls", ",".join(urls), "--requests", str(min(args.pending, BARE_CAP)),
                        "--concurrency", str(args.concurrency), "--per-endpoint", str(args.per_endpoint)]
        bare_before = run_child(bare_command)
        print(f"bare aiohttp, before: {bare_before['rate']:,.0f}/s", file=sys.stderr)
        result, _, store = dispatcher_run(args, urls, key, scratch, sink)
        print(f"dispatcher: {result['rate']:,.0f}/s, peak {result['peak_rss_mb']:.0f} MB", file=sys.stderr)
        bare_after = run_child(bare_command)
        print(f"bare aiohttp, after: {bare_after['rate']:,.0f}/s", file=sys.stderr)
    finally:
        sink.stop()
    baseline = (bare_before["rate"] + bare_after["rate"]) / 2
    cpu_us = result["cpu_share"] * result["seconds"] / max(1, result["attempts"]) * 1e6
    bare_cpu_us = sum(bare["cpu_share"] * bare["seconds"] / bare["requests"] * 1e6
                      for bare in (bare_before, bare_after)) / 2
    return {"bench": "dispatch", "store": store, "rate": round(result["rate"], 1),
            "baseline_rate": round(baseline, 1), "ratio": round(result["rate"] / baseline, 3),
            "baseline_rates": [round(bare_before["rate"], 1), round(bare_after["rate"], 1)],
            "pending": args.pending, "endpoints": args.endpoints, "delivered": result["delivered"],
            "seconds": round(result["seconds"], 2), "peak_rss_mb": round(result["peak_rss_mb"], 1),
            "handed_back": result["handed_back"], "concurrency": args.concurrency, "batch": args.batch,
            "duration_limit": args.duration,
            # CPU time per delivery (the dispatcher's process, its aiosqlite thread included) and per
            # bare request: their quotient is the ratio the rates would have with equal shares of the cores.
            "cpu_us_per_delivery": round(cpu_us, 1), "baseline_cpu_us_per_request": round(bare_cpu_us, 1),
            "cpu_ratio": round(bare_cpu_us / cpu_us, 3), **client_names(),
            "load_average": {"before": load_before, "after": _load_average()}}


def isolation(args, key: str, scratch: Path) -> dict:
    dead = args.endpoints - 1
    healthy = [f"/hook/{index}" for index in range(args.endpoints) if index != dead]
    rates = {}
    for label, hang in (("all answering", None), ("one never answering", dead)):
        sink = Sink(args.endpoints, hang)
        try:
            result, stats, store = dispatcher_run(args, sink.urls(), key, scratch, sink,
                                                  healthy_paths=healthy if hang is not None else None)
            count, rate = rate_of(stats, healthy)
            rates[label] = rate
            print(f"{label}: the nine others got {count:,} at {rate:,.0f}/s "
                  f"(dispatcher: {result['attempts']:,} attempts, {result['handed_back']:,} handed back)",
                  file=sys.stderr)
        finally:
            sink.stop()
    isolated, normal = rates["one never answering"], rates["all answering"]
    return {"bench": "dispatch-isolation", "store": store, "rate": round(isolated, 1),
            "baseline_rate": round(normal, 1), "ratio": round(isolated / normal, 3), "pending": args.pending,
            "endpoints": args.endpoints, "dead_endpoint": f"/hook/{dead}", "attempt_timeout": args.attempt_timeout,
            "client": client_names()["client"],
            "load_average": _load_average()}


if __name__ == "__main__":
    main()
