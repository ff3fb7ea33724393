"""The test delivery ("tryout", CONTRACT.md section 2): one event sent to a
URL now, with the vendor's tryout header, and how the endpoint answered.
Nothing is stored and nothing is retried. The API (``POST /v2/webhooks/test``)
and the dashboard's test button both call ``try_out``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.contract import EVENT_TYPES, dump_event
from tidings.contract.samples import SampleFactory
from tidings.contract.signing import Signer
from tidings.platform import configurations
from tidings.platform.deliveries import reads
from tidings.platform.deliveries.outbox import new_webhook_id
from tidings.platform.settings import DeliverySettings
from tidings.platform.transport import LeanTransport, TargetPolicy, TargetRefused, check_target_url, request_headers
from tidings.platform.webhook_rules import WebhookRuleError, check_custom_headers, check_url

__all__ = ["TryoutOutcome", "TryoutRefused", "try_out"]


class TryoutRefused(ValueError):
    """The tryout cannot be sent; ``field`` names what is wrong and ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class TryoutOutcome:
    url: str
    event_type: str
    sample: str  # "newest_event" or "default_sample"
    delivered: bool  # the endpoint answered 2xx
    status_code: int | None
    duration_ms: float
    response_excerpt: str | None
    error: str | None


def check_tryout(url: str, event_type: str, custom_headers: Mapping[str, str], settings: DeliverySettings) -> str:
    """The URL in its normalised form (``normalize_target``); raises
    ``TryoutRefused`` for a tryout that breaks a rule (pure)."""
    if event_type not in EVENT_TYPES:
        raise TryoutRefused("event_type", f"unknown event type {event_type!r}")
    try:
        check_url(url, allow_http=settings.allow_http)
        check_custom_headers(custom_headers, settings.vendor_prefix)
        return check_target_url(url, TargetPolicy.from_settings(settings))
    except WebhookRuleError as error:
        raise TryoutRefused(error.field, error.reason) from None
    except TargetRefused as refused:
        raise TryoutRefused("url", f"the target is refused: {refused.reason}") from None


async def try_out(engine: AsyncEngine, signer: Signer, settings: DeliverySettings, *, org_id: int, url: str,
                  event_type: str, custom_headers: Mapping[str, str]) -> TryoutOutcome:
    """Sends the organization's newest event of ``event_type`` (or a sample),
    signed as a delivery of its configuration of that type would be, to the
    normalised URL (which the outcome shows)."""
    url = check_tryout(url, event_type, custom_headers, settings)
    async with engine.connect() as conn:
        newest = await reads.newest_event_body(conn, org_id=org_id, event_type=event_type)
        config = await configurations.for_event_type(conn, org_id=org_id, event_type=event_type)
    body = newest if newest is not None else dump_event(SampleFactory().event(event_type))
    now = time.time()
    secrets = [] if config is None else configurations.secrets_now(config, now)
    headers = request_headers(signer, body=body, webhook_id=new_webhook_id(),
                              vendor_signature=signer.vendor_signature(body), secrets=secrets,
                              custom_headers=custom_headers, timestamp=int(now), extra={signer.headers.tryout: "true"})
    transport = LeanTransport(TargetPolicy.from_settings(settings), attempt_timeout=settings.attempt_timeout,
                              concurrency=1, per_endpoint=1)
    try:
        answer = await transport.post(url, body, headers)
    finally:
        await transport.close()
    return TryoutOutcome(
        url=url, event_type=event_type, sample="newest_event" if newest is not None else "default_sample",
        delivered=answer.status_code is not None and 200 <= answer.status_code < 300,
        status_code=answer.status_code, duration_ms=round(answer.duration_ms, 3), response_excerpt=answer.excerpt,
        error=None if answer.error is None else f"{answer.error_kind or 'error'}: {answer.error}")
