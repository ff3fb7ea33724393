"""No loss: ``tidings receive`` is killed with SIGKILL in the middle of a load
of signed events from a client that retries until it gets 200; after a
restart on the same SQLite file, every event that was answered 200 is there."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import aiohttp
import pytest

from tests.test_receiver_helpers import Keys, free_port
from tidings.contract import dump_event
from tidings.contract.samples import SampleFactory

EVENTS = 5000
CONCURRENCY = 48
KILL_AFTER = 1500  # acknowledgements before the kill
DEADLINE = 150.0  # seconds for the whole load, restart included


def start_receiver(db: str, key_file: str, port: int, workers: int) -> subprocess.Popen:
    command = [
        sys.executable, "-c", "from tidings.cli import main; main()", "receive",
        "--db", f"sqlite:///{db}", "--public-key", key_file, "--any-org", "--port", str(port), "--admin-port", "0",
        "--workers", str(workers),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def accepting(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2])
def test_every_acknowledged_event_survives_sigkill(tmp_path, workers):
    keys = Keys()
    key_file = tmp_path / "sender.pub.pem"
    key_file.write_text(keys.public_pem)
    db = str(tmp_path / "receiver.db")
    port = free_port()
    requests = []
    for number, event in enumerate(SampleFactory(31).events(EVENTS)):
        body = dump_event(event)
        requests.append((f"crash-{number}", body, keys.headers(body, msg_id=f"crash-{number}")))

    servers = [start_receiver(db, str(key_file), port, workers)]
    wait_for(lambda: accepting(port), 20, "the receiver did not start")
    acknowledged: set[str] = set()
    killed_at: list[int] = []
    failures_while_down: list[int] = [0]

    async def post_until_acknowledged(session: aiohttp.ClientSession, queue: asyncio.Queue) -> None:
        while not queue.empty():
            msg_id, body, headers = queue.get_nowait()
            while True:
                try:
                    async with session.post(f"http://127.0.0.1:{port}/webhook", data=body, headers=headers) as answer:
                        await answer.read()
                        if answer.status == 200:
                            acknowledged.add(msg_id)
                            break
                        assert answer.status == 503, answer.status  # never a refusal for a genuine event
                except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                    failures_while_down[0] += 1
                await asyncio.sleep(0.05)

    async def kill_and_restart() -> None:
        while len(acknowledged) < KILL_AFTER:
            await asyncio.sleep(0.005)
        os.kill(servers[-1].pid, signal.SIGKILL)  # no shutdown, no flush: a crash
        killed_at.append(len(acknowledged))
        servers[-1].wait()
        await asyncio.to_thread(wait_for, lambda: not accepting(port), 20, "the killed receiver's workers did not die")
        await asyncio.sleep(0.3)
        servers.append(start_receiver(db, str(key_file), port, workers))

    async def load() -> None:
        queue: asyncio.Queue = asyncio.Queue()
        for item in requests:
            queue.put_nowait(item)
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            killer = asyncio.create_task(kill_and_restart())
            await asyncio.wait_for(
                asyncio.gather(*(post_until_acknowledged(session, queue) for _ in range(CONCURRENCY))), DEADLINE
            )
            await killer

    try:
        asyncio.run(load())
    finally:
        for server in servers:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(20)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()

    assert killed_at and killed_at[0] < EVENTS  # the kill came in the middle of the load
    assert len(servers) == 2
    assert len(acknowledged) == EVENTS  # the client got every event through, retrying
    with sqlite3.connect(db) as conn:
        stored = {row[0] for row in conn.execute("SELECT dedupe_key FROM receiver_events")}
        (count,) = conn.execute("SELECT count(*) FROM receiver_events").fetchone()
    missing = [msg_id for msg_id in acknowledged if f"id:{msg_id}" not in stored]
    assert missing == []  # every event answered 200 is in the store, checked one by one
    assert count == EVENTS  # and each once, retries included
