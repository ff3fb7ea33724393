"""Every header name of the wire contract (CONTRACT.md, section 2), in one place.

The Standard Webhooks headers have fixed names. The vendor's own headers
share a configurable prefix (``X-Tidings`` by default), so both ends derive
them from the same prefix with ``VendorHeaders``:

>>> headers = VendorHeaders("X-Acme")
>>> headers.signature, headers.sequence, headers.tryout
('X-Acme-Signature-v1', 'X-Acme-Sequence', 'X-Acme-Tryout')
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_VENDOR_PREFIX",
    "ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "VendorHeaders",
]

DEFAULT_VENDOR_PREFIX = "X-Tidings"

# Standard Webhooks: the same on every attempt (id), this attempt's time, and the signatures.
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"

CONTENT_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class VendorHeaders:
    """The vendor headers of one prefix: the body-only Ed25519 signature, the
    event's place in its conversation (ordered delivery) and the test-delivery
    marker. ``*_lower`` are the names as ASGI servers hand them over."""

    prefix: str = DEFAULT_VENDOR_PREFIX
    signature: str = field(init=False)
    sequence: str = field(init=False)
    tryout: str = field(init=False)
    signature_lower: str = field(init=False)
    sequence_lower: str = field(init=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "signature", f"{self.prefix}-Signature-v1")
        set_(self, "sequence", f"{self.prefix}-Sequence")
        set_(self, "tryout", f"{self.prefix}-Tryout")
        set_(self, "signature_lower", self.signature.lower())
        set_(self, "sequence_lower", self.sequence.lower())
