"""The circuit breaker as the dispatcher wires it, against real endpoints on
127.0.0.1 that fail without answering: after ``failure_threshold`` failures
in a row, attempts are recorded as ``circuit_open`` without a request, and
after the cooldown one trial request goes out."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import pytest

from tests.dispatcher_support import (
    add_configuration,
    add_events,
    add_organization,
    attempt_rows,
    database,
    fast_settings,
    new_signer,
)
from tests.loopback import base_url, closed_port_socket, serve_connections
from tidings.platform.circuit import CircuitPolicy
from tidings.platform.dispatcher import Dispatcher

pytestmark = pytest.mark.timeout(60)

THRESHOLD = 3
COOLDOWN = 1.0
DELIVERIES = 3  # sent at once: they open the circuit together, then compete for the one trial


@dataclass
class FailingEndpoint:
    """Counts the requests that reach it and answers none of them."""

    behaviour: str
    url: str = ""
    requests: list[float] = field(default_factory=list)

    async def on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")  # a request's head: it reached the endpoint
            self.requests.append(time.time())
            if self.behaviour == "hangs up":
                return  # closed without an answer
            await reader.read()  # never answers; waits for the client to give up


@contextlib.asynccontextmanager
async def failing_endpoint(behaviour: str):
    endpoint = FailingEndpoint(behaviour)
    if behaviour == "refuses":
        with closed_port_socket() as sock:  # bound, never listening: every connection is refused
            endpoint.url = base_url(sock) + "/hook"
            yield endpoint
        return
    async with serve_connections(endpoint.on_connection) as url:
        endpoint.url = url + "/hook"
        yield endpoint


def is_open(attempt) -> bool:
    return (attempt.error or "").startswith("circuit_open")


@pytest.mark.parametrize("behaviour", ["hangs up", "never answers", "refuses"])
async def test_an_open_circuit_records_attempts_without_requests_then_lets_one_trial_out(db_url, behaviour):
    """Killed by the mutations "circuit never consulted" (the dispatcher posts whatever the
    breaker says), "failures never recorded" (the dispatcher does not tell the breaker), "circuit
    never opens" and "no trial after the cooldown"."""
    signer = new_signer()
    settings = fast_settings(retry_base=0.2, retry_factor=1.0, max_retries=500, attempt_timeout=0.3,
                             max_per_endpoint=4)
    circuit = CircuitPolicy(failure_threshold=THRESHOLD, cooldown=COOLDOWN, max_cooldown=30.0)
    async with failing_endpoint(behaviour) as endpoint, database(db_url) as engine:
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, endpoint.url)
        await add_events(engine, signer, org_id, DELIVERIES)
        dispatcher = Dispatcher(engine, signer, settings, circuit=circuit, poll_interval=0.05)
        stop = asyncio.Event()
        running = asyncio.create_task(dispatcher.run(stop))
        try:
            # Run until the trial failed and the circuit, open again (for twice the cooldown), refused an attempt.
            deadline = time.monotonic() + 20
            while True:
                attempts = await attempt_rows(engine)
                sent = [a for a in attempts if not is_open(a)]
                if len(sent) > THRESHOLD and any(is_open(a) and a.started_at > sent[THRESHOLD].started_at
                                                 for a in attempts):
                    break
                assert time.monotonic() < deadline, (
                    f"no trial and reopening within 20 s: {[(a.number, a.error) for a in attempts]}")
                assert not running.done(), running.exception()
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(running, 15)
        attempts = sorted(await attempt_rows(engine), key=lambda a: a.started_at)  # the last flush included

    sent = [a for a in attempts if not is_open(a)]
    refused = [a for a in attempts if is_open(a)]
    # The first THRESHOLD attempts went out and failed without an answer.
    assert all(a.status_code is None and not is_open(a) for a in attempts[:THRESHOLD])
    # Then the circuit opened: attempts went on being recorded, without a request.
    assert is_open(attempts[THRESHOLD]), [(a.number, a.error) for a in attempts]
    assert "circuit open until" in attempts[THRESHOLD].error and all(a.status_code is None for a in refused)
    trial = sent[THRESHOLD]
    opened_after = attempts[THRESHOLD - 1].started_at
    assert all(is_open(a) for a in attempts if opened_after < a.started_at < trial.started_at)
    # One trial, once the cooldown had passed since the failure that opened it, and no other request.
    assert (trial.started_at - opened_after).total_seconds() >= COOLDOWN
    assert len(sent) == THRESHOLD + 1
    if behaviour != "refuses":
        assert len(endpoint.requests) == THRESHOLD + 1  # what reached the endpoint: the attempts sent, no more

