"""Handlers: the subscriber's own code, run on each stored event after the acknowledgement.

    handlers = Handlers()

    @handlers.on("message_created", sender_type="Consumer", status="Success")
    async def new_message(event: ReceivedEvent) -> None:
        ...

A handler is a function (sync or async) of one ``ReceivedEvent``. Returning
means done; raising means try again later, with backoff; after ``max_tries``
failures the event lands in the dead-letter list, from which it can be
replayed. A handler may run more than once for one event (at least once):
make it idempotent, for instance by the event's ``id``.

Filters are pure: the event type, and fields of the message (``status``) or,
with a dotted name, of the payload (``conversation.messaging_partner``,
``org_id``), compared as strings; ``where`` takes any predicate.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from tidings.contract import Event, parse_event

DEFAULT_MAX_TRIES = 5
DEFAULT_BACKOFF_BASE = 1.0  # seconds before the 2nd try; doubles after each failure
DEFAULT_BACKOFF_CAP = 300.0


def retry_delay(failures: int, base: float = DEFAULT_BACKOFF_BASE, cap: float = DEFAULT_BACKOFF_CAP) -> float:
    """Seconds to wait after the ``failures``-th failure: exponential, capped.

    >>> [retry_delay(n, base=1, cap=10) for n in range(1, 6)]
    [1, 2, 4, 8, 10]
    """
    return min(cap, base * 2 ** (failures - 1))


@dataclass(frozen=True)
class ReceivedEvent:
    """One event of the log, as a handler sees it."""

    id: int  # the log position: unique, stable, a good idempotency key
    type: str
    body: bytes  # exactly as received
    webhook_id: str | None
    received_at: float
    # X-Tidings-Sequence: the event's number within its conversation and
    # webhook configuration, None if the request carried none. Handlers run in
    # arrival order, which the platform's ordered delivery makes this order;
    # a handler can use the number to notice a hole.
    sequence: int | None = None

    @property
    def document(self) -> dict[str, Any]:
        """The body as JSON, every field kept as sent."""
        return orjson.loads(self.body)

    @property
    def event(self) -> Event:
        """The typed event (``MessageCreated``, ``MessageUpdated`` or ``UnknownEvent``)."""
        return parse_event(self.body)


def field_value(document: Mapping[str, Any], name: str) -> Any:
    """A field of an event document: a message field by its name, else a dotted path in the payload.

    >>> doc = {"payload": {"message": {"status": "Success"}, "org_id": 7}}
    >>> field_value(doc, "status"), field_value(doc, "org_id"), field_value(doc, "message.nope")
    ('Success', 7, None)
    """
    payload = document.get("payload")
    if not isinstance(payload, Mapping):
        return None
    message = payload.get("message")
    if "." not in name and isinstance(message, Mapping) and name in message:
        return message[name]
    value: Any = payload
    for part in name.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


@dataclass(frozen=True)
class EventFilter:
    """Which events a handler takes: types (empty: all), fields equal to values, a predicate."""

    event_types: frozenset[str] = frozenset()
    fields: tuple[tuple[str, str], ...] = ()
    where: Callable[[dict[str, Any]], bool] | None = None

    def matches(self, event_type: str, document: Mapping[str, Any]) -> bool:
        if self.event_types and event_type not in self.event_types:
            return False
        for name, expected in self.fields:
            if _as_text(field_value(document, name)) != expected:
                return False
        return self.where is None or bool(self.where(document))

    @classmethod
    def parse(cls, event_types: list[str] | tuple[str, ...] = (), conditions: list[str] | tuple[str, ...] = ()) -> EventFilter:
        """A filter from command-line words: types, and ``field=value`` conditions."""
        pairs = []
        for condition in conditions:
            name, equals, value = condition.partition("=")
            if not equals or not name.strip():
                raise ValueError(f"a condition is field=value, not {condition!r}")
            pairs.append((name.strip(), value.strip()))
        return cls(frozenset(event_types), tuple(pairs))


@dataclass(frozen=True)
class Handler:
    name: str
    function: Callable[[ReceivedEvent], Any]
    filter: EventFilter = field(default_factory=EventFilter)
    max_tries: int = DEFAULT_MAX_TRIES
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.max_tries < 1:
            raise ValueError("max_tries is at least 1")


def handler_name(function: Callable) -> str:
    return f"{getattr(function, '__module__', '?')}:{getattr(function, '__qualname__', repr(function))}"


class Handlers:
    """A registry of handlers; the receiver's service runs them."""

    def __init__(self) -> None:
        self._by_name: dict[str, Handler] = {}

    def on(
        self,
        *event_types: str,
        name: str | None = None,
        max_tries: int = DEFAULT_MAX_TRIES,
        timeout: float = 60.0,
        where: Callable[[dict[str, Any]], bool] | None = None,
        **fields: Any,
    ) -> Callable:
        """Decorator: run the function on events of ``event_types`` (all when none) that match."""

        def register(function: Callable) -> Callable:
            self.add(
                function,
                name=name,
                filter=EventFilter(frozenset(event_types), tuple((k, _as_text(v)) for k, v in fields.items()), where),
                max_tries=max_tries,
                timeout=timeout,
            )
            return function

        return register

    def add(
        self,
        function: Callable[[ReceivedEvent], Any],
        *,
        name: str | None = None,
        filter: EventFilter | None = None,
        max_tries: int = DEFAULT_MAX_TRIES,
        timeout: float = 60.0,
    ) -> Handler:
        handler = Handler(name or handler_name(function), function, filter or EventFilter(), max_tries, timeout)
        if handler.name in self._by_name:
            raise ValueError(f"a handler named {handler.name!r} is already registered")
        self._by_name[handler.name] = handler
        return handler

    def extend(self, other: Handlers) -> None:
        for handler in other:
            if handler.name in self._by_name:
                raise ValueError(f"a handler named {handler.name!r} is already registered")
            self._by_name[handler.name] = handler

    def __iter__(self) -> Iterator[Handler]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> Handler | None:
        return self._by_name.get(name)


def load_handlers(spec: str, default_filter: EventFilter | None = None) -> Handlers:
    """Handlers from ``module:attribute``: a ``Handlers`` registry or one function.

    A plain function gets ``default_filter`` (from ``--on``/``--where``).
    """
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"a handler is given as module:function, not {spec!r}")
    module = importlib.import_module(module_name)
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"{module_name} has no attribute {attribute!r}") from None
    if isinstance(target, Handlers):
        return target
    if not callable(target):
        raise ValueError(f"{spec} is neither a function nor a Handlers registry")
    registry = Handlers()
    registry.add(target, name=spec, filter=default_filter)
    return registry
