"""The delivery flags that ``tidings serve`` and ``tidings worker`` share,
declared once, and the settings they make."""

from __future__ import annotations

from typing import Annotated

import typer

from tidings.contract.signing import DEFAULT_VENDOR_PREFIX
from tidings.platform.settings import DeliverySettings
from tidings.store.engine import DEFAULT_DB_URL

Db = Annotated[str, typer.Option("--db", envvar="TIDINGS_DB", help="sqlite:///FILE or postgresql://...")]
MaxRetries = Annotated[int, typer.Option("--max-retries", min=0, help="attempts after the first")]
RetryBase = Annotated[float, typer.Option("--retry-base", min=0.0, help="seconds before the first retry")]
RetryFactor = Annotated[float, typer.Option("--retry-factor", min=1.0, help="each later wait is this many times longer")]
AttemptTimeout = Annotated[float, typer.Option("--attempt-timeout", min=0.01, help="seconds for one attempt")]
AllowPrivateTargets = Annotated[bool, typer.Option("--allow-private-targets",
                                                   help="allow loopback, private and link-local targets")]
AllowHttp = Annotated[bool, typer.Option("--allow-http", help="allow plain http:// targets")]
Concurrency = Annotated[int, typer.Option("--concurrency", min=1, help="requests in flight, over all endpoints")]
MaxPerEndpoint = Annotated[int, typer.Option("--max-per-endpoint", min=1, help="requests in flight to one endpoint")]
PollInterval = Annotated[float, typer.Option(
    "--poll-interval", min=0.01, help="seconds between looks for due deliveries when nothing wakes the dispatcher")]
VendorPrefix = Annotated[str, typer.Option("--vendor-prefix", help="prefix of the vendor signature header")]

DEFAULTS = DeliverySettings()
__all__ = ["DEFAULT_DB_URL", "DEFAULT_VENDOR_PREFIX", "DEFAULTS"]
