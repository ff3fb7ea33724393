"""Milliseconds from a custom-channel message to its subscriber, on the path
users run, beside the same client posting straight to the subscriber.

    python bench/e2e.py                                  # SQLite, 20 messages/s for 20 s
    python bench/e2e.py --rate 500 --duration 20
    python bench/e2e.py --db postgresql://postgres@127.0.0.1:5432/test   # serve plus one worker

The platform is the installed ``tidings`` command, run as the README runs
it: ``tidings keys generate``, ``tidings db upgrade``, ``tidings org
create``, ``tidings business create`` and ``tidings channel create`` set it
up, then ``tidings serve`` runs (with ``--allow-private-targets
--allow-http``, since the subscriber is on loopback; on ``--port 0``, the
port it bound read from /proc, as serve takes no socket), and on PostgreSQL one
``tidings worker`` beside it (``--workers``); a PostgreSQL URL names a
server, on which a fresh database is created and dropped at the end. One
``message_created`` configuration (``POST /v2/webhooks``, default ordering)
points at a subscriber in this process, on a socket it holds: it answers
200 at once and records when each event arrives, keyed by the message's
``external_message_id``.

An open-loop client posts ``--rate`` messages a second for ``--duration``
seconds to ``POST /v2/custom-channels/{channel_id}/messages`` (spread over
``--conversations`` conversations): each request is sent on its schedule
whether or not earlier ones were answered (a new keep-alive connection when
none is free, up to ``--connections``), so a stall shows in the figures
instead of slowing the client. A message's latency runs from just before
its request is sent to the subscriber receiving its event, both read from
``time.perf_counter`` in this process. A message the API acknowledged and
the subscriber did not receive within ``--grace`` seconds after the last
request is lost. The baseline is the same client at the same rate posting
the same bodies straight to the subscriber, in the same run, before the
platform's run (and after a few warm-up messages through the platform).
Beside them: the API's answer times, the CPU time per message of the
platform's processes and of this one, and the configuration's deliveries
per status once the grace is over (the warm-up's included): whether what
was not received is still on its way or finished otherwise.

Every process started here is stopped at the end, on an error or Ctrl-C too
(and, on Linux, dies with this one). The last line printed is one JSON
object.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dispatch  # noqa: E402  (its Database: a SQLite file, or a fresh PostgreSQL database dropped at the end)

HOOK_PATH = "/hook"
MAX_HEAD = 64 * 1024  # the subscriber's bound on a request's head
MAX_BODY = 1 << 20  # and on its body
DELIVERY_STATUSES = ("pending", "queued", "held", "delivering", "delivered", "failed")  # the API's status filter
WARM_UP_MESSAGES = 5
WARM_UP_WAIT = 60.0  # seconds for the warm-up messages' events: the platform must work before it is measured
START_WAIT = 60.0  # seconds for a started process to listen (serve) or log that it delivers (worker)
STOP_WAIT = 15.0  # seconds a stopped process has before it is killed
KEY = re.compile(rb'"external_message_id"\s*:\s*"([^"\\]{1,500})"')
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


# ---------------------------------------------------------------- pure decisions


def message_key(body: bytes) -> str | None:
    """The first ``external_message_id`` in a body: the message's own, in a
    ``message_created`` event (``payload.message.custom_channel``) and in an
    ingestion body alike."""
    found = KEY.search(body)
    return found.group(1).decode() if found else None


def percentile(ordered: list[float], share: float) -> float | None:
    """The value at ``share`` of an ascending list, in milliseconds (None when empty)."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000, 2)


