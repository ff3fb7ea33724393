"""What makes two requests the same delivery: a pure decision, no I/O.

A retry of one delivery carries the same ``webhook-id`` (Standard Webhooks)
and, from a sender that honours the contract, the same body bytes. The id is
trusted only when a signature covers it (``v1a`` or ``v1`` sign
``{id}.{timestamp}.{body}``): the vendor header signs the body alone, so an id
next to it could be chosen by whoever replays a captured body, and a chosen id
could shadow a later, genuine delivery. Without a signed id the key is the
SHA-256 of the body, which no one can shadow without the body itself.
"""

from __future__ import annotations

import hashlib

SIGNED_ID_SCHEMES = frozenset({"v1a", "v1"})


def dedupe_key(body: bytes, webhook_id: str | None, scheme: str) -> str:
    """The key under which a delivery is stored once.

    >>> dedupe_key(b"{}", "msg_1", "v1a")
    'id:msg_1'
    >>> dedupe_key(b"{}", "msg_1", "vendor")[:10]
    'sha256:441'
    """
    if webhook_id and scheme in SIGNED_ID_SCHEMES:
        return "id:" + webhook_id
    return "sha256:" + hashlib.sha256(body).hexdigest()
