"""Links and headers (issue 14, item 6): every page of both dashboards, and every
answer of the receiver's admin listener, carries a strict Content-Security-Policy,
``frame-ancestors 'none'``, ``nosniff`` and a referrer policy, over real sockets;
a message's content is a link only when it is an ``http``/``https`` URL. (The
browser tests check that the pages still work under the policy.)"""

from __future__ import annotations

import re

import httpx
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.browser.servers import Endpoint, ReceiverServer, message_event, running_platform, wait_for
from tidings.contract.samples import SampleFactory
from tidings.web import dashboard, inbox
from tidings.web.message_view import MEDIA, shown_content, web_link
from tidings.web.page_headers import CONTENT_SECURITY_POLICY, under_prefix


def assert_page_headers(answer: httpx.Response) -> None:
    policy = answer.headers.get("content-security-policy", "")
    directives = {part.strip().split(" ")[0]: part.strip() for part in policy.split(";")}
    assert directives.get("frame-ancestors") == "frame-ancestors 'none'", (answer.url, policy)
    assert directives.get("default-src") == "default-src 'none'"
    assert directives.get("script-src") == "script-src 'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert "unsafe" not in policy
    assert answer.headers.get("x-content-type-options") == "nosniff"
    assert answer.headers.get("x-frame-options") == "DENY"
    assert answer.headers.get("referrer-policy") in ("same-origin", "no-referrer")


def get_routes(router, **values) -> list[str]:
    """Every GET path of a router, its parameters filled in with ``values``."""
    paths = []
    for route in router.routes:
        if "GET" in getattr(route, "methods", ()):
            paths.append(re.sub(r"\{(\w+)\}", lambda found: str(values[found.group(1)]), route.path))
    return paths


def get_without_stream(client: httpx.Client, path: str) -> httpx.Response:
    """The answer's status and headers; a live stream is not read to its end."""
    with client.stream("GET", path) as answer:
        return answer


def test_every_page_of_the_receivers_admin_listener_carries_the_headers(tmp_path):
    receiver = ReceiverServer(f"sqlite:///{tmp_path / 'receiver.db'}").start()
    try:
        assert receiver.send(message_event(SampleFactory(2), consumer="Ana")).status_code == 200
        conversation = wait_for(lambda: httpx.get(receiver.admin_url + "/inbox/conversations", headers={
            "authorization": f"Bearer {receiver.token}"}).json()["conversations"], what="the projection")[0]["id"]
        pages = get_routes(inbox.router, conversation_id=conversation)
        assert {"/inbox", f"/inbox/threads/{conversation}", "/inbox/quarantine", "/inbox/dead-letters"} <= set(pages)
        pages += ["/inbox/static/live.js", "/inbox/static/tidings.css", "/events", "/inbox/conversations", "/gaps",
                  "/", "/no-such-page"]
        with httpx.Client(base_url=receiver.admin_url, timeout=10) as browser:
            refused = browser.get("/inbox")
            assert refused.status_code == 401
            assert_page_headers(refused)  # the door's own answers too
            signed_in = browser.get(receiver.sign_in_url())
            assert signed_in.status_code == 303
            assert_page_headers(signed_in)
            for path in pages:
                answer = get_without_stream(browser, path + ("?view=list" if path == "/inbox/events" else ""))
                assert answer.status_code in (200, 303, 404), (path, answer.status_code)
                assert_page_headers(answer)
            assert browser.get("/inbox").headers["content-type"].startswith("text/html")
    finally:
        receiver.stop()


def test_every_page_of_the_platforms_dashboard_carries_the_headers(tmp_path):
    endpoint = Endpoint().start()
    try:
        with running_platform(tmp_path) as platform:
            acme = platform.tenant("Acme")
            platform.subscribe(acme, endpoint.url)
            platform.ingest(acme, "Hello", number=1)
            from tests.browser.servers import delivery_rows

            delivery = wait_for(lambda: delivery_rows(platform, acme.org_id), what="a delivery")[0]
            with httpx.Client(base_url=platform.base_url, timeout=10) as browser:
                before = browser.get("/dashboard/configurations")
                assert before.status_code == 303  # to the sign-in page
                assert_page_headers(before)
                signed_in = browser.post("/dashboard/sign-in", data={"api_key": acme.api_key},
                                         headers={"origin": platform.base_url})
                assert signed_in.status_code == 303
                assert_page_headers(signed_in)
                pages = get_routes(dashboard.router, delivery_id=delivery.id)
                assert {"/dashboard/configurations", "/dashboard/deliveries", f"/dashboard/deliveries/{delivery.id}",
                        "/dashboard/sign-in"} <= set(pages)
                pages += ["/dashboard/static/live.js", "/dashboard/static/tidings.css", "/dashboard/nothing-here"]
                for path in pages:
                    query = "?view=configurations&after=0" if path == "/dashboard/events" else ""
                    answer = get_without_stream(browser, path + query)
                    assert answer.status_code in (200, 303, 404), (path, answer.status_code)
                    assert_page_headers(answer)
                # The API beside the dashboard is left as it was: its JSON is no page, its /docs needs inline script.
                assert "content-security-policy" not in browser.get("/openapi.json").headers
    finally:
        endpoint.stop()


