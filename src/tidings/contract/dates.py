"""The contract's date format: ``2023-01-31 16:22:17.327878+00:00``.

Reading accepts that format and ISO 8601 (``T`` separator, ``Z``, any numeric
offset); writing always gives the contract's format in UTC, so that one
instant has one spelling on the wire.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

CONTRACT_DATE_FORMAT = "%Y-%m-%d %H:%M:%S.%f+00:00"
EXAMPLE_DATE = "2023-01-31 16:22:17.327878+00:00"


def parse_date(value: Any) -> datetime:
    """A timezone-aware datetime from a contract or ISO 8601 string."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not a date in the contract's format ({EXAMPLE_DATE}): {value!r}") from None
    else:
        raise ValueError(f"a date must be a string like {EXAMPLE_DATE}")
    if parsed.tzinfo is None:
        raise ValueError(f"a date needs a UTC offset, like {EXAMPLE_DATE}: {value!r}")
    return parsed


def format_date(value: datetime) -> str:
    """The contract's spelling of ``value``, in UTC: ``CONTRACT_DATE_FORMAT``
    (the year always in four digits), which ``isoformat`` writes in a fifth of
    ``strftime``'s time (every event carries three dates)."""
    return value.astimezone(UTC).isoformat(" ", "microseconds")


def format_iso_z(value: datetime) -> str:
    """The configuration API's spelling: ISO 8601 in UTC with a ``Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utcnow() -> datetime:
    return datetime.now(UTC)


ContractDate = Annotated[
    datetime,
    BeforeValidator(parse_date),
    PlainSerializer(format_date, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$",
            "examples": [EXAMPLE_DATE],
            "description": "YYYY-MM-DD HH:MM:SS.ffffff+00:00 (UTC when written; ISO 8601 accepted when read)",
        }
    ),
]
