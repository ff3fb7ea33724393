"""One attempt: its headers, signed at this moment, and the request.

The headers are the configuration's custom headers, then ``Content-Type``,
the stored vendor signature, ``webhook-id``, ``webhook-timestamp``,
``webhook-signature`` and, for a delivery with a place in its conversation,
the vendor's sequence header; none of those can be replaced by a custom
header. The vendor signature is made once, by the outbox, and stored; each
attempt signs only the Standard Webhooks ``v1a`` (Ed25519) and ``v1`` (HMAC)
over ``{webhook-id}.{webhook-timestamp}.{body}``, since ``webhook-id`` and the
timestamp differ for every attempt.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from tidings.contract.headers import CONTENT_TYPE, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from tidings.contract.signing import Signer
from tidings.platform.transport.types import Answer, Transport

__all__ = ["MASKED", "Outgoing", "masked_headers", "request_headers", "sign_and_post"]

# What an attempt's record, the API and the pages show for a custom header's value (often a token).
MASKED = "********"


class Outgoing(NamedTuple):
    """What one attempt sends, before it is signed."""

    url: str
    body: bytes
    webhook_id: str
    vendor_signature: str
    secrets: Sequence[str]
    custom_headers: Mapping[str, str] | None
    sequence: int | None = None


def request_headers(signer: Signer, *, body: bytes, webhook_id: str, vendor_signature: str,
                    secrets: Sequence[str], custom_headers: Mapping[str, str] | None, timestamp: int,
                    extra: Mapping[str, str] | None = None, sequence: int | None = None) -> dict[str, str]:
    """Every header of one attempt. The configuration's custom headers come
    first, so that none of them can replace a signature header (or the
    sequence header, sent when the delivery has a ``sequence``)."""
    headers = dict(custom_headers) if custom_headers else {}
    if extra:
        headers.update(extra)
    headers["Content-Type"] = CONTENT_TYPE
    headers[signer.headers.signature] = vendor_signature
    headers[ID_HEADER] = webhook_id
    headers[TIMESTAMP_HEADER] = str(timestamp)
    headers[SIGNATURE_HEADER] = signer.standard_signature(webhook_id, timestamp, body, secrets)
    if sequence is not None:
        headers[signer.headers.sequence] = str(sequence)
    return headers


def masked_headers(headers: dict[str, str], custom_headers: Mapping[str, str] | None) -> dict[str, str]:
    """``headers`` with the value of each custom header replaced by ``MASKED``,
    unless a header of the protocol took its place (pure).

    >>> masked_headers({"X-Token": "t0k", "X-Seq": "7", "webhook-id": "msg_1"}, {"X-Token": "t0k", "X-Seq": "x"})
    {'X-Token': '********', 'X-Seq': '7', 'webhook-id': 'msg_1'}
    """
    if not custom_headers:
        return headers  # nothing to mask: the same dict, not a copy (the dispatcher's hot path)
    return {name: MASKED if custom_headers.get(name) == value else value for name, value in headers.items()}


async def sign_and_post(signer: Signer, transport: Transport, outgoing: Outgoing) -> tuple[dict[str, str], Answer]:
    """One attempt: its headers as the record keeps them (custom headers'
    values masked, so the database never holds them), signed with this
    moment's timestamp, and how the request went."""
    headers = request_headers(signer, body=outgoing.body, webhook_id=outgoing.webhook_id,
                              vendor_signature=outgoing.vendor_signature, secrets=outgoing.secrets,
                              custom_headers=outgoing.custom_headers, timestamp=int(time.time()),
                              sequence=outgoing.sequence)
    answer = await transport.post(outgoing.url, outgoing.body, headers)
    return masked_headers(headers, outgoing.custom_headers), answer