def latency_figures(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    return {"p50_ms": percentile(ordered, 0.50), "p99_ms": percentile(ordered, 0.99),
            "max_ms": round(ordered[-1] * 1000, 2) if ordered else None}


def tally(sent: dict[str, float], acknowledged: set[str], arrivals: dict[str, float]) -> dict:
    """What became of the messages sent: how many were acknowledged, received
    and lost (acknowledged, never received), and the latencies of those received."""
    latencies = [arrivals[key] - started for key, started in sent.items() if key in arrivals]
    return {"sent": len(sent), "acknowledged": len(acknowledged), "received": len(latencies),
            "lost": sum(1 for key in acknowledged if key not in arrivals), **latency_figures(latencies)}


def message_body(key: str, number: int, business_id: str, conversations: int, run: str) -> bytes:
    return json.dumps({
        "business_id": business_id, "external_conversation_id": f"{run}-conv-{number % conversations}",
        "external_message_id": key, "content": f"Hello, is order {number} ready?",
        "sender_type": "Consumer", "consumer_name": "Bench Client",
    }).encode()


# ---------------------------------------------------------------- the subscriber


class Subscriber:
    """Answers every ``POST /hook`` with 200 at once and records when each
    message's first request arrived (a later one with the same key is a duplicate)."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.duplicates = 0
        self.unkeyed = 0
        self.connections: set[asyncio.Transport] = set()
        self.server: asyncio.AbstractServer | None = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: SubscriberConnection(self), sock=sock, backlog=1024)

    def record(self, body: bytes, at: float) -> None:
        key = message_key(body)
        if key is None:
            self.unkeyed += 1
        elif key in self.arrivals:
            self.duplicates += 1
        else:
            self.arrivals[key] = at

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for transport in list(self.connections):
            transport.close()
        if self.server is not None:
            await self.server.wait_closed()


class SubscriberConnection(asyncio.Protocol):
    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.subscriber.connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.subscriber.connections.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        arrived = time.perf_counter()
        self.buffer += data
        answers = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.refuse(answers)
                    return
                break
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            method, path = (lines[0].split(" ") + ["", ""])[:2]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length" and value.strip().isdigit():
                    length = int(value.strip())
                elif name == "transfer-encoding":
                    length = -1  # the platform sends a Content-Length: anything else is refused
            if length < 0 or length > MAX_BODY or end > MAX_HEAD:
                self.refuse(answers)
                return
            if len(self.buffer) < end + 4 + length:
                break
            body = bytes(self.buffer[end + 4:end + 4 + length])
            del self.buffer[:end + 4 + length]
            if method == "POST" and path == HOOK_PATH:
                self.subscriber.record(body, arrived)
                answers.append(OK)
            else:
                answers.append(NOT_FOUND)
        if answers:
            self.transport.write(b"".join(answers))

    def refuse(self, answers: list[bytes]) -> None:
        self.transport.write(b"".join(answers) + BAD_REQUEST)
        self.transport.close()


# ---------------------------------------------------------------- the open-loop client


class Answers(asyncio.Protocol):
    """One keep-alive connection of the client: one request at a time, its
    answer's status handed to the waiting request once the whole answer is in."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def request(self, data: bytes) -> asyncio.Future:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip() == b"content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[:end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(int(head[9:12]))  # b"http/1.1 200 ok"

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))

    def close(self) -> None:
        self.closed = True
        self.transport.close()


@dataclass
class Run:
    """What one client run sent and what was answered."""

    sent: dict[str, float] = field(default_factory=dict)  # key -> perf_counter just before sending
    acknowledged: set[str] = field(default_factory=set)
    answer_times: list[float] = field(default_factory=list)
    errors: collections.Counter = field(default_factory=collections.Counter)
    unanswered: int = 0
    schedule_lag_max: float = 0.0  # how late the client sent a request after its scheduled time, at worst
    connections: int = 0


