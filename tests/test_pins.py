"""The private parts of uvicorn, httptools and aiosqlite that the fast paths
and the SQLite cycle use: if an upgrade takes one away, this fails first, by
name, rather than a server misbehaving (pyproject.toml pins the ranges)."""

from __future__ import annotations

import asyncio
import logging

import aiosqlite
import httptools
from uvicorn.protocols.http import httptools_impl

from tidings.serving.fast_path import FastPathProtocol


def test_uvicorn_still_has_what_the_fast_paths_override_and_read():
    protocol = httptools_impl.HttpToolsProtocol
    for name in ("_start_asgi_task", "on_body", "on_message_complete", "on_response_complete"):
        assert callable(getattr(protocol, name, None)), f"uvicorn's HttpToolsProtocol.{name} is gone"
    assert FastPathProtocol._start_asgi_task is not protocol._start_asgi_task  # it is overridden, not inherited
    assert httptools_impl.STATUS_LINE[200] == b"HTTP/1.1 200 OK\r\n"
    cycle = httptools_impl.RequestResponseCycle(
        scope={"type": "http"}, transport=None, flow=None, logger=logging.getLogger("t"),
        access_logger=logging.getLogger("t"), access_log=False, default_headers=[],
        message_event=asyncio.Event(), expect_100_continue=True, keep_alive=True, on_response=lambda: None)
    for name in ("waiting_for_100_continue", "more_body", "body", "response_complete", "response_started",
                 "disconnected", "keep_alive", "message_event", "access_log", "access_logger", "scope",
                 "on_response"):
        assert hasattr(cycle, name), f"uvicorn's RequestResponseCycle.{name} is gone"


def test_httptools_still_parses_answers_as_the_lean_transport_reads_them():
    seen = {}

    class Callbacks:
        def on_header(self, name, value):
            seen[name.lower()] = value

        def on_body(self, body):
            seen["body"] = body

        def on_message_complete(self):  # where the lean transport asks
            seen["status"], seen["keep alive"] = parser.get_status_code(), parser.should_keep_alive()

    parser = httptools.HttpResponseParser(Callbacks())
    parser.feed_data(b"HTTP/1.1 202 Accepted\r\nRetry-After: 3\r\nContent-Length: 2\r\n\r\nok")
    assert seen == {b"retry-after": b"3", b"content-length": b"2", "body": b"ok", "status": 202, "keep alive": True}
    assert issubclass(httptools.HttpParserUpgrade, Exception) and issubclass(httptools.HttpParserError, Exception)


async def test_aiosqlite_still_runs_a_function_in_its_thread(tmp_path):
    async with aiosqlite.connect(tmp_path / "pin.db") as connection:
        assert callable(getattr(connection, "_execute", None)), "aiosqlite's Connection._execute is gone"
        raw = getattr(connection, "_conn", None)
        assert raw is not None, "aiosqlite's Connection._conn is gone"
        assert await connection._execute(lambda db: db.execute("SELECT 41 + 1").fetchone()[0], raw) == 42
