"""Sends a ``TrafficPlan``'s actions to a platform's ``/v2`` API at a set rate."""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from tidings.traffic.plan import ChannelMessage, Directory, PartnerMessage, Reply, TrafficPlan

CUSTOM = "custom"


def percentile(values: list[float], share: float) -> float | None:
    """The nearest-rank percentile (``share`` in 0..1) of ``values``."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class TrafficSummary:
    """What a run did, as the platform answered it."""

    sent: int = 0  # accepted by the platform (2xx)
    refused: int = 0  # a 4xx: e.g. a reply in a closed conversation
    errors: int = 0  # a 5xx or no answer
    duplicates: int = 0  # a custom channel's message ingested once already
    latencies_ms: list[float] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    delivered: int | None = None  # webhook deliveries, when the platform could tell
    failed: int | None = None
    pending: int | None = None
    elapsed: float = 0.0

    @property
    def attempted(self) -> int:
        return self.sent + self.refused + self.errors

    def as_dict(self) -> dict:
        return {
            "sent": self.sent, "refused": self.refused, "errors": self.errors, "duplicates": self.duplicates,
            "delivered": self.delivered, "failed": self.failed, "pending": self.pending,
            "latency_p50_ms": percentile(self.latencies_ms, 0.50),
            "latency_p99_ms": percentile(self.latencies_ms, 0.99),
            "elapsed_s": round(self.elapsed, 3), "by_kind": dict(self.by_kind),
        }


class PlatformClient:
    """The few ``/v2`` calls the simulated people make."""

    def __init__(self, session: aiohttp.ClientSession, api_url: str, api_key: str, org_id: int | None = None) -> None:
        self.session = session
        self.base = api_url.rstrip("/")
        self.headers = {"x-APIKey": api_key}
        self.params = {"org_id": str(org_id)} if org_id is not None else {}

    async def call(self, method: str, path: str, json: dict | None = None, params: dict | None = None):
        async with self.session.request(method, self.base + path, json=json, headers=self.headers,
                                        params={**self.params, **(params or {})}) as answer:
            try:
                body = await answer.json(content_type=None)
            except ValueError:  # an empty or non-JSON answer (e.g. a proxy's error page)
                body = None
            return answer.status, body

    async def directory(self) -> Directory:
        status, businesses = await self.call("GET", "/v2/businesses")
        if status != 200:
            raise RuntimeError(f"GET /v2/businesses answered {status}: {businesses}")
        status, channels = await self.call("GET", "/v2/custom-channels")
        if status != 200:
            raise RuntimeError(f"GET /v2/custom-channels answered {status}: {channels}")
        return Directory(businesses=tuple(b["id"] for b in businesses["items"]),
                         channels=tuple((c["id"], c["is_readonly"]) for c in channels["items"]))

    async def perform(self, action) -> tuple[int, dict | None]:
        if isinstance(action, Reply):
            return await self.call("POST", "/v2/messages", {"conversation_id": action.conversation_id,
                                                            "content": action.content})
        if isinstance(action, ChannelMessage):
            return await self.call("POST", f"/v2/custom-channels/{action.channel_id}/messages", {
                "business_id": action.business_id, "external_conversation_id": action.external_conversation_id,
                "external_message_id": action.external_message_id, "content": action.content,
                "content_type": action.content_type, "sender_type": "Consumer",
                "consumer_name": action.consumer_name})
        assert isinstance(action, PartnerMessage)
        body = {"business_id": action.business_id, "content": action.content,
                "content_type": action.content_type, "consumer_name": action.consumer_name}
        if action.conversation_id is not None:
            body["conversation_id"] = action.conversation_id
        return await self.call("POST", f"/v2/partners/{action.partner}/messages", body)

    async def delivery_counts(self) -> tuple[int, int, int] | None:
        """Delivered, failed and pending deliveries over the organization's webhooks."""
        status, configs = await self.call("GET", "/v2/webhooks", params={"per_page": "100"})
        if status != 200:
            return None
        totals = []
        for state in ("delivered", "failed", "pending"):
            total = 0
            for config in configs["items"]:
                status, page = await self.call("GET", f"/v2/webhooks/{config['id']}/deliveries",
                                               params={"status": state, "per_page": "1"})
                if status != 200:
                    return None
                total += page["count"]
            totals.append(total)
        return totals[0], totals[1], totals[2]


def _kind(action) -> str:
    if isinstance(action, Reply):
        return "reply"
    if isinstance(action, ChannelMessage):
        return CUSTOM
    return action.partner


async def run_traffic(api_url: str, api_key: str, *, rate: float, duration: float, seed: int = 0,
                      org_id: int | None = None, max_in_flight: int = 64,
                      on_result: Callable[[TrafficSummary], None] | None = None,
                      stop: asyncio.Event | None = None) -> TrafficSummary:
    """Sends about ``rate`` actions a second for ``duration`` seconds (both
    bounds hold: at most ``rate * duration`` actions, and no new one after
    ``duration``), then asks the platform how the deliveries went."""
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    summary = TrafficSummary()
    threads: dict[str, list[int]] = defaultdict(list)
    total = max(1, int(rate * duration))
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = PlatformClient(session, api_url, api_key, org_id)
        plan = TrafficPlan(seed, await client.directory())
        in_flight = asyncio.Semaphore(max_in_flight)

        async def one(action) -> None:
            started = time.perf_counter()
            try:
                status, body = await client.perform(action)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status, body = 0, None
            finally:
                in_flight.release()
            if 200 <= status < 300:
                summary.sent += 1
                summary.latencies_ms.append((time.perf_counter() - started) * 1000)
                summary.by_kind[_kind(action)] += 1
                if isinstance(body, dict) and body.get("duplicate"):
                    summary.duplicates += 1
                elif isinstance(action, (PartnerMessage, ChannelMessage)) and isinstance(body, dict):
                    partner = action.partner if isinstance(action, PartnerMessage) else CUSTOM
                    if body["conversation_id"] not in threads[partner]:
                        threads[partner].append(body["conversation_id"])
            elif 400 <= status < 500:
                summary.refused += 1
            else:
                summary.errors += 1
            if on_result is not None:
                on_result(summary)

        started = time.monotonic()
        tasks = set()
        for i in range(total):
            if stop is not None and stop.is_set():
                break
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() - started > duration:
                break
            await in_flight.acquire()
            task = asyncio.create_task(one(plan.next(threads)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=60)
        summary.elapsed = time.monotonic() - started
        counts = await client.delivery_counts()
        if counts is not None:
            summary.delivered, summary.failed, summary.pending = counts
    return summary
