"""Handlers that come with the receiver: forward, append to a file, run a command.

Each function returns a handler (a function of one ``ReceivedEvent``) that
raises when its work fails, so the runner retries it and, in the end,
dead-letters it.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import threading
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import orjson

from tidings.receiver.handlers import ReceivedEvent


class HandlerFailed(Exception):
    """A built-in handler's work did not succeed (bad status, non-zero exit)."""


def forward_to(url: str, *, timeout: float = 10.0, headers: Mapping[str, str] | None = None):
    """POST the event's raw body to ``url``; any answer but 2xx is a failure.

    The request carries ``X-Tidings-Event-Id`` (the log position) so that the
    next hop can deduplicate.
    """
    extra = dict(headers or {})

    async def forward(event: ReceivedEvent) -> None:
        request_headers = {"content-type": "application/json", "x-tidings-event-id": str(event.id), **extra}
        if event.webhook_id:
            request_headers["webhook-id"] = event.webhook_id
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with aiohttp.ClientSession(timeout=client_timeout) as session:
            async with session.post(url, data=event.body, headers=request_headers) as response:
                if not 200 <= response.status < 300:
                    raise HandlerFailed(f"{url} answered {response.status}")

    forward.__qualname__ = f"forward_to({url})"
    return forward


def append_jsonl(path: str | os.PathLike[str]):
    """Append each event to a JSON-lines file: ``{"id", "type", "webhook_id", "received_at", "event"}``.

    One line per run, written with one ``write`` call under a lock and
    flushed to disk, so lines never interleave. A replayed event is appended
    again (at least once): readers deduplicate by ``id``.
    """
    target = Path(path)
    lock = threading.Lock()

    def append(event: ReceivedEvent) -> None:
        line = orjson.dumps(
            {
                "id": event.id,
                "type": event.type,
                "webhook_id": event.webhook_id,
                "received_at": event.received_at,
                "event": orjson.Fragment(event.body),  # the body as received, not re-encoded
            }
        )
        with lock:
            with target.open("ab") as stream:
                stream.write(line + b"\n")
                stream.flush()
                os.fsync(stream.fileno())

    append.__qualname__ = f"append_jsonl({target})"
    return append


def run_command(command: str | list[str], *, timeout: float = 60.0):
    """Run ``command`` with the event's raw body on standard input; a non-zero exit is a failure.

    The command also gets ``TIDINGS_EVENT_ID`` and ``TIDINGS_EVENT_TYPE`` in
    its environment. A string is split like a shell would, but no shell runs.
    """
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not argv:
        raise ValueError("run_command needs a command")

    async def run(event: ReceivedEvent) -> None:
        environment = {**os.environ, "TIDINGS_EVENT_ID": str(event.id), "TIDINGS_EVENT_TYPE": event.type}
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
        )
        try:
            _, stderr = await asyncio.wait_for(process.communicate(event.body), timeout)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
            raise HandlerFailed(f"{argv[0]} did not finish within {timeout} s") from None
        if process.returncode != 0:
            detail = stderr.decode(errors="replace").strip()[-500:]
            raise HandlerFailed(f"{argv[0]} exited with {process.returncode}" + (f": {detail}" if detail else ""))

    run.__qualname__ = f"run_command({' '.join(argv)})"
    return run
