"""The webhook configuration rules (CONTRACT.md sections 2 and 3), as pure functions."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import Phase, event, given, settings
from hypothesis import strategies as st

from tidings.platform.webhook_rules import (
    FORBIDDEN_KEY_CHARACTERS,
    MAX_CUSTOM_HEADERS,
    MAX_HEADER_KEY_LENGTH,
    MAX_HEADER_VALUE_LENGTH,
    WebhookRuleError,
    check_custom_headers,
    check_event_type,
    check_one_per_event_type,
    check_ordering,
    check_url,
    page_window,
)

PREFIX = "X-Tidings"


def refusal(call, *args, **kwargs) -> WebhookRuleError:
    with pytest.raises(WebhookRuleError) as caught:
        call(*args, **kwargs)
    return caught.value


# ---------------------------------------------------------------- custom headers


def test_up_to_five_headers_are_accepted_and_a_sixth_is_refused():
    five = {f"X-H{i}": "v" for i in range(MAX_CUSTOM_HEADERS)}
    check_custom_headers(five, PREFIX)
    check_custom_headers({}, PREFIX)
    error = refusal(check_custom_headers, {**five, "X-H5": "v"}, PREFIX)
    assert error.field == "custom_headers"
    assert "at most 5" in str(error) and "6" in str(error)


@pytest.mark.parametrize("key", ["X-Shop", "x-shop", "X-", "x-A.b_c~d!e#f$g%h&i'j*k+l^m`n|o"])
def test_keys_starting_with_x_dash_in_any_case_are_accepted(key):
    check_custom_headers({key: "v"}, PREFIX)


@pytest.mark.parametrize("key", ["Authorization", "Shop", "XShop", "X_Shop", "-X-Shop", " X-Shop", "Y-Shop", ""])
def test_keys_not_starting_with_x_dash_are_refused(key):
    error = refusal(check_custom_headers, {key: "v"}, PREFIX)
    assert "must start with 'X-'" in str(error)


@pytest.mark.parametrize("key", ["X-Tidings", "X-Tidings-Signature-v1", "x-tidings-anything", "X-TIDINGS-Foo"])
def test_the_reserved_vendor_prefix_is_refused_in_any_case(key):
    error = refusal(check_custom_headers, {key: "v"}, PREFIX)
    assert "reserved prefix" in str(error) and PREFIX in str(error)


def test_the_reserved_prefix_follows_the_configured_vendor():
    check_custom_headers({"X-Tidings-Foo": "v"}, "X-Acme")
    assert "reserved prefix" in str(refusal(check_custom_headers, {"X-Acme-Foo": "v"}, "X-Acme"))


def test_a_key_of_128_characters_is_accepted_and_129_refused():
    check_custom_headers({"X-" + "a" * (MAX_HEADER_KEY_LENGTH - 2): "v"}, PREFIX)
    error = refusal(check_custom_headers, {"X-" + "a" * (MAX_HEADER_KEY_LENGTH - 1): "v"}, PREFIX)
    assert "129 characters" in str(error) and "128" in str(error)


@pytest.mark.parametrize("character", sorted(FORBIDDEN_KEY_CHARACTERS))
def test_every_forbidden_character_in_a_key_is_refused(character):
    error = refusal(check_custom_headers, {f"X-A{character}B": "v"}, PREFIX)
    assert "forbidden characters" in str(error)
    assert ("space" if character == " " else character) in str(error)


def test_the_contract_lists_exactly_these_forbidden_characters():
    assert FORBIDDEN_KEY_CHARACTERS == set(' ()<>@,;:\\"/[]?={}')


@pytest.mark.parametrize("key", ["X-A\tB", "X-A\nB", "X-A\x00", "X-Café", "X-A\x7f"])
def test_keys_must_be_printable_ascii(key):
    assert "printable ASCII" in str(refusal(check_custom_headers, {key: "v"}, PREFIX))


def test_the_same_key_twice_in_different_case_is_refused():
    assert "twice" in str(refusal(check_custom_headers, {"X-A": "1", "x-a": "2"}, PREFIX))


def test_a_value_of_512_characters_is_accepted_and_513_refused():
    check_custom_headers({"X-A": "v" * MAX_HEADER_VALUE_LENGTH, "X-B": ""}, PREFIX)
    error = refusal(check_custom_headers, {"X-A": "v" * (MAX_HEADER_VALUE_LENGTH + 1)}, PREFIX)
    assert "513 characters" in str(error) and "512" in str(error)


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\x00", "a\x7f"])
def test_values_with_control_characters_are_refused(value):
    assert "control character" in str(refusal(check_custom_headers, {"X-A": value}, PREFIX))


def test_values_may_hold_tabs_spaces_and_unicode():
    check_custom_headers({"X-A": "Bearer abc\tdéf ✓"}, PREFIX)


# The rules restated (printable ASCII as ``isascii`` and ``isprintable``, control
# characters as a set) so that the property compares two formulations.
CONTROL_CHARACTERS = {chr(code) for code in range(32) if chr(code) != "\t"} | {"\x7f"}
KEY_CHARACTERS = [chr(code) for code in range(33, 127) if chr(code) not in FORBIDDEN_KEY_CHARACTERS]


def broken_rule(headers: dict[str, str], prefix: str) -> str | None:
    """The first header rule ``headers`` breaks, or ``None`` when it obeys all of them."""
    if len(headers) > MAX_CUSTOM_HEADERS:
        return "too many"
    if len({key.lower() for key in headers}) < len(headers):
        return "twice"
    for key, value in headers.items():
        if not key.lower().startswith("x-"):
            return "not X-"
        if key.lower().startswith(prefix.lower()):
            return "vendor prefix"
        if len(key) > MAX_HEADER_KEY_LENGTH:
            return "long key"
        if set(key) & FORBIDDEN_KEY_CHARACTERS:
            return "forbidden character"
        if not (key.isascii() and key.isprintable()):
            return "not printable ASCII"
        if len(value) > MAX_HEADER_VALUE_LENGTH:
            return "long value"
        if set(value) & CONTROL_CHARACTERS:
            return "control character"
    return None


@st.composite
def header_keys(draw) -> str:
    """Mostly valid keys; the others each break one rule."""
    key = draw(st.sampled_from(["X-", "x-"])) + draw(st.text(st.sampled_from(KEY_CHARACTERS), min_size=1, max_size=24))
    flaw = draw(st.sampled_from([None] * 24 + ["not X-", "vendor prefix", "long key", "forbidden character",
                                               "not printable ASCII"]))
    if flaw == "not X-":
        return key[2:]
    if flaw == "vendor prefix":
        return draw(st.sampled_from([PREFIX, PREFIX.lower(), PREFIX.upper()])) + key[1:]
    if flaw == "long key":
        return key + "a" * (MAX_HEADER_KEY_LENGTH + 1 - len(key) + draw(st.integers(0, 20)))
    if flaw == "forbidden character":
        return key + draw(st.sampled_from(sorted(FORBIDDEN_KEY_CHARACTERS)))
    if flaw == "not printable ASCII":
        return key + draw(st.sampled_from(["\t", "\n", "\x00", "\x7f", "é", "✓"]))
    return key


@st.composite
def header_values(draw) -> str:
    """Mostly valid values (tabs, spaces and Unicode included); the others too long or with a control character."""
    value = draw(st.text(st.characters(blacklist_categories=["Cc", "Cs"]) | st.just("\t"), max_size=20))
    flaw = draw(st.sampled_from([None] * 20 + ["long value", "control character"]))
    if flaw == "long value":
        return value + "v" * (MAX_HEADER_VALUE_LENGTH + 1 - len(value) + draw(st.integers(0, 20)))
    if flaw == "control character":
        return value + draw(st.sampled_from(sorted(CONTROL_CHARACTERS)))
    return value


@st.composite
def custom_headers(draw) -> dict[str, str]:
    """Up to 5 headers; now and then more, or one given twice in another case."""
    headers = draw(st.dictionaries(header_keys(), header_values(), max_size=MAX_CUSTOM_HEADERS))
    flaw = draw(st.sampled_from([None] * 8 + ["too many", "twice"]))
    if flaw == "too many":
        for number in range(MAX_CUSTOM_HEADERS + 1 - len(headers) + draw(st.integers(0, 2))):
            headers[f"X-Extra-{number}"] = "v"
    elif flaw == "twice" and headers:
        key = draw(st.sampled_from(sorted(headers)))
        if key.swapcase() != key:
            headers[key.swapcase()] = "twin"
    return headers


@settings(max_examples=300)
@given(custom_headers())
def test_custom_headers_are_accepted_exactly_when_they_obey_every_rule(headers):
    """Killed by dropping any one rule from ``check_custom_headers`` (tried: the control-character check on values)."""
    expected = broken_rule(headers, PREFIX)
    event(f"refused: {expected}" if expected else "accepted")
    try:
        check_custom_headers(headers, PREFIX)
    except WebhookRuleError as error:
        assert error.field == "custom_headers"
        assert expected is not None, f"refused {headers!r}: {error}"
    else:
        assert expected is None, f"accepted {headers!r}, which breaks the rule {expected!r}"


def test_the_header_property_reaches_acceptance_and_every_refusal():
    """The strategy above is not mostly refusals: both branches of the property run for many inputs."""
    outcomes: Counter[str] = Counter()

    @settings(max_examples=400, database=None, derandomize=True, phases=[Phase.generate])
    @given(custom_headers())
    def sample(headers):
        outcomes[broken_rule(headers, PREFIX) or "accepted"] += 1

    sample()
    total = sum(outcomes.values())
    assert outcomes["accepted"] >= total // 4, outcomes
    for rule in ("too many", "twice", "not X-", "vendor prefix", "long key", "forbidden character",
                 "not printable ASCII", "long value", "control character"):
        assert outcomes[rule] >= 3, (rule, outcomes)


# ---------------------------------------------------------------- URL, event type, ordering


@pytest.mark.parametrize("url", ["https://hooks.example.com/x", "HTTPS://example.com", "https://example.com:8443/a?b=c",
                                 "https://[2001:db8::1]/x", "https://203.0.113.5/"])
def test_https_urls_are_accepted(url):
    check_url(url, allow_http=False)


def test_http_is_refused_unless_allowed():
    error = refusal(check_url, "http://example.com/x", allow_http=False)
    assert error.field == "url" and "https://" in str(error)
    check_url("http://example.com/x", allow_http=True)


@pytest.mark.parametrize("url, why", [
    ("ftp://example.com/x", "absolute https://"),
    ("example.com/x", "absolute https://"),
    ("/relative", "absolute https://"),
    ("", "absolute https://"),
    ("https:///nohost", "no host"),
    ("https://example.com:99999/", "cannot be read"),
    ("https://example.com:0/", "between 1 and 65535"),
    ("https://exa mple.com/", "whitespace"),
    ("https://example.com/\n", "whitespace"),
    ("https://example.com/" + "a" * 2000, "at most 2000"),
])
def test_unusable_urls_are_refused_with_the_reason(url, why):
    error = refusal(check_url, url, allow_http=True)
    assert error.field == "url" and why in str(error)


@pytest.mark.parametrize("event_type", ["message_created", "message_updated"])
def test_known_event_types_are_accepted(event_type):
    check_event_type(event_type)


@pytest.mark.parametrize("event_type", ["message_deleted", "MESSAGE_CREATED", "", "message_created "])
def test_unknown_event_types_are_refused_with_the_known_ones(event_type):
    error = refusal(check_event_type, event_type)
    assert error.field == "event_type" and "message_created, message_updated" in str(error)


def test_ordering_is_conversation_or_none():
    check_ordering("conversation")
    check_ordering("none")
    for bad in ("global", "None", ""):
        assert refusal(check_ordering, bad).field == "ordering"


# ---------------------------------------------------------------- one per organization and event type


def test_a_second_configuration_for_an_event_type_is_refused_naming_the_first():
    check_one_per_event_type({}, ["message_created", "message_updated"])
    check_one_per_event_type({"message_created": 4}, ["message_updated"])
    error = refusal(check_one_per_event_type, {"message_created": 4}, ["message_created"])
    assert "configuration 4" in str(error) and "PUT /v2/webhooks/4" in str(error)


def test_the_same_event_type_twice_in_one_request_is_refused():
    assert "twice" in str(refusal(check_one_per_event_type, {}, ["message_updated", "message_updated"]))


# ---------------------------------------------------------------- pagination


@pytest.mark.parametrize("per_page", [0, -1, 101, 1000])
def test_per_page_outside_1_to_100_is_refused(per_page):
    error = refusal(page_window, 10, 1, per_page)
    assert error.field == "per_page" and "between 1 and 100" in str(error)


@pytest.mark.parametrize("page", [0, -5])
def test_pages_start_at_1(page):
    assert refusal(page_window, 10, page, 10).field == "page"


def test_page_window_examples():
    assert page_window(0, 1, 10).max_page == 1
    assert page_window(10, 1, 10).max_page == 1
    assert page_window(11, 2, 10).max_page == 2 and page_window(11, 2, 10).offset == 10
    assert page_window(250, 3, 100).offset == 200


@given(count=st.integers(0, 10_000), page=st.integers(1, 200), per_page=st.integers(1, 100))
def test_pages_cover_every_row_once(count, page, per_page):
    window = page_window(count, page, per_page)
    assert window.max_page == max(1, math.ceil(count / per_page))
    rows_on_page = max(0, min(per_page, count - window.offset))
    if page < window.max_page:
        assert rows_on_page == per_page
    if page > window.max_page:
        assert rows_on_page == 0
    if count and page == window.max_page:
        assert 1 <= rows_on_page <= per_page
