"""What makes two requests the same delivery: pure decisions, no I/O.

A retry of one delivery carries the same ``webhook-id`` (Standard Webhooks)
and, from a sender that honours the contract, the same body bytes. The id is
trusted only when a signature covers it (``v1a`` or ``v1`` sign
``{id}.{timestamp}.{body}``): the vendor header signs the body alone, so an id
next to it could be chosen by whoever replays a captured body, and a chosen id
could shadow a later, genuine delivery. Without a signed id the key is the
SHA-256 of the body, which no one can shadow without the body itself.

Two requests are one delivery when their signed ids are equal, or when their
bodies are equal and at least one of them has no signed id. So a delivery
replayed with its ``webhook-*`` headers stripped (the vendor header left) is
recognised by its body, whatever id it was first stored under; while two
deliveries with distinct signed ids stay two even when their bodies are equal
(the platform can send byte-identical bodies for two events, e.g. a reply
sent again after it failed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence

SIGNED_ID_SCHEMES = frozenset({"v1a", "v1"})
SIGNED_ID_PREFIX = "id:"
BODY_PREFIX = "sha256:"


def body_digest(body: bytes) -> bytes:
    """The SHA-256 of a body, as stored beside it (``body_sha256``)."""
    return hashlib.sha256(body).digest()


def dedupe_key(body: bytes, webhook_id: str | None, scheme: str, digest: bytes | None = None) -> str:
    """The key under which a delivery is stored once (``digest``: the body's, if computed already).

    >>> dedupe_key(b"{}", "msg_1", "v1a")
    'id:msg_1'
    >>> dedupe_key(b"{}", "msg_1", "vendor")[:10]
    'sha256:441'
    """
    if webhook_id and scheme in SIGNED_ID_SCHEMES:
        return SIGNED_ID_PREFIX + webhook_id
    return BODY_PREFIX + (digest if digest is not None else body_digest(body)).hex()


def is_body_key(key: str) -> bool:
    """Whether a request was keyed by its body, having no signed id."""
    return key.startswith(BODY_PREFIX)


def is_same_delivery(key: str, other_key: str, same_body: bool) -> bool:
    """Whether two requests, by their keys and whether their bodies are equal, are one delivery.

    >>> is_same_delivery("id:a", "id:b", same_body=True), is_same_delivery("id:a", "sha256:x", same_body=True)
    (False, True)
    """
    if key == other_key:
        return True
    return same_body and (is_body_key(key) or is_body_key(other_key))


def replays(batch: Sequence[tuple[str, bytes]], stored: Mapping[bytes, Collection[str]]) -> list[bool]:
    """For each ``(key, body digest)`` of a batch, in order, whether it repeats a delivery
    stored already (``stored``: digest -> the keys stored with that body) or earlier in the batch.

    >>> replays([("id:a", b"1"), ("sha256:6b86", b"1"), ("id:b", b"1")], {})
    [False, True, False]
    """
    seen: dict[bytes, list[str]] = {digest: list(keys) for digest, keys in stored.items()}
    verdicts = []
    for key, digest in batch:
        earlier = seen.setdefault(digest, [])
        repeated = any(is_same_delivery(key, other, same_body=True) for other in earlier)
        verdicts.append(repeated)
        if not repeated:
            earlier.append(key)
    return verdicts
