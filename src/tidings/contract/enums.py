"""Open enums: every value the contract names is a constant, and any other
string is still accepted and kept (the publisher adds values without notice).

    >>> ContentType("Text") == ContentType.TEXT
    True
    >>> ContentType("Hologram").is_known
    False
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema


class OpenEnum(str):
    """A string that knows whether it is one of its type's known values.

    Subclasses declare their known values as upper-case class attributes;
    ``__init_subclass__`` turns each into an instance of the subclass.
    """

    __slots__ = ()
    known_values: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        known = []
        for name, value in list(vars(cls).items()):
            if name.isupper() and isinstance(value, str):
                setattr(cls, name, cls(value))
                known.append(value)
        cls.known_values = frozenset(known)

    @property
    def is_known(self) -> bool:
        return str(self) in type(self).known_values

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    @classmethod
    def __get_pydantic_core_schema__(cls, _source: Any, _handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls,
            core_schema.str_schema(strict=True),
            serialization=core_schema.plain_serializer_function_ser_schema(str, when_used="json"),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict:
        known = sorted(cls.known_values)
        return {
            "type": "string",
            "examples": known,
            "description": (
                f"Open enum. Known values: {', '.join(known)}. "
                "New values may appear without notice and must be accepted."
            ),
        }


class ContentType(OpenEnum):
    __slots__ = ()
    TEXT = "Text"
    IMAGE = "Image"
    VIDEO = "Video"
    AUDIO = "Audio"
    DOCUMENT = "Document"
    IG_STORY_REPLY = "IgStoryReply"
    IG_STORY_MENTION = "IgStoryMention"
    UNSUPPORTED = "Unsupported"


class SenderType(OpenEnum):
    __slots__ = ()
    USER = "User"  # a business user
    CONSUMER = "Consumer"  # the customer
    METADATA = "Metadata"


class MessageStatus(OpenEnum):
    __slots__ = ()
    SENDING = "Sending"
    SUCCESS = "Success"
    FAILED = "Failed"


class ConversationStatus(OpenEnum):
    __slots__ = ()
    OPEN = "Open"
    CLOSED = "Closed"


class MessagingPartner(OpenEnum):
    __slots__ = ()
    GOOGLE = "Google"
    FACEBOOK = "Facebook"
    INSTAGRAM = "Instagram"
    SMS = "SMS"
    WHATSAPP = "Whatsapp"


class IssueCode(OpenEnum):
    """Set-up problems that block sending in a conversation."""

    __slots__ = ()
    FACEBOOK_NO_PAGE_LINKED = "facebook_no_page_linked"


class EventType(OpenEnum):
    __slots__ = ()
    MESSAGE_CREATED = "message_created"
    MESSAGE_UPDATED = "message_updated"
