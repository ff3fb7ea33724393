"""The rules a webhook configuration must follow (CONTRACT.md sections 2 and 3).

Pure functions, no I/O: each raises ``WebhookRuleError`` with a sentence that
says what is wrong, which the API answers as a 4xx. Where a target may
point (its host normalised, credentials, private addresses) is decided by
``tidings.platform.transport.guard``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from tidings.contract import EVENT_TYPES

MAX_CUSTOM_HEADERS = 5
MAX_HEADER_KEY_LENGTH = 128
MAX_HEADER_VALUE_LENGTH = 512
FORBIDDEN_KEY_CHARACTERS = frozenset(' ()<>@,;:\\"/[]?={}')
MAX_URL_LENGTH = 2000  # the width of webhook_configs.url
BY_CONVERSATION = "conversation"  # ordered delivery: a conversation's events one after the other
UNORDERED = "none"
ORDERINGS = (BY_CONVERSATION, UNORDERED)
DEFAULT_ORDERING = BY_CONVERSATION
MIN_PER_PAGE = 1
MAX_PER_PAGE = 100


class WebhookRuleError(ValueError):
    """A configuration that breaks a rule; ``field`` names where, ``str()`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def keep_masked_values(given: Mapping[str, str], stored: Mapping[str, str], mask: str) -> dict[str, str]:
    """The custom headers of an update: a value given as ``mask`` (as the API
    shows it) keeps the stored value of that name (pure).

    >>> keep_masked_values({"X-A": "****", "X-B": "new"}, {"X-A": "old", "X-B": "b"}, "****")
    {'X-A': 'old', 'X-B': 'new'}
    >>> keep_masked_values({"X-C": "****"}, {}, "****")
    Traceback (most recent call last):
    tidings.platform.webhook_rules.WebhookRuleError: 'X-C' is masked but has no stored value to keep
    """
    kept = {}
    for name, value in given.items():
        if value == mask:
            if name not in stored:
                raise WebhookRuleError("custom_headers", f"{name!r} is masked but has no stored value to keep")
            value = stored[name]
        kept[name] = value
    return kept


def check_custom_headers(headers: Mapping[str, str], vendor_prefix: str) -> None:
    """At most 5 headers; each key ``X-...``, not the vendor's, at most 128
    characters, none of the forbidden ones; each value at most 512 characters.

    Ours, beyond the contract: keys are printable ASCII (an HTTP token) and
    values hold no control character, so that no header can split a request.
    """
    if len(headers) > MAX_CUSTOM_HEADERS:
        raise WebhookRuleError(
            "custom_headers", f"at most {MAX_CUSTOM_HEADERS} custom headers are allowed, {len(headers)} were given")
    seen: set[str] = set()
    for key, value in headers.items():
        check_custom_header_key(key, vendor_prefix)
        if key.lower() in seen:
            raise WebhookRuleError("custom_headers", f"the custom header {key!r} is given twice (names ignore case)")
        seen.add(key.lower())
        check_custom_header_value(key, value)


def check_custom_header_key(key: str, vendor_prefix: str) -> None:
    where = "custom_headers"
    if not key.lower().startswith("x-"):
        raise WebhookRuleError(where, f"the custom header {key!r} must start with 'X-'")
    if key.lower().startswith(vendor_prefix.lower()):
        raise WebhookRuleError(where, f"the custom header {key!r} uses the reserved prefix {vendor_prefix!r}")
    if len(key) > MAX_HEADER_KEY_LENGTH:
        raise WebhookRuleError(
            where, f"the custom header name {key[:20]!r}... is {len(key)} characters long; at most {MAX_HEADER_KEY_LENGTH}")
    forbidden = sorted({ch for ch in key if ch in FORBIDDEN_KEY_CHARACTERS})
    if forbidden:
        shown = " ".join("space" if ch == " " else ch for ch in forbidden)
        raise WebhookRuleError(where, f"the custom header {key!r} contains forbidden characters: {shown}")
    if not all(33 <= ord(ch) <= 126 for ch in key):
        raise WebhookRuleError(where, f"the custom header {key!r} must be printable ASCII without control characters")


def check_custom_header_value(key: str, value: str) -> None:
    where = "custom_headers"
    if len(value) > MAX_HEADER_VALUE_LENGTH:
        raise WebhookRuleError(
            where, f"the value of custom header {key!r} is {len(value)} characters long; at most {MAX_HEADER_VALUE_LENGTH}")
    if any(ord(ch) < 32 and ch != "\t" or ord(ch) == 127 for ch in value):
        raise WebhookRuleError(where, f"the value of custom header {key!r} contains a control character")


def check_url(url: str, *, allow_http: bool) -> None:
    """An absolute ``https://`` URL with a host (``http://`` too when allowed)."""
    if len(url) > MAX_URL_LENGTH:
        raise WebhookRuleError("url", f"the URL is {len(url)} characters long; at most {MAX_URL_LENGTH}")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise WebhookRuleError("url", "the URL contains whitespace or a control character")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port that is not a number in range
    except ValueError as exc:
        raise WebhookRuleError("url", f"the URL cannot be read: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "http" and not allow_http:
        raise WebhookRuleError("url", "the URL must use https:// (plain http:// is not allowed here)")
    if scheme not in ("https", "http"):
        raise WebhookRuleError("url", f"the URL must be an absolute https:// URL, not {url[:60]!r}")
    if not parts.hostname:
        raise WebhookRuleError("url", "the URL has no host")
    if port == 0:
        raise WebhookRuleError("url", "the URL's port must be between 1 and 65535")


def check_event_type(event_type: str) -> None:
    if event_type not in EVENT_TYPES:
        raise WebhookRuleError(
            "event_type", f"unknown event type {event_type!r}; one of: {', '.join(EVENT_TYPES)}")


def check_ordering(ordering: str) -> None:
    if ordering not in ORDERINGS:
        raise WebhookRuleError("ordering", f"ordering must be one of: {', '.join(ORDERINGS)}; not {ordering!r}")


def check_one_per_event_type(existing: Mapping[str, int], requested: Iterable[str]) -> None:
    """One configuration per organization and event type.

    ``existing`` maps each event type the organization already has to that
    configuration's id; ``requested`` lists the event types being created.
    """
    wanted: set[str] = set()
    for event_type in requested:
        if event_type in existing:
            raise WebhookRuleError(
                "event_type",
                f"this organization already has webhook configuration {existing[event_type]} for {event_type}; "
                f"change it with PUT /v2/webhooks/{existing[event_type]} instead",
            )
        if event_type in wanted:
            raise WebhookRuleError("event_type", f"{event_type} is requested twice; one configuration per event type")
        wanted.add(event_type)


@dataclass(frozen=True)
class PageWindow:
    page: int
    per_page: int
    max_page: int
    offset: int


def page_window(count: int, page: int, per_page: int) -> PageWindow:
    """Which rows page ``page`` holds out of ``count``; pages start at 1.

    ``max_page`` is at least 1, so that page 1 of an empty list exists; a page
    beyond it is empty rather than an error.
    """
    if per_page < MIN_PER_PAGE or per_page > MAX_PER_PAGE:
        raise WebhookRuleError("per_page", f"per_page must be between {MIN_PER_PAGE} and {MAX_PER_PAGE}, not {per_page}")
    if page < 1:
        raise WebhookRuleError("page", f"page starts at 1, not {page}")
    max_page = max(1, math.ceil(count / per_page))
    return PageWindow(page=page, per_page=per_page, max_page=max_page, offset=(page - 1) * per_page)
