"""The web pages' pure decisions: health figures, how messages are shown,
the live-update wire format, and the guards of sign-in and form posts."""

from __future__ import annotations

import doctest
import random
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from tidings.contract import ContentType, SenderType
from tidings.web import health, live, message_view, origin, session, templating
from tidings.platform.deliveries.reads import DeliveryFilter, Head
from tidings.web.health import AttemptOutcome, derived_circuit, health_of, percentile

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def outcome(status: int | None = 200, error: str | None = None, ms: float = 10.0, at: int = 0,
            excerpt: str | None = None) -> AttemptOutcome:
    return AttemptOutcome(T0 + timedelta(seconds=at), ms, status, error, excerpt)


@pytest.mark.parametrize("module", [health, session, origin])
def test_the_examples_in_docstrings_hold(module):
    """Only modules whose docstrings hold examples: ``live`` and ``message_view`` have none and are
    tested below. Killed by changing what an example shows (or by a module losing its examples)."""
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0, result


# ---------------------------------------------------------------- health


def test_percentile_is_the_nearest_rank_of_the_sorted_values():
    values = list(range(1, 101))  # 1..100
    random.Random(4).shuffle(values)
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile(values, 0.0) == 1
    assert percentile([7.5], 0.99) == 7.5
    assert percentile([], 0.5) is None
    with pytest.raises(ValueError):
        percentile([1], 1.5)


def test_a_2xx_without_an_error_is_the_only_success():
    assert outcome(200).succeeded and outcome(204).succeeded
    assert not outcome(500).succeeded
    assert not outcome(301).succeeded
    assert not outcome(None, "connection refused").succeeded
    assert not outcome(200, "body read timed out").succeeded


def test_health_counts_successes_times_and_the_newest_error():
    newest_first = [
        outcome(200, ms=30, at=5),
        outcome(503, ms=900, at=4, excerpt="upstream\nbusy"),
        outcome(None, "timed out after 10 s", ms=10_000, at=3),
        outcome(200, ms=20, at=2),
    ]
    figures = health_of(newest_first)
    assert figures.attempts == 4
    assert figures.succeeded == 2
    assert figures.success_rate == 0.5
    assert figures.p50_ms == 30
    assert figures.p99_ms == 10_000
    assert figures.last_error.at == T0 + timedelta(seconds=4)
    assert figures.last_error.text == "HTTP 503: upstream busy"


def test_health_of_no_attempt_has_no_rate_and_no_error():
    figures = health_of([])
    assert figures.success_rate is None
    assert figures.p50_ms is None and figures.p99_ms is None
    assert figures.last_error is None
    assert figures.circuit == health.CLOSED and figures.circuit_derived


def test_the_derived_circuit_opens_only_after_five_unanswered_attempts_in_a_row():
    unanswered = outcome(None, "connection refused")
    assert derived_circuit([unanswered] * 5) == health.OPEN
    assert derived_circuit([unanswered] * 4) == health.CLOSED
    # An endpoint that answers, even 500, is alive (the dispatcher's rule).
    assert derived_circuit([outcome(500)] * 10) == health.CLOSED
    assert derived_circuit([unanswered] * 4 + [outcome(200)] + [unanswered] * 5) == health.CLOSED
    assert derived_circuit([outcome(200)] + [unanswered] * 5) == health.CLOSED


def test_the_dispatchers_circuit_state_wins_over_the_derived_one():
    figures = health_of([outcome(200)], dispatcher_circuit="half_open")
    assert figures.circuit == "half_open"
    assert not figures.circuit_derived


def test_a_long_answer_is_cut_in_the_error_line():
    text = health.error_text(outcome(500, excerpt="x" * 500))
    assert text.startswith("HTTP 500: xxx") and text.endswith("…")
    assert len(text) < 140


# ---------------------------------------------------------------- messages


@pytest.mark.parametrize("content_type", sorted(ContentType.known_values - {"Unsupported", "Text"}))
def test_media_types_show_their_label_and_link(content_type):
    shown = message_view.shown_content(content_type, "https://cdn.example.com/m/1")
    assert shown.kind == message_view.MEDIA
    assert shown.url == "https://cdn.example.com/m/1"
    assert shown.text and "Unsupported" not in shown.text


def test_text_is_shown_as_it_is():
    shown = message_view.shown_content("Text", "Bonjour <b>!</b>")
    assert (shown.kind, shown.text) == (message_view.TEXT, "Bonjour <b>!</b>")


@pytest.mark.parametrize("content_type", ["Hologram", "Sticker", "", None])
def test_an_unknown_content_type_shows_the_placeholder_not_the_content(content_type):
    shown = message_view.shown_content(content_type, "https://cdn.example.com/secret.bin")
    assert shown.kind == message_view.PLACEHOLDER
    assert shown.text == f"Unsupported content ({content_type or ''})"
    assert shown.url is None


def test_the_contracts_own_unsupported_type_shows_a_placeholder_too():
    shown = message_view.shown_content("Unsupported", "")
    assert shown.kind == message_view.PLACEHOLDER
    assert shown.text.startswith("Unsupported content")


def test_sender_types_known_and_unknown():
    for known in SenderType.known_values:
        assert message_view.sender_role(known) == known.lower()
        assert "Unknown" not in message_view.sender_type_label(known)
    assert message_view.sender_role("Bot") == "unknown"
    assert message_view.sender_type_label("Bot") == "Unknown sender type (Bot)"


def test_message_status_classes():
    assert [message_view.status_class(s) for s in ("Sending", "Success", "Failed", "Queued")] == [
        "sending", "success", "failed", "unknown"]