class OpenLoopClient:
    """Posts to one URL path on 127.0.0.1 on a fixed schedule, over a pool of
    keep-alive connections that grows (up to ``max_connections``) whenever
    every connection is waiting for an answer."""

    def __init__(self, port: int, path: str, headers: dict[str, str], max_connections: int) -> None:
        self.port = port
        self.head = "".join([f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n",
                             *(f"{name}: {value}\r\n" for name, value in headers.items()),
                             "Content-Type: application/json\r\n"]).encode()
        self.max_connections = max_connections
        self.idle: list[Answers] = []
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.opened: list[Answers] = []
        self.open = 0

    async def connection(self) -> Answers:
        loop = asyncio.get_running_loop()
        while True:
            while self.idle:
                answers = self.idle.pop()
                if not answers.closed:
                    return answers
                self.open -= 1
            if self.open < self.max_connections:
                self.open += 1
                try:
                    _, answers = await loop.create_connection(Answers, "127.0.0.1", self.port)
                except BaseException:
                    self.open -= 1
                    raise
                self.opened.append(answers)
                return answers
            free = loop.create_future()
            self.waiting.append(free)
            await free

    def release(self, answers: Answers) -> None:
        if answers.closed:
            self.open -= 1
        else:
            self.idle.append(answers)
        while self.waiting:
            free = self.waiting.popleft()
            if not free.done():
                free.set_result(None)
                break

    async def post(self, run: Run, key: str, body: bytes, deadline: float) -> None:
        started = time.perf_counter()
        run.sent[key] = started
        answers = None
        try:
            answers = await asyncio.wait_for(self.connection(), max(0.0, deadline - time.perf_counter()))
            request = self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body
            status = await asyncio.wait_for(answers.request(request), max(0.0, deadline - time.perf_counter()))
        except TimeoutError:
            run.unanswered += 1
            if answers is not None:
                answers.close()  # its answer may still come: the connection cannot serve another request
        except (OSError, ConnectionError) as error:
            run.errors[type(error).__name__] += 1
        else:
            if status == 200:
                run.acknowledged.add(key)
                run.answer_times.append(time.perf_counter() - started)
            else:
                run.errors[str(status)] += 1
        if answers is not None:
            self.release(answers)

    async def run(self, messages: list[tuple[str, bytes]], rate: float, deadline_after: float) -> Run:
        """Sends ``messages`` at ``rate`` a second; waits for their answers
        until ``deadline_after`` seconds after the last one was sent."""
        run = Run()
        posts = []
        start = time.perf_counter() + 0.01
        deadline = start + len(messages) / rate + deadline_after
        for number, (key, body) in enumerate(messages):
            due = start + number / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            run.schedule_lag_max = max(run.schedule_lag_max, time.perf_counter() - due)
            posts.append(asyncio.create_task(self.post(run, key, body, deadline)))
        if posts:
            await asyncio.wait(posts)  # each is bounded by the deadline
        run.connections = len(self.opened)
        return run

    def close(self) -> None:
        for answers in self.opened:
            if not answers.closed:
                answers.close()


async def wait_for_arrivals(subscriber: Subscriber, keys: set[str], deadline: float) -> None:
    """Returns once every key arrived, or at ``deadline`` (perf_counter)."""
    while time.perf_counter() < deadline and not keys.issubset(subscriber.arrivals.keys()):
        await asyncio.sleep(0.005)


# ---------------------------------------------------------------- the platform's processes


def tidings_command() -> str:
    beside = Path(sys.executable).with_name("tidings")
    found = str(beside) if beside.exists() else shutil.which("tidings")
    if found is None:
        raise SystemExit("no `tidings` command beside this Python or on PATH: run `make install`, "
                         "then this benchmark with .venv/bin/python")
    return found


def _die_with_parent() -> None:
    """In the child, before it runs: a SIGTERM when this benchmark's process ends, however it ends (Linux)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Processes:
    """The ``tidings`` processes this benchmark started, each with its log file in the scratch directory."""

    def __init__(self, tidings: str, scratch: Path) -> None:
        self.tidings = tidings
        self.scratch = scratch
        self.running: list[tuple[str, subprocess.Popen, Path]] = []

    def command(self, *args: str, timeout: float = 120) -> dict:
        """Runs one set-up command; returns the JSON object it printed last, if any."""
        done = subprocess.run([self.tidings, *args], capture_output=True, text=True, timeout=timeout,
                              cwd=self.scratch)
        if done.returncode != 0:
            raise RuntimeError(f"`tidings {' '.join(args[:2])}` failed ({done.returncode}): "
                               f"{done.stderr.strip()[-2000:]}")
        lines = [line for line in done.stdout.strip().splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = self.scratch / f"{name}.log"
        with open(log, "wb") as output:
            process = subprocess.Popen([self.tidings, *args], stdout=output, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=self.scratch,
                                       preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.running.append((name, process, log))
        return process

    def log_tail(self, name: str, characters: int = 3000) -> str:
        for known, _, log in self.running:
            if known == name and log.exists():
                return log.read_text(errors="replace")[-characters:]
        return ""

    def check_alive(self) -> None:
        for name, process, _ in self.running:
            if process.poll() is not None:
                raise RuntimeError(f"`tidings {name}` exited ({process.returncode}):\n{self.log_tail(name)}")

    def cpu_seconds(self) -> float:
        """CPU time the running processes have used so far, user and system."""
        total = 0.0
        for _, process, _ in self.running:
            try:
                fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        return total

    def stop_all(self) -> None:
        """Asks each to stop (serve: SIGINT, as Ctrl-C; a worker: SIGTERM), then kills what is left."""
        for name, process, _ in self.running:
            if process.poll() is None:
                process.send_signal(signal.SIGINT if name == "serve" else signal.SIGTERM)
        for _, process, _ in self.running:
            try:
                process.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_WAIT)


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (from /proc: ``tidings serve --port 0`` picks its own)."""
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # it has just exited
        return set()
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            columns = row.split()
            if columns[3] == "0A" and columns[9] in inodes:  # LISTEN
                ports.add(int(columns[1].rsplit(":", 1)[1], 16))
    return ports


