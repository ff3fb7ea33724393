"""The network side of a delivery: one small interface, one client, one SSRF guard.

- ``types``: ``Answer`` and the ``Transport`` interface (``post`` never raises
  for anything the endpoint does);
- ``attempt``: one attempt's signed headers and its request (``sign_and_post``);
- ``lean``: ``LeanTransport``, the HTTP/1.1 client the dispatcher and the
  tryout both use;
- ``guard``: where the platform may send requests (the SSRF decision).
"""

from tidings.platform.transport.attempt import MASKED, Outgoing, masked_headers, request_headers, sign_and_post
from tidings.platform.transport.guard import TargetPolicy, TargetRefused, check_target_url, normalize_target
from tidings.platform.transport.lean import LeanTransport
from tidings.platform.transport.types import Answer, Transport

__all__ = [
    "MASKED",
    "Answer",
    "LeanTransport",
    "Outgoing",
    "TargetPolicy",
    "TargetRefused",
    "Transport",
    "check_target_url",
    "normalize_target",
    "masked_headers",
    "request_headers",
    "sign_and_post",
]