def test_the_policy_and_the_prefix():
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert under_prefix("/dashboard", "/dashboard") and under_prefix("/dashboard/static/x.js", "/dashboard")
    assert not under_prefix("/dashboardx", "/dashboard") and not under_prefix("/v2/webhooks", "/dashboard")


# ---------------------------------------------------------------- links


def test_only_http_and_https_urls_become_links():
    assert web_link("https://cdn.example.com/cat.png") == "https://cdn.example.com/cat.png"
    assert web_link("HTTP://cdn.example.com/a") == "HTTP://cdn.example.com/a"
    for text in ("javascript:alert(1)", "JavaScript:alert(1)", " javascript:alert(1)", "java\tscript:alert(1)",
                 "\x01javascript:alert(1)", "data:text/html,<script>alert(1)</script>", "vbscript:x", "//evil.example",
                 "/inbox", "https:evil", "http://", "https://exa mple.com", "https:\\\\evil.example", "file:///etc/passwd",
                 ""):
        assert web_link(text) is None, text
    shown = shown_content("Image", "javascript:alert(document.cookie)")
    assert (shown.kind, shown.url, shown.detail) == (MEDIA, None, "javascript:alert(document.cookie)")
    assert shown_content("Image", "https://cdn.example.com/a.png").url == "https://cdn.example.com/a.png"
    assert shown_content("Image", "").detail is None


schemes = st.sampled_from(["javascript", "JAVASCRIPT", "data", "vbscript", "file", "blob", "http", "https", "hTTps"])
fillers = st.text(alphabet=st.characters(max_codepoint=0x2FF), max_size=12)


hostile = st.builds(lambda prefix, scheme, middle, rest: prefix + scheme + middle + ":" + rest,
                    fillers, schemes, fillers, st.text(max_size=30))
url_like = st.builds(lambda scheme, host, rest: f"{scheme}://{host}{rest}",
                     schemes, st.from_regex(r"\A[a-z0-9.-]{1,20}\Z"), st.text(max_size=30))


@settings(max_examples=500)
@given(text=hostile | url_like)
def test_a_link_is_always_an_http_url_without_a_control_character(text):
    link = web_link(text)
    event("link" if link else "text")
    if link is not None:
        assert link == text
        assert re.match(r"(?i)https?://[^/?#]", link)
        assert not any(ord(char) <= 0x20 or 0x7F <= ord(char) <= 0x9F for char in link)


async def test_in_the_inbox_a_javascript_url_is_shown_as_text(tmp_path):
    receiver = ReceiverServer(f"sqlite:///{tmp_path / 'receiver.db'}")
    try:
        samples = SampleFactory(6)
        body = message_event(samples, content_type="Image", text="javascript:alert(1)")
        assert receiver.service.receiver.handle_sync(body, receiver.signed(body)).status == 200
        receiver.service.projector.catch_up()
        transport = httpx.ASGITransport(app=receiver.api)
        async with httpx.AsyncClient(transport=transport, base_url=receiver.admin_url,
                                     headers={"authorization": f"Bearer {receiver.token}"}) as client:
            listing = (await client.get("/inbox")).text
            conversation = re.search(r'<li id="conversation-(\d+)"', listing).group(1)
            thread = (await client.get(f"/inbox/threads/{conversation}")).text
        assert "javascript:alert(1)" in thread
        assert 'href="javascript' not in thread.lower() and "href='javascript" not in thread.lower()
        assert re.search(r'<span class="media-detail" data-not-a-link>javascript:alert\(1\)</span>', thread)
    finally:
        receiver.stop()

