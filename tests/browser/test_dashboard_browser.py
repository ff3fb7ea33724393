"""The dashboard in a real browser, against a real platform: the API, the
dispatcher and a subscriber's endpoint, all on loopback."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.servers import Endpoint, PlatformServer, Tenant, delivery_rows, running_platform, wait_for


@pytest.fixture
def platform(tmp_path):
    with running_platform(tmp_path) as running:
        yield running


@pytest.fixture
def endpoint():
    receiving = Endpoint().start()
    yield receiving
    receiving.stop()


def sign_in(page: Page, platform: PlatformServer, tenant: Tenant, then: str = "/dashboard/configurations") -> None:
    page.goto(platform.base_url + then)
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in"))
    page.fill("input[name=api_key]", tenant.api_key)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(re.escape(then) + "$"))


def delivery_row(page: Page, delivery_id: int):
    return page.locator(f"#delivery-{delivery_id}")


def test_a_new_delivery_appears_without_a_reload(platform: PlatformServer, endpoint: Endpoint, page: Page):
    acme = platform.tenant("Acme")
    platform.subscribe(acme, endpoint.url)
    platform.ingest(acme, "Hello, are you open on Sunday?", number=1)
    first = wait_for(lambda: delivery_rows(platform, acme.org_id), what="the first delivery")[0]

    sign_in(page, platform, acme, "/dashboard/deliveries")
    rows = page.locator("#deliveries > tr[id^=delivery-]")
    expect(rows).to_have_count(1)
    expect(delivery_row(page, first.id)).to_be_visible()
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "on")
    page.evaluate("window.stillTheSamePage = true")

    platform.ingest(acme, "Do you have this model in blue?", number=2)
    second = wait_for(lambda: [row for row in delivery_rows(platform, acme.org_id) if row.id != first.id],
                      what="the second delivery")[0]

    expect(rows).to_have_count(2)
    expect(rows.first).to_have_attribute("id", f"delivery-{second.id}")  # newest on top
    # The dispatcher delivers it to the endpoint; the row follows, still without a reload.
    expect(delivery_row(page, second.id).locator(".badge")).to_have_text("delivered")
    assert page.evaluate("window.stillTheSamePage") is True


def test_resending_a_failed_delivery_adds_an_attempt(platform: PlatformServer, endpoint: Endpoint, page: Page):
    acme = platform.tenant("Acme")
    platform.subscribe(acme, endpoint.url)
    endpoint.status = 400  # final: no retry
    platform.ingest(acme, "My order has not arrived yet.", number=1)
    failed = wait_for(lambda: [row for row in delivery_rows(platform, acme.org_id) if row.status == "failed"],
                      what="the delivery to fail")[0]

    sign_in(page, platform, acme, f"/dashboard/deliveries/{failed.id}")
    attempts = page.locator("#attempts > article.attempt")
    expect(attempts).to_have_count(1)
    expect(attempts.first).to_contain_text("HTTP 400")
    expect(page.locator("#delivery-summary")).to_have_attribute("data-status", "failed")

    endpoint.status = 200
    page.click("button[data-action=resend]")

    expect(attempts).to_have_count(2)
    expect(attempts.nth(1)).to_contain_text("HTTP 200")
    expect(page.locator("#delivery-summary")).to_have_attribute("data-status", "delivered")
    expect(page.locator(".notice")).to_contain_text(f"Delivery #{failed.id} is queued to be sent again")
    assert len(endpoint.received) == 2
    # The same delivery: the same webhook-id and the same body bytes on both attempts.
    first, again = endpoint.received
    assert first["headers"]["webhook-id"] == again["headers"]["webhook-id"]
    assert first["body"] == again["body"]


def test_one_organizations_session_cannot_see_anothers_data(
    platform: PlatformServer, endpoint: Endpoint, page: Page
):
    acme = platform.tenant("Acme")
    globex = platform.tenant("Globex")
    acme_config = platform.subscribe(acme, endpoint.url + "/acme")
    globex_config = platform.subscribe(globex, endpoint.url + "/globex")
    platform.ingest(acme, "Acme's message", number=1)
    platform.ingest(globex, "Globex's message", number=2)
    acme_first = wait_for(lambda: delivery_rows(platform, acme.org_id), what="Acme's delivery")[0]
    globex_first = wait_for(lambda: delivery_rows(platform, globex.org_id), what="Globex's delivery")[0]

    sign_in(page, platform, acme, "/dashboard/configurations")
    expect(page.locator(f"#config-{acme_config}")).to_be_visible()
    expect(page.locator(f"#config-{globex_config}")).to_have_count(0)
    expect(page.locator("body")).not_to_contain_text("/globex")

    page.goto(platform.base_url + "/dashboard/deliveries")
    expect(delivery_row(page, acme_first.id)).to_be_visible()
    expect(delivery_row(page, globex_first.id)).to_have_count(0)
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "on")

    # Live: Globex's next delivery is never streamed to Acme's page, Acme's is.
    platform.ingest(globex, "Globex again", number=3)
    platform.ingest(acme, "Acme again", number=4)
    globex_second = wait_for(lambda: delivery_rows(platform, globex.org_id)[1:], what="Globex's second")[0]
    acme_second = wait_for(lambda: delivery_rows(platform, acme.org_id)[1:], what="Acme's second")[0]
    expect(delivery_row(page, acme_second.id)).to_be_visible()
    expect(delivery_row(page, globex_second.id)).to_have_count(0)
    expect(page.locator("#deliveries")).not_to_contain_text("/globex")

    # Another organization's delivery, its stream and its actions are not found.
    answer = page.goto(platform.base_url + f"/dashboard/deliveries/{globex_first.id}")
    assert answer.status == 404
    assert page.request.get(
        platform.base_url + f"/dashboard/events?view=delivery&id={globex_first.id}").status == 404
    assert page.request.post(platform.base_url + f"/dashboard/deliveries/{globex_first.id}/resend").status == 404
    assert page.request.post(platform.base_url + f"/dashboard/configurations/{globex_config}/pause").status == 404
    assert [row.status for row in delivery_rows(platform, globex.org_id)][0] != "pending"

    # Signing out ends the session: the pages ask for a key again.
    page.goto(platform.base_url + "/dashboard/deliveries")
    page.click("text=Sign out")
    page.goto(platform.base_url + "/dashboard/deliveries")
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in"))


def test_a_conversation_held_back_shows_live_with_why(platform: PlatformServer, endpoint: Endpoint, page: Page):
    from tidings.contract import utcnow
    from tidings.platform.deliveries import actions

    acme = platform.tenant("Acme")
    config_id = platform.subscribe(acme, endpoint.url)
    platform.run(lambda conn: actions.pause_configuration(conn, config_id=config_id, reason="maintenance",
                                                                 now=utcnow()))
    sign_in(page, platform, acme, "/dashboard/deliveries")
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "on")
    section = page.locator("#held-back")
    expect(section).to_be_hidden()

    for number, text in enumerate(["Hello", "Is the shop open?", "On Sunday, I mean."], start=1):
        platform.ingest(acme, text, conversation="conv-held", number=number)
    head, *queued = delivery_rows(platform, acme.org_id)
    assert (head.status, [row.status for row in queued]) == ("held", ["queued", "queued"])

    # Without a reload: the conversation, how many wait, the head and why.
    row = page.locator("#held-back-rows > tr")
    expect(section).to_be_visible()
    expect(row).to_have_count(1)
    expect(row.locator(".waiting")).to_have_text("2 events")
    expect(row.locator(".reason")).to_have_text("paused configuration (maintenance)")
    expect(row.locator("a.head-link")).to_have_text(f"#{head.id}")
    expect(delivery_row(page, queued[0].id).locator(".badge")).to_have_text("queued")

    row.locator("a.head-link").click()
    expect(page.locator("#delivery-summary")).to_have_attribute("data-status", "held")

    # Resumed: the conversation goes, in order, and nothing is held back any more.
    page.goto(platform.base_url + "/dashboard/configurations")
    page.click("button[data-action=resume]")
    wait_for(lambda: all(row.status == "delivered" for row in delivery_rows(platform, acme.org_id)),
             what="the conversation to be delivered")
    page.goto(platform.base_url + "/dashboard/deliveries")
    expect(section).to_be_hidden()
    expect(page.locator("#held-back-rows > tr")).to_have_count(0)
