"""A fast local webhook sink: answers every POST with 200 and counts it.

Raw asyncio (on uvloop when available) with a small HTTP/1.1 parser, so that
the sink is never what a benchmark measures. It counts requests per path and,
with ``--track-ids``, per ``webhook-id`` (to find events missing or delivered
twice), and the time of the first and the last request on each path.
``--hang PATH`` makes it read requests on that path and never answer (a dead
endpoint). ``--listeners N`` opens N ports, N endpoints to a client.
``GET /_stats`` answers the counts as JSON; ``GET /_ids`` the count of every
webhook-id.

    python bench/sink.py [--listeners 10] [--track-ids] [--hang /dead]

prints ``listening on PORT[,PORT...]`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import sys
import time

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
MAX_HEAD = 64 * 1024


class Counts:
    def __init__(self, track_ids: bool, hang: set[str]) -> None:
        self.per_path: collections.Counter[str] = collections.Counter()
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.per_id: collections.Counter[str] | None = collections.Counter() if track_ids else None
        self.hang = hang
        self.total = 0

    def stats(self) -> dict:
        result = {"total": self.total, "per_path": dict(self.per_path), "first": self.first, "last": self.last}
        if self.per_id is not None:
            result["unique_ids"] = len(self.per_id)
            result["duplicates"] = sum(count - 1 for count in self.per_id.values() if count > 1)
        return result


def _json_answer(document: object) -> bytes:
    body = json.dumps(document).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


class SinkProtocol(asyncio.Protocol):
    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.hung = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answers = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.transport.close()
                break
            head = bytes(self.buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            method, path, _version = (lines[0].split(" ") + ["", "", ""])[:3]
            length = 0
            webhook_id = None
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip())
                elif name == "webhook-id":
                    webhook_id = value.strip()
            if len(self.buffer) < end + 4 + length:
                break
            del self.buffer[: end + 4 + length]
            path = path.split("?", 1)[0]
            if method == "GET" and path == "/_stats":
                answers.append(_json_answer(self.counts.stats()))
                continue
            if method == "GET" and path == "/_ids":
                answers.append(_json_answer(dict(self.counts.per_id or {})))
                continue
            counts = self.counts
            counts.total += 1
            counts.per_path[path] += 1
            now = time.time()
            counts.last[path] = now
            if path not in counts.first:
                counts.first[path] = now
            if webhook_id is not None and self.counts.per_id is not None:
                self.counts.per_id[webhook_id] += 1
            if path in self.counts.hang or self.hung:
                self.hung = True  # answers on this connection would come out of order: answer nothing more
                continue
            answers.append(OK)
        if answers and not self.hung:
            self.transport.write(b"".join(answers))


async def serve(host: str, port: int, listeners: int, counts: Counts) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for index in range(listeners):
        servers.append(await loop.create_server(lambda: SinkProtocol(counts), host, port + index if port else 0,
                                                backlog=1024, reuse_address=True))
    ports = ",".join(str(server.sockets[0].getsockname()[1]) for server in servers)
    print(f"listening on {ports}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="the first port (0: any free ports)")
    parser.add_argument("--listeners", type=int, default=1, help="how many ports to listen on")
    parser.add_argument("--track-ids", action="store_true", help="count requests per webhook-id")
    parser.add_argument("--hang", action="append", default=[], help="a path that is never answered")
    args = parser.parse_args(argv)
    counts = Counts(args.track_ids, set(args.hang))
    run = uvloop.run if uvloop is not None else asyncio.run
    try:
        run(serve(args.host, args.port, args.listeners, counts))
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
