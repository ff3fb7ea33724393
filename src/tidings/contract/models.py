"""The events of CONTRACT.md section 1, as pydantic models.

Every model keeps unknown fields (``extra="allow"``) and writes them back out,
and types are strict: ``"123"`` is not an id and ``0`` is not a boolean, so a
value is never silently changed on its way through. Fields the contract marks
nullable may also be absent; an absent field stays absent when written back.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from tidings.contract.dates import ContractDate
from tidings.contract.enums import (
    ContentType,
    ConversationStatus,
    IssueCode,
    MessageStatus,
    MessagingPartner,
    SenderType,
)


class ContractModel(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=False, validate_default=False)


class MessageCustomChannel(ContractModel):
    """The custom-channel part of a message."""

    external_message_id: str


class ConversationCustomChannel(ContractModel):
    """The custom channel a conversation belongs to."""

    id: str
    name: str
    icon: str
    is_readonly: bool
    external_conversation_id: str


class Business(ContractModel):
    id: str  # 24 hexadecimal characters on the platform; any string is read
    name: str
    city: str
    zipcode: str
    country: str
    formatted_address: str


class Message(ContractModel):
    id: int
    conversation_id: int
    date: ContractDate
    content_type: ContentType
    sender_type: SenderType
    sender_label: str
    status: MessageStatus
    is_deleted: bool
    is_automated: bool
    content: str
    user_id: str | None = None
    custom_channel: MessageCustomChannel | None = None


class Conversation(ContractModel):
    id: int
    consumer_img: str | None = None
    consumer_name: str | None = None
    consumer_phone_number: str | None = None
    consumer_email: str | None = None
    last_message: Message | None = None
    is_read: bool
    status: ConversationStatus
    created_at: ContractDate
    has_one_user_message: bool
    business: Business
    messaging_partner: MessagingPartner
    issues: list[IssueCode]
    first_message_date: str  # a string in the contract (the seed's example holds "<string>")
    is_expired: bool
    is_solved: bool
    is_automated: bool
    assigned_user_id: str | None = None
    custom_channel: ConversationCustomChannel | None = None


class EventPayload(ContractModel):
    """The payload of ``message_created`` and ``message_updated``."""

    message: Message
    conversation: Conversation
    org_id: int


class MessageCreated(ContractModel):
    """A message was created: a consumer's message arrived, or a user sent one."""

    type: Literal["message_created"] = "message_created"
    payload: EventPayload


class MessageUpdated(ContractModel):
    """A field of an existing message changed; the payload holds its new state."""

    type: Literal["message_updated"] = "message_updated"
    payload: EventPayload


class UnknownEvent(ContractModel):
    """An event of a type this version does not know. It is kept, not refused."""

    type: str
    payload: Any = None


MessageEvent = MessageCreated | MessageUpdated
Event = MessageCreated | MessageUpdated | UnknownEvent

EVENT_MODELS: dict[str, type[MessageCreated] | type[MessageUpdated]] = {
    "message_created": MessageCreated,
    "message_updated": MessageUpdated,
}
EVENT_TYPES: tuple[str, ...] = tuple(EVENT_MODELS)
