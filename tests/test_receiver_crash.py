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
import time

import aiohttp
import pytest

from tests.loopback import accepting, base_url, command_on_socket, loopback_socket, port_of
from tests.test_receiver_helpers import Keys
from tidings.contract import dump_event
from tidings.contract.samples import SampleFactory

EVENTS = 5000
CONCURRENCY = 48
KILL_AFTER = 1500  # acknowledgements before the kill
DEADLINE = 150.0  # seconds for the whole load, restart included


def start_receiver(db: str, key_file: str, listening: socket.socket, workers: int) -> subprocess.Popen:
    """``tidings receive`` serving on ``listening``, which this test holds across the crash and the restart."""
    command, options = command_on_socket(listening, [
        "receive", "--db", f"sqlite:///{db}", "--public-key", key_file, "--any-org", "--admin-port", "0", "--port", str(port_of(listening)),
        "--workers", str(workers)])
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **options)


def descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (Linux: read from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


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
    listening = loopback_socket()  # held by the test: the restarted receiver serves on the same socket
    port = port_of(listening)
    health = f"{base_url(listening)}/health"
    requests = []
    for number, event in enumerate(SampleFactory(31).events(EVENTS)):
        body = dump_event(event)
        requests.append((f"crash-{number}", body, keys.headers(body, msg_id=f"crash-{number}")))

    servers = [start_receiver(db, str(key_file), listening, workers)]
    wait_for(lambda: accepting(health), 20, "the receiver did not start")
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
        below = descendants(servers[-1].pid)  # uvicorn's workers and the follower die with it (PR_SET_PDEATHSIG)
        os.kill(servers[-1].pid, signal.SIGKILL)  # no shutdown, no flush: a crash
        killed_at.append(len(acknowledged))
        servers[-1].wait()
        await asyncio.to_thread(wait_for, lambda: not any(alive(pid) for pid in below), 20,
                                "the killed receiver's workers did not die")
        servers.append(start_receiver(db, str(key_file), listening, workers))

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
        listening.close()
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