def wait_until(condition, seconds: float, processes: Processes, what: str):
    deadline = time.monotonic() + seconds
    while True:
        processes.check_alive()
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            logs = "".join(f"\n{name}'s log:\n{processes.log_tail(name)}" for name, _, _ in processes.running)
            raise RuntimeError(f"{what} within {seconds:.0f} s{logs}")
        time.sleep(0.05)


@dataclass
class Platform:
    api_port: int
    api_key: str
    channel_id: str
    business_id: str
    config_id: int
    pids: dict[str, int]


def start_platform(processes: Processes, db_url: str, workers: int, hook_url: str) -> Platform:
    """Sets the platform up with the CLI, starts ``tidings serve`` (and the
    workers), and points a ``message_created`` configuration at ``hook_url``."""
    scratch = processes.scratch
    key_file = scratch / "keys" / "signing-key.pem"
    processes.command("keys", "generate", "--out", str(key_file.parent))
    processes.command("db", "upgrade", "--db", db_url)
    org = processes.command("org", "create", "Bench", "--db", db_url)
    business = processes.command("business", "create", "--org", str(org["org_id"]), "--name", "Bench shop",
                                 "--db", db_url)
    channel = processes.command("channel", "create", "--org", str(org["org_id"]), "--name", "Bench chat",
                                "--db", db_url)
    loopback = ["--allow-private-targets", "--allow-http"]
    serve = processes.start("serve", "serve", "--db", db_url, "--host", "127.0.0.1", "--port", "0",
                            "--signing-key", str(key_file), "--data-dir", str(scratch / "data"), *loopback)
    port = min(wait_until(lambda: listening_ports(serve.pid), START_WAIT, processes, "`tidings serve` did not listen"))
    config_id = create_configuration(port, org["api_key"], hook_url)
    pids = {"serve": serve.pid}
    for number in range(workers):
        name = f"worker-{number + 1}"
        worker = processes.start(name, "worker", "--db", db_url, "--signing-key", str(key_file),
                                 "--data-dir", str(scratch / "data"), *loopback)  # serve's secrets key
        wait_until(lambda: "delivering from" in processes.log_tail(name), START_WAIT, processes,
                   f"`tidings worker` ({name}) did not start delivering")
        pids[name] = worker.pid
    return Platform(port, org["api_key"], channel["channel_id"], business["business_id"], config_id, pids)


