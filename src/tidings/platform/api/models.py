"""Request and answer bodies of the ``/v2`` API (CONTRACT.md section 3).

Events, conversations and messages are the contract's own models; these are
the rest. Every text field is bounded by its column's width and refuses
what a database cannot store (NUL, lone surrogates), so that a bad input is a
422 that says why, never a database error.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from tidings.contract import EVENT_TYPES, Conversation, Message
from tidings.platform.webhook_rules import DEFAULT_ORDERING, MAX_URL_LENGTH, ORDERINGS

MAX_CONTENT_LENGTH = 100_000
LARGEST_ID = 2**62  # ids are 64-bit on PostgreSQL; larger numbers cannot name a row


def storable(text: str) -> str:
    if "\x00" in text:
        raise ValueError("text cannot contain the NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return text


def Text(max_length: int, min_length: int = 0):  # noqa: N802 - reads as a type
    return Annotated[str, StringConstraints(max_length=max_length, min_length=min_length), AfterValidator(storable)]


class ApiModel(BaseModel):
    # A misspelt field is refused, not silently ignored.
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- webhooks

CustomHeaders = Annotated[
    dict[str, Annotated[str, AfterValidator(storable)]],
    Field(description="At most 5; each key starts with X- (not the reserved vendor prefix), "
                      "at most 128 characters; each value at most 512 characters.",
          examples=[{"X-Shop-Token": "abc123"}]),
]
EventTypeField = Annotated[
    str, Field(description="The event type to receive.", json_schema_extra={"enum": list(EVENT_TYPES)})]
OrderingField = Annotated[
    str, Field(description="conversation: one conversation's events arrive in order; "
                           "none: every event is sent as soon as it can be.",
               json_schema_extra={"enum": list(ORDERINGS)})]
UrlField = Annotated[str, Field(max_length=MAX_URL_LENGTH, description="An https:// URL.",
                                examples=["https://hooks.example.com/tidings"])]


class WebhookConfigIn(ApiModel):
    url: UrlField
    event_type: EventTypeField
    custom_headers: CustomHeaders = {}
    ordering: OrderingField = DEFAULT_ORDERING


class WebhookConfigsIn(ApiModel):
    items: list[WebhookConfigIn] = Field(min_length=1, max_length=len(EVENT_TYPES))


class WebhookConfigUpdate(ApiModel):
    url: UrlField | None = None
    custom_headers: CustomHeaders | None = None
    ordering: OrderingField | None = None


class WebhookConfigOut(BaseModel):
    id: int
    url: str
    event_type: str
    created_at: str = Field(examples=["2024-11-27T16:10:44.929678Z"])
    updated_at: str = Field(examples=["2024-11-27T16:10:44.929678Z"])
    org_id: int
    custom_headers: dict[str, str] = Field(description="The custom headers' names; their values are never shown "
                                                       "(each reads ********).")
    ordering: str


class CreatedWebhookConfig(WebhookConfigOut):
    secret: str = Field(description="The HMAC secret of the v1 signature (whsec_...).")


class CreatedWebhookConfigs(BaseModel):
    items: list[CreatedWebhookConfig]


class WebhookConfigPage(BaseModel):
    page: int
    max_page: int
    count: int
    items: list[WebhookConfigOut]


class EventTypes(BaseModel):
    items: list[str] = Field(examples=[list(EVENT_TYPES)])


class WebhookSecret(BaseModel):
    secret: str
    previous_secret: str | None = Field(
        None, description="The secret before the last rotation; it keeps signing until previous_secret_expires_at.")
    previous_secret_expires_at: str | None = None


# ---------------------------------------------------------------- conversations and messages


class IncomingMessageIn(ApiModel):
    business_id: Text(24, 1)
    external_conversation_id: Text(500, 1)
    external_message_id: Text(500, 1)
    content: Text(MAX_CONTENT_LENGTH)
    sender_type: Annotated[str, Field(json_schema_extra={"enum": ["User", "Consumer"]})]
    content_type: Text(64, 1) = "Text"
    consumer_name: Text(500) | None = None
    consumer_img: Text(2000) | None = None
    sender_label: Text(500) | None = None


class IngestedMessage(BaseModel):
    message_id: int
    conversation_id: int
    duplicate: bool = Field(description="true when this external_message_id was already ingested: nothing was stored")


class ReplyIn(ApiModel):
    conversation_id: int = Field(ge=1, le=LARGEST_ID)
    content: Text(MAX_CONTENT_LENGTH, 1)
    content_type: Text(64, 1) = "Text"


class ConversationPage(BaseModel):
    conversations: list[Conversation]
    count: int
    next_cursor: str | None


class MessagePage(BaseModel):
    messages: list[Message]
    count: int
    next_cursor: str | None


class Problem(BaseModel):
    detail: str
    field: str | None = None
