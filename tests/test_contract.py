"""The wire contract: the seed's example, open enums, extra fields, dates, errors."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings.contract import (
    EVENT_TYPES,
    ContentType,
    ConversationStatus,
    EventError,
    IssueCode,
    MessageCreated,
    MessageStatus,
    MessageUpdated,
    MessagingPartner,
    SenderType,
    UnknownEvent,
    dump_event,
    event_json_schema,
    format_date,
    parse_date,
    parse_event,
)
from tidings.contract.dates import CONTRACT_DATE_FORMAT
from tidings.contract.samples import CONTENT_TYPES, PARTNERS, SENDER_TYPES, STATUSES, SampleFactory


def test_seed_example_parses_and_round_trips(seed_example_bytes):
    event = parse_event(seed_example_bytes)
    assert isinstance(event, MessageCreated)
    assert event.payload.message.date == datetime(2023, 1, 31, 16, 22, 17, 327878, tzinfo=UTC)
    assert event.payload.conversation.messaging_partner == MessagingPartner.FACEBOOK
    assert event.payload.conversation.issues == [IssueCode.FACEBOOK_NO_PAGE_LINKED]
    assert event.payload.conversation.last_message == event.payload.message
    assert orjson.loads(dump_event(event)) == orjson.loads(seed_example_bytes)


def _with_unknowns(document: dict) -> dict:
    doc = copy.deepcopy(document)
    payload = doc["payload"]
    for message in (payload["message"], payload["conversation"]["last_message"]):
        message["content_type"] = "Hologram"
        message["sender_type"] = "Robot"
        message["status"] = "Queued"
        message["reactions"] = [{"emoji": "👍", "count": 2}]
        message["custom_channel"]["thread"] = "t-1"
    conversation = payload["conversation"]
    conversation["messaging_partner"] = "Telegram"
    conversation["status"] = "Snoozed"
    conversation["issues"] = ["facebook_no_page_linked", "whatsapp_template_missing"]
    conversation["priority"] = {"level": 3}
    conversation["business"]["vat_number"] = "FR123"
    conversation["custom_channel"]["color"] = "#ff0000"
    payload["trace_id"] = "abc"
    doc["api_version"] = "2025-01"
    return doc


def test_unknown_values_and_fields_at_every_level_are_kept(seed_example_bytes):
    document = _with_unknowns(orjson.loads(seed_example_bytes))
    event = parse_event(orjson.dumps(document))
    message = event.payload.message
    assert message.content_type == "Hologram" and not message.content_type.is_known
    assert message.sender_type == "Robot" and not message.sender_type.is_known
    assert message.status == "Queued" and not message.status.is_known
    conversation = event.payload.conversation
    assert conversation.messaging_partner == "Telegram" and not conversation.messaging_partner.is_known
    assert conversation.status == "Snoozed" and not conversation.status.is_known
    assert [issue.is_known for issue in conversation.issues] == [True, False]
    assert message.model_extra == {"reactions": [{"emoji": "👍", "count": 2}]}
    assert conversation.business.model_extra == {"vat_number": "FR123"}
    assert orjson.loads(dump_event(event)) == document


def test_open_enum_constants_are_known_values():
    assert ContentType.TEXT == "Text" and ContentType.TEXT.is_known
    assert isinstance(ContentType.IG_STORY_MENTION, ContentType)
    assert SenderType("Consumer") == SenderType.CONSUMER
    assert MessageStatus.known_values == {"Sending", "Success", "Failed"}
    assert ConversationStatus.known_values == {"Open", "Closed"}
    assert MessagingPartner.known_values == {"Google", "Facebook", "Instagram", "SMS", "Whatsapp"}
    assert ContentType.known_values == {
        "Text", "Image", "Video", "Audio", "Document", "IgStoryReply", "IgStoryMention", "Unsupported"
    }
    assert not ContentType("text").is_known  # values are case-sensitive


def test_unknown_event_type_is_kept_not_refused():
    event = parse_event(b'{"type": "conversation_closed", "payload": {"id": 7}, "v": 2}')
    assert isinstance(event, UnknownEvent)
    assert event.type == "conversation_closed"
    assert orjson.loads(dump_event(event)) == {"type": "conversation_closed", "payload": {"id": 7}, "v": 2}


def test_message_updated_uses_the_same_payload(seed_example_bytes):
    document = orjson.loads(seed_example_bytes)
    document["type"] = "message_updated"
    document["payload"]["message"]["status"] = "Success"
    event = parse_event(orjson.dumps(document))
    assert isinstance(event, MessageUpdated)
    assert event.payload.message.status == MessageStatus.SUCCESS


# --- errors --------------------------------------------------------------------

REQUIRED_MESSAGE = ["id", "conversation_id", "date", "content_type", "sender_type", "sender_label",
                    "status", "is_deleted", "is_automated", "content"]
REQUIRED_CONVERSATION = ["id", "is_read", "status", "created_at", "has_one_user_message", "business",
                         "messaging_partner", "issues", "first_message_date", "is_expired", "is_solved",
                         "is_automated"]


@pytest.mark.parametrize(
    "path",
    [("type",), ("payload",), ("payload", "message"), ("payload", "conversation"), ("payload", "org_id")]
    + [("payload", "message", f) for f in REQUIRED_MESSAGE]
    + [("payload", "conversation", f) for f in REQUIRED_CONVERSATION]
    + [("payload", "conversation", "business", f) for f in ["id", "name", "city", "zipcode", "country", "formatted_address"]],
)
def test_missing_required_field_names_it(seed_example_bytes, path):
    document = orjson.loads(seed_example_bytes)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    with pytest.raises(EventError) as caught:
        parse_event(orjson.dumps(document))
    assert caught.value.field == ".".join(path)
    assert "required" in str(caught.value).lower()


@pytest.mark.parametrize(
    "path, value",
    [
        (("payload", "org_id"), "123"),
        (("payload", "message", "id"), "123"),
        (("payload", "message", "id"), 1.5),
        (("payload", "message", "is_deleted"), 0),
        (("payload", "message", "content_type"), 3),
        (("payload", "message", "date"), "yesterday"),
        (("payload", "message", "date"), "2023-01-31 16:22:17"),  # no offset
        (("payload", "message", "custom_channel"), "ext-1"),
        (("payload", "conversation", "issues"), "facebook_no_page_linked"),
        (("payload", "conversation", "is_read"), "true"),
        (("payload", "conversation", "business"), None),
        (("payload",), []),
    ],
)
def test_wrong_type_names_the_field(seed_example_bytes, path, value):
    document = orjson.loads(seed_example_bytes)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    with pytest.raises(EventError) as caught:
        parse_event(orjson.dumps(document))
    assert caught.value.field == ".".join(path)


@pytest.mark.parametrize("raw", [b"", b"not json", b"{", b"[1, 2]", b"42", b'"text"', b"null", b"\xff\xfe"])
def test_not_an_object_is_one_error(raw):
    with pytest.raises(EventError) as caught:
        parse_event(raw)
    assert caught.value.field == "body"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=200), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(
        ["type", "payload", "message", "conversation", "org_id", "id", "x"]), children, max_size=5),
    max_leaves=20).map(lambda doc: json.dumps(doc).encode())))
def test_no_other_exception_escapes(raw):
    try:
        parse_event(raw)
    except EventError:
        pass


# --- dates ----------------------------------------------------------------------

def test_contract_date_round_trips_exactly():
    assert format_date(parse_date("2023-01-31 16:22:17.327878+00:00")) == "2023-01-31 16:22:17.327878+00:00"


def test_offset_date_is_the_same_instant_written_in_utc():
    parsed = parse_date("2023-01-31 18:22:17.327878+02:00")
    assert parsed == datetime(2023, 1, 31, 16, 22, 17, 327878, tzinfo=UTC)
    assert format_date(parsed) == "2023-01-31 16:22:17.327878+00:00"


@pytest.mark.parametrize("text", ["2023-01-31T16:22:17.327878Z", "2023-01-31T16:22:17.327878+00:00",
                                  "2023-01-31 16:22:17.327878Z", "2023-01-31T17:22:17.327878+01:00"])
def test_iso_8601_forms_are_read(text):
    assert format_date(parse_date(text)) == "2023-01-31 16:22:17.327878+00:00"


def test_event_dates_are_written_in_utc(seed_example_bytes):
    document = orjson.loads(seed_example_bytes)
    document["payload"]["message"]["date"] = "2023-01-31T18:22:17.327878+02:00"
    out = orjson.loads(dump_event(parse_event(orjson.dumps(document))))
    assert out["payload"]["message"]["date"] == "2023-01-31 16:22:17.327878+00:00"


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-9, minutes=-30))])))
def test_any_aware_date_round_trips_as_the_same_instant(moment):
    assert parse_date(format_date(moment)) == moment


@given(st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-9, minutes=-30))])))
def test_a_date_is_written_in_the_contract_format(moment):
    assert format_date(moment) == moment.astimezone(UTC).strftime(CONTRACT_DATE_FORMAT)


def test_an_early_year_is_written_in_four_digits():
    assert format_date(datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == "0999-01-02 03:04:05.000006+00:00"


# --- generated events -------------------------------------------------------------

def open_enum(known) -> st.SearchStrategy[str]:
    return st.sampled_from(sorted(known)) | st.text(min_size=1, max_size=12)


json_leaf = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=12)
json_value = st.recursive(json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8)
contract_dates = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)).map(format_date)
extras = st.dictionaries(st.text(min_size=1, max_size=10).map(lambda k: f"x_{k}"), json_value, max_size=2)
nullable_text = st.none() | st.text(max_size=20)


def with_extras(base: st.SearchStrategy[dict]) -> st.SearchStrategy[dict]:
    return st.tuples(base, extras).map(lambda pair: {**pair[1], **pair[0]})


message_documents = with_extras(st.fixed_dictionaries({
    "id": st.integers(0, 2**53), "conversation_id": st.integers(0, 2**53), "date": contract_dates,
    "content_type": open_enum(ContentType.known_values), "sender_type": open_enum(SenderType.known_values),
    "sender_label": st.text(max_size=20), "status": open_enum(MessageStatus.known_values),
    "is_deleted": st.booleans(), "is_automated": st.booleans(), "content": st.text(max_size=40),
}, optional={
    "user_id": nullable_text,
    "custom_channel": st.none() | with_extras(st.fixed_dictionaries({"external_message_id": st.text(max_size=10)})),
}))

conversation_documents = with_extras(st.fixed_dictionaries({
    "id": st.integers(0, 2**53), "is_read": st.booleans(), "status": open_enum(ConversationStatus.known_values),
    "created_at": contract_dates, "has_one_user_message": st.booleans(),
    "business": with_extras(st.fixed_dictionaries({k: st.text(max_size=10) for k in
                                                   ["id", "name", "city", "zipcode", "country", "formatted_address"]})),
    "messaging_partner": open_enum(MessagingPartner.known_values),
    "issues": st.lists(open_enum(IssueCode.known_values), max_size=3), "first_message_date": st.text(max_size=30),
    "is_expired": st.booleans(), "is_solved": st.booleans(), "is_automated": st.booleans(),
}, optional={
    "consumer_img": nullable_text, "consumer_name": nullable_text, "consumer_phone_number": nullable_text,
    "consumer_email": nullable_text, "assigned_user_id": nullable_text, "last_message": st.none() | message_documents,
    "custom_channel": st.none() | with_extras(st.fixed_dictionaries({
        "id": st.text(max_size=8), "name": st.text(max_size=8), "icon": st.text(max_size=8),
        "is_readonly": st.booleans(), "external_conversation_id": st.text(max_size=8)})),
}))

event_documents = with_extras(st.fixed_dictionaries({
    "type": st.sampled_from(EVENT_TYPES),
    "payload": with_extras(st.fixed_dictionaries({
        "message": message_documents, "conversation": conversation_documents, "org_id": st.integers(0, 2**53)})),
}))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(event_documents)
def test_generated_events_round_trip(document):
    event = parse_event(orjson.dumps(document))
    assert event.type == document["type"]
    assert orjson.loads(dump_event(event)) == document
    assert parse_event(dump_event(event)) == event


# --- schema and samples --------------------------------------------------------------

@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_json_schema_accepts_samples_and_unknown_values(event_type, seed_example_bytes):
    schema = event_json_schema(event_type)
    validator = jsonschema.Draft202012Validator(schema)
    for event in SampleFactory(3).events(30, event_type):
        validator.validate(orjson.loads(dump_event(event)))
    document = _with_unknowns(orjson.loads(seed_example_bytes))
    document["type"] = event_type
    validator.validate(document)
    document["payload"]["message"]["id"] = "not an int"
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(document)


def test_schema_of_unknown_type_is_an_error():
    with pytest.raises(EventError):
        event_json_schema("nope")


def test_samples_are_reproducible_and_cover_every_value():
    first = [dump_event(e) for e in SampleFactory(42).events(120)]
    assert first == [dump_event(e) for e in SampleFactory(42).events(120)]
    assert first != [dump_event(e) for e in SampleFactory(43).events(120)]
    events = [parse_event(raw) for raw in first]
    messages = [e.payload.message for e in events]
    assert {m.content_type for m in messages} == set(CONTENT_TYPES)
    assert {m.sender_type for m in messages} == set(SENDER_TYPES)
    assert {m.status for m in messages} == set(STATUSES)
    assert {e.payload.conversation.messaging_partner for e in events} >= set(PARTNERS)
    assert {e.type for e in events} == set(EVENT_TYPES)
    for event in events:  # the contract's own rules hold in every sample
        assert event.payload.conversation.last_message == event.payload.message
        assert event.payload.message.conversation_id == event.payload.conversation.id
        if event.payload.message.sender_type != SenderType.USER:
            assert event.payload.message.status == MessageStatus.SUCCESS
