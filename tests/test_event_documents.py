"""The ingestion renders ``message_created`` from its rows as documents
(``message_created_body``), without building the contract's models: the
bytes must be those of the models, built field by field and dumped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
from hypothesis import given
from hypothesis import strategies as st

from tidings.contract import (
    Business,
    Conversation,
    ConversationCustomChannel,
    EventPayload,
    Message,
    MessageCreated,
    MessageCustomChannel,
    dump_event,
    format_date,
    parse_event,
)
from tidings.platform.conversations import conversation_model, message_from_row
from tidings.platform.ingestion import message_created_body

texts = st.text(max_size=20)
optional_texts = st.none() | texts
ids = st.integers(min_value=1, max_value=2**53)
moments = st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
                       min_value=datetime(1970, 1, 2))

message_rows = st.fixed_dictionaries({
    "id": ids, "conversation_id": ids, "date": moments, "content_type": st.sampled_from(["Text", "Image", "Odd"]),
    "sender_type": st.sampled_from(["User", "Consumer"]), "sender_label": texts,
    "status": st.sampled_from(["SUCCESS", "Sending", "Failed"]), "is_deleted": st.booleans(),
    "is_automated": st.booleans(), "content": texts, "user_id": optional_texts, "external_message_id": optional_texts,
    "org_id": ids, "custom_channel_id": optional_texts,
})
conversation_rows = st.fixed_dictionaries({
    "id": ids, "consumer_img": optional_texts, "consumer_name": optional_texts,
    "consumer_phone_number": optional_texts, "consumer_email": optional_texts, "is_read": st.booleans(),
    "status": st.sampled_from(["Open", "Closed"]), "created_at": moments, "has_one_user_message": st.booleans(),
    "messaging_partner": st.sampled_from(["CUSTOM", "FACEBOOK"]),
    "issues": st.none() | st.lists(st.sampled_from(["SOME_ISSUE", "OTHER"]), max_size=2),
    "first_message_date": st.none() | moments, "is_expired": st.booleans(), "is_solved": st.booleans(),
    "is_automated": st.booleans(), "assigned_user_id": optional_texts, "external_conversation_id": optional_texts,
})
business_rows = st.fixed_dictionaries({key: texts for key in ("id", "name", "city", "zipcode", "country",
                                                                "formatted_address")})
channel_rows = st.fixed_dictionaries({"id": texts, "name": texts, "icon": texts, "is_readonly": st.booleans()})


def modelled(org_id, message, conversation, business, channel) -> MessageCreated:
    """The event as the contract's models have it, each field given by hand."""
    last = Message(
        id=message["id"], conversation_id=message["conversation_id"], date=message["date"],
        content_type=message["content_type"], sender_type=message["sender_type"],
        sender_label=message["sender_label"], status=message["status"], is_deleted=message["is_deleted"],
        is_automated=message["is_automated"], content=message["content"], user_id=message["user_id"],
        custom_channel=None if message["external_message_id"] is None
        else MessageCustomChannel(external_message_id=message["external_message_id"]))
    return MessageCreated(type="message_created", payload=EventPayload(org_id=org_id, message=last, conversation=Conversation(
        id=conversation["id"], consumer_img=conversation["consumer_img"], consumer_name=conversation["consumer_name"],
        consumer_phone_number=conversation["consumer_phone_number"], consumer_email=conversation["consumer_email"],
        last_message=last, is_read=conversation["is_read"], status=conversation["status"],
        created_at=conversation["created_at"], has_one_user_message=conversation["has_one_user_message"],
        business=Business(**business), messaging_partner=conversation["messaging_partner"],
        issues=list(conversation["issues"] or []),
        first_message_date=format_date(conversation["first_message_date"] or conversation["created_at"]),
        is_expired=conversation["is_expired"], is_solved=conversation["is_solved"],
        is_automated=conversation["is_automated"], assigned_user_id=conversation["assigned_user_id"],
        custom_channel=None if channel is None else ConversationCustomChannel(
            **channel, external_conversation_id=conversation["external_conversation_id"] or ""))))


@given(ids, message_rows, conversation_rows, business_rows, st.none() | channel_rows)
def test_the_rendered_body_is_the_models_bytes(org_id, message, conversation, business, channel):
    body = message_created_body(org_id, message, conversation, business, channel)
    assert body == dump_event(modelled(org_id, message, conversation, business, channel))
    assert parse_event(body) == modelled(org_id, message, conversation, business, channel)


@given(ids, message_rows, conversation_rows, business_rows, st.none() | channel_rows)
def test_the_models_of_rows_are_those_given_by_hand(org_id, message, conversation, business, channel):
    last = message_from_row(message)
    event = MessageCreated(type="message_created", payload=EventPayload(
        org_id=org_id, message=last, conversation=conversation_model(conversation, business, channel, last)))
    assert event == modelled(org_id, message, conversation, business, channel)
    assert event.model_fields_set == {"type", "payload"}
    assert orjson.loads(dump_event(event))["payload"]["message"]["date"] == format_date(message["date"])