def create_configuration(port: int, api_key: str, hook_url: str) -> int:
    """``POST /v2/webhooks``: one ``message_created`` configuration, the defaults otherwise; returns its id."""
    body = json.dumps({"items": [{"url": hook_url, "event_type": "message_created"}]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/webhooks", data=body, method="POST",
                                     headers={"x-APIKey": api_key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())["items"][0]["id"]
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"POST /v2/webhooks answered {error.code}: {error.read()[:500]!r}") from None


def delivery_counts(platform: Platform) -> dict[str, int]:
    """The configuration's deliveries per status, from ``GET /v2/webhooks/{id}/deliveries``: after the
    grace, whether what was not received is still on its way (pending, queued) or finished otherwise."""
    counts = {}
    for status in DELIVERY_STATUSES:
        request = urllib.request.Request(
            f"http://127.0.0.1:{platform.api_port}/v2/webhooks/{platform.config_id}/deliveries"
            f"?status={status}&per_page=1", headers={"x-APIKey": platform.api_key})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                count = json.loads(answer.read())["count"]
        except (OSError, ValueError, KeyError):  # a status the API no longer knows, or no answer in time
            continue
        if count:
            counts[status] = count
    return counts


# ---------------------------------------------------------------- the measurement


def subscriber_socket() -> socket.socket:
    """The subscriber's listening socket on loopback, bound to a free port and kept."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def measure(args, platform: Platform, sock: socket.socket, processes: Processes) -> dict:
    subscriber_port = sock.getsockname()[1]
    subscriber = Subscriber()
    await subscriber.start(sock)
    run_id = uuid.uuid4().hex[:8]
    count = max(1, round(args.rate * args.duration))
    ingest_path = f"/v2/custom-channels/{platform.channel_id}/messages"
    api_headers = {"x-APIKey": platform.api_key}

    def messages(kind: str, total: int) -> list[tuple[str, bytes]]:
        keys = [f"e2e-{run_id}-{kind}-{number}" for number in range(total)]
        return [(key, message_body(key, number, platform.business_id, args.conversations, f"e2e-{run_id}"))
                for number, key in enumerate(keys)]

    try:
        # Warm-up, through the platform: its first requests (imports, the API key, connections) are not measured,
        # and the path is known to work before it is.
        warm_client = OpenLoopClient(platform.api_port, ingest_path, api_headers, args.connections)
        warm = await warm_client.run(messages("warm", WARM_UP_MESSAGES), min(args.rate, 10.0), WARM_UP_WAIT)
        warm_client.close()
        await wait_for_arrivals(subscriber, warm.acknowledged, time.perf_counter() + WARM_UP_WAIT)
        processes.check_alive()
        if len(warm.acknowledged) < WARM_UP_MESSAGES or not warm.acknowledged.issubset(subscriber.arrivals.keys()):
            raise RuntimeError(f"warm-up: {len(warm.acknowledged)} of {WARM_UP_MESSAGES} messages acknowledged "
                               f"({dict(warm.errors)}), {len(warm.acknowledged & subscriber.arrivals.keys())} "
                               f"received within {WARM_UP_WAIT:.0f} s; serve's log:\n{processes.log_tail('serve')}")

        # The baseline: the same client, rate and bodies, straight to the subscriber.
        direct = OpenLoopClient(subscriber_port, HOOK_PATH, {}, args.connections)
        baseline_run = await direct.run(messages("direct", count), args.rate, args.grace)
        direct.close()
        await wait_for_arrivals(subscriber, baseline_run.acknowledged, time.perf_counter() + args.grace)
        baseline = {**tally(baseline_run.sent, baseline_run.acknowledged, subscriber.arrivals),
                    "errors": dict(baseline_run.errors), "unanswered": baseline_run.unanswered,
                    "schedule_lag_max_ms": round(baseline_run.schedule_lag_max * 1000, 2)}
        print(f"baseline, the client straight to the subscriber: {baseline['sent']} sent, "
              f"{baseline['received']} received; p50 {baseline['p50_ms']} ms, p99 {baseline['p99_ms']} ms, "
              f"max {baseline['max_ms']} ms", flush=True)

        # The platform: message to the API, event to the subscriber.
        client = OpenLoopClient(platform.api_port, ingest_path, api_headers, args.connections)
        cpu_before, own_cpu_before = processes.cpu_seconds(), time.process_time()
        platform_run = await client.run(messages("api", count), args.rate, args.grace)
        client.close()
        sending_ended = max(platform_run.sent.values())
        await wait_for_arrivals(subscriber, platform_run.acknowledged, sending_ended + args.grace)
        cpu, own_cpu = processes.cpu_seconds() - cpu_before, time.process_time() - own_cpu_before
        processes.check_alive()
        result = {**tally(platform_run.sent, platform_run.acknowledged, subscriber.arrivals),
                  "errors": dict(platform_run.errors), "unanswered": platform_run.unanswered,
                  "schedule_lag_max_ms": round(platform_run.schedule_lag_max * 1000, 2),
                  "connections": platform_run.connections,
                  "answers": latency_figures(platform_run.answer_times),
                  "platform_cpu_us_per_message": round(cpu / max(1, len(platform_run.sent)) * 1e6),
                  # this process's own, client and subscriber: it shares the cores with the platform
                  "bench_cpu_us_per_message": round(own_cpu / max(1, len(platform_run.sent)) * 1e6),
                  "duplicates": subscriber.duplicates, "unkeyed": subscriber.unkeyed}
        return {"platform": result, "baseline": baseline}
    finally:
        await subscriber.stop()


def run_async(coroutine):
    """``asyncio.run``, on uvloop when it is installed (``tidings worker`` uses it too)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def commit_of_checkout() -> dict:
    """The commit this benchmark's checkout is at, and whether files tracked there were changed."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(HERE), *args], capture_output=True, text=True, timeout=30)
        except OSError:
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="a PostgreSQL server URL (a fresh database is made there); "
                                     "a SQLite file in a temporary directory if absent")
    parser.add_argument("--rate", type=float, default=20.0, help="messages posted per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of posting")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds after the last request within which every event must arrive")
    parser.add_argument("--workers", type=int, help="`tidings worker` processes beside serve "
                                                    "(PostgreSQL only; default 1 there)")
    parser.add_argument("--conversations", type=int, default=1_000, help="conversations the messages are spread over")
    parser.add_argument("--connections", type=int, default=512, help="the client's most connections at once")
    args = parser.parse_args()
    if args.rate <= 0 or args.duration <= 0 or args.grace < 0 or args.conversations < 1 or args.connections < 1:
        parser.error("--rate, --duration, --conversations and --connections must be positive, --grace not negative")
    if args.rate * args.duration > 1_000_000:
        parser.error("at most 1,000,000 messages in one run (--rate times --duration)")
    store = "postgresql" if args.db else "sqlite"
    workers = args.workers if args.workers is not None else (1 if args.db else 0)
    if workers and not args.db:
        parser.error("--workers needs --db postgresql://...: a SQLite file takes one dispatcher, serve's")
    tidings = tidings_command()
    load_before = dispatch._load_average()

    interrupted = False
    with tempfile.TemporaryDirectory(prefix="tidings-e2e-") as scratch_name:
        scratch = Path(scratch_name)
        processes = Processes(tidings, scratch)
        sock = subscriber_socket()
        database = None
        try:
            database = dispatch.Database(args.db, scratch)
            hook_url = f"http://127.0.0.1:{sock.getsockname()[1]}{HOOK_PATH}"
            platform = start_platform(processes, database.url, workers, hook_url)
            print(f"tidings serve (pid {platform.pids['serve']}) listening on http://127.0.0.1:{platform.api_port}, "
                  f"{workers} worker(s) beside it, on {store}; the subscriber on {hook_url}", flush=True)
            figures = run_async(measure(args, platform, sock, processes))
            deliveries = delivery_counts(platform)
        except (KeyboardInterrupt, asyncio.CancelledError):
            interrupted = True
        finally:
            processes.stop_all()
            sock.close()
            if database is not None:
                database.drop()
        if interrupted:
            print("interrupted: every process it started is stopped", file=sys.stderr)
            return 130

    result, baseline = figures["platform"], figures["baseline"]
    print(f"tidings ({store}, serve and {workers} worker(s)): {result['sent']} sent, {result['acknowledged']} "
          f"acknowledged ({result['unanswered']} unanswered within {args.grace:g} s, errors {result['errors']}), "
          f"{result['received']} received, {result['lost']} lost (acknowledged, not received within "
          f"{args.grace:g} s); p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms "
          f"(the API's answers: p50 {result['answers']['p50_ms']} ms, p99 {result['answers']['p99_ms']} ms); "
          f"deliveries per status at the end: {deliveries}", flush=True)
    print(json.dumps({
        "bench": "e2e", "store": store, **commit_of_checkout(), "rate": args.rate, "duration_s": args.duration,
        "grace_s": args.grace, "workers": workers, "conversations": args.conversations, "client": "lean",
        "schedule": "open-loop",
        "sent": result["sent"], "acknowledged": result["acknowledged"], "received": result["received"],
        "lost": result["lost"], "unanswered": result["unanswered"], "errors": result["errors"],
        "duplicates": result["duplicates"], "deliveries_at_end": deliveries,
        "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"], "max_ms": result["max_ms"],
        "baseline_p50_ms": baseline["p50_ms"], "baseline_p99_ms": baseline["p99_ms"],
        "baseline_max_ms": baseline["max_ms"],
        "baseline": {name: baseline[name] for name in ("sent", "acknowledged", "received", "lost", "errors")},
        "answer_p50_ms": result["answers"]["p50_ms"], "answer_p99_ms": result["answers"]["p99_ms"],
        "schedule_lag_max_ms": result["schedule_lag_max_ms"],
        "baseline_schedule_lag_max_ms": baseline["schedule_lag_max_ms"], "connections": result["connections"],
        "platform_cpu_us_per_message": result["platform_cpu_us_per_message"],
        "bench_cpu_us_per_message": result["bench_cpu_us_per_message"],
        "load_average": {"before": load_before, "after": dispatch._load_average()}, "cpus": os.cpu_count(),
    }))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM unwinds as Ctrl-C does: processes stopped
    sys.exit(main())
