"""Reading and writing events as bytes, and their JSON Schema."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from tidings.contract.models import EVENT_MODELS, EVENT_TYPES, Event, UnknownEvent


class EventError(ValueError):
    """Input that is not an event under the contract. The message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _location(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif str(part).startswith(("function-", "json-or-python")):
            continue  # pydantic's validator names, not fields
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


def _first_error(exc: ValidationError) -> EventError:
    error = exc.errors(include_url=False)[0]
    return EventError(_location(error["loc"]), error["msg"])


def parse_event(raw: bytes | str) -> Event:
    """The typed event in ``raw``.

    A known ``type`` gives its model; an unknown one gives ``UnknownEvent``
    (never an error for that alone). Anything else that is wrong raises
    ``EventError`` naming the field.
    """
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventError("body", f"not valid JSON ({exc})") from None
    return event_from_document(document)


def event_from_document(document: Any) -> Event:
    """The typed event for an already-decoded JSON document."""
    if not isinstance(document, dict):
        raise EventError("body", "an event is a JSON object")
    event_type = document.get("type")
    if "type" not in document:
        raise EventError("type", "Field required")
    if not isinstance(event_type, str):
        raise EventError("type", "Input should be a valid string")
    model = EVENT_MODELS.get(event_type, UnknownEvent)
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise _first_error(exc) from None


def event_to_document(event: Event) -> dict[str, Any]:
    """The JSON-ready document of an event.

    Fields that were absent when read stay absent when written (a round trip
    gives back what was read); fields set explicitly, even to null, are written.
    """
    document = event.model_dump(mode="python", exclude_unset=True)
    return {"type": event.type, **document}


def dump_event(event: Event) -> bytes:
    """The event as JSON bytes (orjson). ``parse_event(dump_event(e))`` equals ``e``."""
    return orjson.dumps(event_to_document(event))


def event_json_schema(event_type: str | None = None) -> dict[str, Any]:
    """JSON Schema of one event type, or of all of them keyed by type."""
    if event_type is None:
        return {name: event_json_schema(name) for name in EVENT_TYPES}
    model = EVENT_MODELS.get(event_type)
    if model is None:
        raise EventError("type", f"unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}")
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = event_type
    return schema
