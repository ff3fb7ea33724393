"""``tidings simulate`` against a platform served on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select

from tests.platform_support import running_platform, serve
from tidings.store.platform_tables import messages

pytestmark = pytest.mark.timeout(120)
TIDINGS = str(Path(sys.executable).with_name("tidings"))


async def simulate(api: str, key: str, *extra: str, terminal: bool = False) -> tuple[int, str, str]:
    env = {**os.environ, "COLUMNS": "120"}
    if terminal:
        env["TTY_COMPATIBLE"] = "1"  # rich draws its live progress bar as on a terminal
    process = await asyncio.create_subprocess_exec(
        TIDINGS, "simulate", "--api", api, "--api-key", key, "--rate", "20", "--duration", "2", "--seed", "3",
        *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(process.communicate(), 90)
    return process.returncode, out.decode(), err.decode()


async def test_simulate_shows_progress_and_a_summary(sqlite_url):
    async with running_platform(sqlite_url) as platform, serve(platform.app) as api:
        tenant = await platform.tenant("Acme")
        code, out, err = await simulate(api, tenant.api_key, terminal=True)
        assert code == 0, err
        assert "simulating" in out and "━" in out  # the progress bar
        for label in ("sent", "refused (4xx)", "delivered", "failed", "latency p50", "latency p99"):
            assert label in out, out
        async with platform.engine.connect() as conn:
            stored = (await conn.execute(select(func.count()).select_from(messages))).scalar_one()
        assert stored > 10  # about 40 actions in 2 s, most of them new messages


async def test_simulate_json_summary_counts_what_the_platform_stored(sqlite_url):
    async with running_platform(sqlite_url) as platform, serve(platform.app) as api:
        tenant = await platform.tenant("Acme")
        code, out, err = await simulate(api, tenant.api_key, "--json")
        assert code == 0, err
        summary = orjson.loads(out.strip().splitlines()[-1])
        async with platform.engine.connect() as conn:
            stored = (await conn.execute(select(func.count()).select_from(messages))).scalar_one()
        assert summary["sent"] - summary["duplicates"] == stored
        assert summary["sent"] + summary["refused"] + summary["errors"] <= 40
        assert summary["latency_p50_ms"] is not None and summary["latency_p99_ms"] >= summary["latency_p50_ms"]


async def test_simulate_says_in_one_line_when_the_platform_is_unreachable():
    code, out, err = await simulate("http://127.0.0.1:9", "tdk_nothing")
    assert code == 1
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot reach the platform" in errors[0]
