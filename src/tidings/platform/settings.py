"""Everything a platform process is configured with, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tidings.contract.signing import DEFAULT_VENDOR_PREFIX
from tidings.store.engine import DEFAULT_DB_URL


@dataclass(frozen=True)
class DeliverySettings:
    """How the dispatcher sends and retries (CONTRACT.md section 2)."""

    max_retries: int = 5  # attempts after the first
    retry_base: float = 30.0  # seconds before the first retry
    retry_factor: float = 4.0  # each later wait is this many times longer
    retry_jitter: float = 0.1  # +/- this fraction of each wait
    attempt_timeout: float = 10.0  # seconds for one whole attempt
    max_per_endpoint: int = 32  # concurrent requests to one host and port
    batch_size: int = 256  # deliveries claimed in one statement
    allow_private_targets: bool = False  # loopback, private, link-local addresses
    allow_http: bool = False  # plain http:// URLs
    vendor_prefix: str = DEFAULT_VENDOR_PREFIX
    heartbeat_interval: float = 2.0
    stale_after: float = 15.0  # a worker silent this long has its deliveries handed back
    # Seconds between looks for due deliveries when nothing wakes the dispatcher: a
    # committed delivery wakes it at once (deliveries.wakeup), so this is a safety net.
    poll_interval: float = 0.5


@dataclass(frozen=True)
class PartnerSettings:
    """The simulated built-in partners (Facebook, ...), unreachable from here."""

    latency: float = 0.2  # seconds before a partner answers
    failure_rate: float = 0.05  # share of replies a partner refuses


@dataclass(frozen=True)
class PlatformSettings:
    db_url: str = DEFAULT_DB_URL
    signing_key_path: Path | None = None
    secret_overlap: float = 24 * 3600.0  # seconds a rotated secret keeps signing
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    partners: PartnerSettings = field(default_factory=PartnerSettings)
