"""The receiver's inbox in a real browser: signed events posted to the
receiver's webhook show up in the open inbox, without a reload."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tidings.contract.samples import SampleFactory
from tests.browser.servers import ReceiverServer, message_event


@pytest.fixture
def receiver(tmp_path):
    server = ReceiverServer(f"sqlite:///{tmp_path / 'receiver.db'}").start()
    yield server
    server.stop()


def test_a_new_message_appears_in_the_inbox(receiver: ReceiverServer, page: Page):
    samples = SampleFactory(3)
    first = message_event(samples, consumer="Ana Martin", text="Hello, are you open on Sunday?",
                          date="2024-03-01 09:00:00.000000+00:00")
    assert receiver.send(first).status_code == 200

    page.goto(receiver.sign_in_url("/inbox"))
    expect(page).to_have_url(receiver.admin_url + "/inbox")  # the token left the address bar
    conversations = page.locator("#conversations > li.conversation")
    expect(conversations).to_have_count(1)
    expect(conversations.first).to_contain_text("Ana Martin")
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "on")
    page.evaluate("window.stillTheSamePage = true")

    # A new conversation arrives: it goes on top of the list.
    assert receiver.send(message_event(samples, consumer="Jonas Schmidt", text="Do you have this model in blue?",
                                       date="2024-03-01 10:00:00.000000+00:00")).status_code == 200
    expect(conversations).to_have_count(2)
    expect(conversations.first).to_contain_text("Jonas Schmidt")
    expect(conversations.first).to_contain_text("Do you have this model in blue?")

    # In an open thread, the next message of the conversation appears at the bottom.
    conversation_id = int(conversations.nth(1).get_attribute("id").removeprefix("conversation-"))
    page.goto(receiver.admin_url + f"/inbox/threads/{conversation_id}")
    messages = page.locator("#thread > li.message")
    expect(messages).to_have_count(1)
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "on")
    page.evaluate("window.stillTheSamePage = true")
    assert receiver.send(message_event(samples, conversation_id=conversation_id, text="Great, see you at 11.",
                                       date="2024-03-01 11:00:00.000000+00:00")).status_code == 200
    expect(messages).to_have_count(2)
    expect(messages.last).to_contain_text("Great, see you at 11.")
    assert page.evaluate("window.stillTheSamePage") is True


def test_an_unknown_content_type_shows_the_placeholder(receiver: ReceiverServer, page: Page):
    samples = SampleFactory(4)
    page.goto(receiver.sign_in_url("/inbox"))
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "on")
    body = message_event(samples, consumer="Léa Rossi", content_type="Hologram",
                         text="https://cdn.example.com/media/42.holo")
    assert receiver.send(body).status_code == 200

    listed = page.locator("#conversations > li.conversation").first
    expect(listed).to_contain_text("Léa Rossi")
    expect(listed.locator("[data-placeholder]")).to_have_text("Unsupported content (Hologram)")

    listed.click()
    bubble = page.locator("#thread > li.message .bubble").first
    expect(bubble.locator("[data-placeholder]")).to_have_text("Unsupported content (Hologram)")
    expect(bubble).not_to_contain_text("42.holo")


def test_the_token_url_signs_in_with_a_cookie_that_is_not_the_token(receiver: ReceiverServer, page: Page):
    page.goto(receiver.admin_url + "/inbox")
    assert "Bearer" in page.content() or page.locator("body").inner_text()  # refused: no token yet
    assert page.request.get(receiver.admin_url + "/inbox").status == 401

    page.goto(receiver.sign_in_url("/inbox"))
    expect(page).to_have_url(receiver.admin_url + "/inbox")
    expect(page.locator("h1")).to_have_text("Inbox")
    (cookie,) = page.context.cookies(receiver.admin_url)
    assert cookie["value"] != receiver.token and receiver.token not in cookie["value"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert page.evaluate("document.cookie") == ""  # out of reach of the page's scripts


def test_a_form_post_from_the_page_works_under_the_origin_rule(receiver: ReceiverServer, page: Page):
    assert receiver.send(b'{"type": "message_created", "payload": {"message": {}}}').status_code == 200
    page.goto(receiver.sign_in_url("/inbox/quarantine"))
    expect(page.locator("tr[id^=quarantined-]")).to_have_count(1)
    page.click("button[data-action=reprocess-all]")  # the browser sends its Origin with the post
    expect(page.locator(".notice")).to_contain_text("0 quarantined bodies parsed and moved to the log; 1 still")


def test_a_javascript_url_in_an_image_message_is_text_not_a_link(receiver: ReceiverServer, page: Page):
    samples = SampleFactory(5)
    hostile = message_event(samples, consumer="Mallory", content_type="Image", text="javascript:alert(document.domain)")
    assert receiver.send(hostile).status_code == 200
    fine = message_event(samples, consumer="Ana", content_type="Image", text="https://cdn.example.com/cat.png")
    assert receiver.send(fine).status_code == 200

    page.goto(receiver.sign_in_url("/inbox"))
    expect(page.locator("#conversations > li.conversation")).to_have_count(2)
    page.locator("#conversations > li.conversation", has_text="Mallory").click()
    bubble = page.locator("#thread > li.message .bubble").first
    expect(bubble).to_contain_text("javascript:alert(document.domain)")
    expect(bubble.locator("a")).to_have_count(0)
    expect(bubble.locator("[data-not-a-link]")).to_have_text("javascript:alert(document.domain)")

    page.goto(receiver.admin_url + "/inbox")
    page.locator("#conversations > li.conversation", has_text="Ana").click()
    link = page.locator("#thread > li.message .bubble a").first
    expect(link).to_have_attribute("href", "https://cdn.example.com/cat.png")
