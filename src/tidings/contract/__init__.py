"""The wire contract: events, dates and signatures. No I/O, no framework.

Both ends of tidings depend on this package and on nothing of each other.
"""

from tidings.contract.dates import ContractDate, format_date, format_iso_z, parse_date, utcnow
from tidings.contract.enums import (
    ContentType,
    ConversationStatus,
    EventType,
    IssueCode,
    MessageStatus,
    MessagingPartner,
    OpenEnum,
    SenderType,
)
from tidings.contract.events import (
    EventError,
    dump_event,
    event_from_document,
    event_json_schema,
    event_to_document,
    parse_event,
)
from tidings.contract.models import (
    EVENT_MODELS,
    EVENT_TYPES,
    Business,
    Conversation,
    ConversationCustomChannel,
    Event,
    EventPayload,
    Message,
    MessageCreated,
    MessageCustomChannel,
    MessageEvent,
    MessageUpdated,
    UnknownEvent,
)

__all__ = [
    "EVENT_MODELS",
    "EVENT_TYPES",
    "Business",
    "ContentType",
    "ContractDate",
    "Conversation",
    "ConversationCustomChannel",
    "ConversationStatus",
    "Event",
    "EventError",
    "EventPayload",
    "EventType",
    "IssueCode",
    "Message",
    "MessageCreated",
    "MessageCustomChannel",
    "MessageEvent",
    "MessageStatus",
    "MessageUpdated",
    "MessagingPartner",
    "OpenEnum",
    "SenderType",
    "UnknownEvent",
    "dump_event",
    "event_from_document",
    "event_json_schema",
    "event_to_document",
    "format_date",
    "format_iso_z",
    "parse_date",
    "parse_event",
    "utcnow",
]