def test_conversation_names_fall_back_in_order():
    assert message_view.consumer_name({"id": 5, "consumer_name": " John "}) == "John"
    assert message_view.consumer_name({"id": 5, "consumer_name": "", "consumer_phone_number": "+33612345678"}) == "+33612345678"
    assert message_view.consumer_name({"id": 5, "consumer_email": "a@example.com"}) == "a@example.com"
    assert message_view.consumer_name({"id": 5}) == "Conversation 5"
    assert message_view.channel_name({"messaging_partner": "Whatsapp"}) == "Whatsapp"
    assert message_view.channel_name({"messaging_partner": "Custom", "custom_channel": {"name": "Shop chat"}}) == "Shop chat"
    assert message_view.initials("@johndoe") == "J"
    assert message_view.initials("@jonas.schmidt") == "JS"
    assert message_view.initials("+33612345678") == "☎"
    assert message_view.initials("12 Rue") == "R"
    assert message_view.initials("Ana Martin Silva") == "AM"


def test_a_preview_is_one_short_line():
    line = message_view.preview("Text", "first line\nsecond " + "word " * 40)
    assert "\n" not in line and len(line) <= 90 and line.endswith("…")
    assert message_view.preview("Hologram", "x") == "Unsupported content (Hologram)"


# ---------------------------------------------------------------- live updates


def test_a_server_sent_event_is_id_event_and_one_line_of_json():
    html = "<tr id=\"delivery-3\">\n<td>a</td></tr>"
    message = live.sse_message("upsert", {"key": "delivery-3", "html": html}, "3.9")
    lines = message.decode().split("\n")
    assert lines[0] == "id: 3.9"
    assert lines[1] == "event: upsert"
    assert orjson.loads(lines[2].removeprefix("data: ")) == {"key": "delivery-3", "html": html}
    assert message.endswith(b"\n\n") and message.count(b"\n") == 4


def test_order_keys_sort_as_numbers():
    numbers = [3, 12, 100, 7, 99_999]
    assert sorted(numbers, key=live.order_key) == sorted(numbers)


def test_a_position_is_two_ids():
    assert Head.parse(Head(12, 40).spelled()) == Head(12, 40)
    for bad in ["", "12", "12.x", "1.2.3", "-1.2", "9" * 19 + ".1"]:
        assert Head.parse(bad) is None


# ---------------------------------------------------------------- filters and forms


def test_a_delivery_filter_matches_rows_like_the_query_does():
    class Row:
        status, event_type, webhook_config_id, created_at = "failed", "message_created", 4, T0

    assert DeliveryFilter().matches(Row)
    assert DeliveryFilter(status="failed", config_id=4, since=T0).matches(Row)
    assert not DeliveryFilter(status="delivered").matches(Row)
    assert not DeliveryFilter(config_id=5).matches(Row)
    assert not DeliveryFilter(until=T0).matches(Row)
    assert not DeliveryFilter(event_type="message_updated").matches(Row)


def test_after_signing_in_only_a_dashboard_path_is_followed():
    assert session.safe_next("/dashboard/deliveries/4") == "/dashboard/deliveries/4"
    for hostile in ["https://evil.example/dashboard", "//evil.example", "/dashboard\\@evil", "/v2/webhooks", "", None]:
        assert session.safe_next(hostile) == "/dashboard"


def test_the_organization_id_of_a_provider_session():
    assert session.parse_org_id("7") == 7
    for bad in ["0", "-1", "1e3", "x", "9" * 19, None]:
        assert session.parse_org_id(bad) is None


def test_form_posts_from_another_site_are_refused():
    assert origin.is_same_origin("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert origin.is_same_origin(None, "127.0.0.1:8000")
    assert not origin.is_same_origin("http://127.0.0.1:8001", "127.0.0.1:8000")
    assert not origin.is_same_origin("http://evil.example", "127.0.0.1:8000")
    assert not origin.is_same_origin("http://127.0.0.1:8000", None)


# ---------------------------------------------------------------- templates


def test_times_read_the_same_from_every_source():
    expected = "2024-05-01 12:00:00"
    assert templating.when(T0) == expected
    assert templating.when(T0.timestamp()) == expected
    assert templating.when("2024-05-01 12:00:00.000000+00:00") == expected
    assert templating.when("2024-05-01T14:00:00+02:00") == expected
    assert templating.when(None) == "" and templating.when("not a date") == ""


def test_figures_read_well():
    assert templating.milliseconds(None) == "–"
    assert templating.milliseconds(3.14) == "3.1 ms"
    assert templating.milliseconds(250.4) == "250 ms"
    assert templating.milliseconds(1520) == "1.52 s"
    assert templating.percent(1.0) == "100 %"
    assert templating.percent(0.9876) == "98.8 %"
    assert templating.percent(None) == "–"


def test_bodies_are_indented_when_they_are_json_and_kept_when_not():
    assert templating.pretty_json(b'{"a":1}') == '{\n  "a": 1\n}'
    assert templating.pretty_json(b"not json \xff") == "not json \ufffd"


def test_rows_escape_what_comes_from_outside():
    class Delivery:
        id, status, attempt_count, is_tryout, webhook_config_id = 3, "failed", 1, False, 2
        created_at, last_status_code = T0, None
        event_type = "<script>alert(1)</script>"
        url = "https://example.com/<img src=x onerror=alert(1)>"
        last_error = "<b>boom</b>"

    html = templating.render_macro("_rows.html", "delivery_row", delivery=Delivery)
    assert "<script>" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;" in html
