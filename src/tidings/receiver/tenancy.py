"""Which organizations a receiver serves: pure decisions, no I/O.

One platform key signs the bodies of every organization, so a body sent to
organization B verifies at organization A's receiver as well. A receiver
therefore names the organizations it serves (``tidings receive --org-id N``,
``Receiver(..., org_ids=[N])``) and refuses an authentic event of any other
with ``403`` before anything is stored, quarantine included; or it says
explicitly that it takes every organization (``--any-org``, ``any_org=True``).

The organization is the payload's ``org_id``. A body that does not parse
under the contract may still name it: its ``payload.org_id``, read from the
JSON alone, decides, so that a pinned receiver keeps quarantining its own
organization's bodies after a change on the sender's side. A body whose
organization cannot be read at all (not JSON, no integer ``payload.org_id``)
is refused by a pinned receiver, since nothing shows it is meant for it; with
``any_org`` it is quarantined as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

# The pin of a receiver: the organizations it serves, or None for every one.
ServedOrgs = frozenset[int] | None

CHOOSE = "say which organizations this receiver serves: org_ids=[...] (pinned) or any_org=True"


def served_orgs(org_ids: Iterable[int] | None, any_org: bool) -> ServedOrgs:
    """The pin named by a receiver's options; ``ValueError`` unless exactly one choice is made.

    >>> sorted(served_orgs([2, 1, 2], False)), served_orgs(None, True)
    ([1, 2], None)
    """
    ids = frozenset(org_ids or ())
    if ids and any_org:
        raise ValueError("give org_ids or any_org, not both")
    if any_org:
        return None
    if not ids:
        raise ValueError(CHOOSE)
    for org_id in ids:
        if isinstance(org_id, bool) or not isinstance(org_id, int) or org_id < 1:
            raise ValueError(f"an organization id is a positive integer, not {org_id!r}")
    return ids


def serves(served: ServedOrgs, org_id: int | None) -> bool:
    """Whether a receiver pinned to ``served`` takes an event of ``org_id`` (None: unreadable).

    >>> serves(None, None), serves(frozenset({1}), 1), serves(frozenset({1}), 2), serves(frozenset({1}), None)
    (True, True, False, False)
    """
    return served is None or (org_id is not None and org_id in served)


def _as_org_id(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def org_id_of_event(event: Any) -> int | None:
    """The ``org_id`` of a parsed event: a typed payload's field, or an unknown event's JSON payload's."""
    payload = getattr(event, "payload", None)
    if isinstance(payload, dict):
        return _as_org_id(payload.get("org_id"))
    return _as_org_id(getattr(payload, "org_id", None))


def org_id_of_body(body: bytes) -> int | None:
    """The ``payload.org_id`` of a raw body that did not parse as an event, when it is an integer.

    >>> org_id_of_body(b'{"payload": {"org_id": 7, "message": "not a message"}}'), org_id_of_body(b"<xml/>")
    (7, None)
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    payload = document.get("payload") if isinstance(document, dict) else None
    return _as_org_id(payload.get("org_id")) if isinstance(payload, dict) else None
