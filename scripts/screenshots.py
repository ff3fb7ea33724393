"""Regenerates docs/screenshots/*.png: the platform's dashboard and the receiver's inbox.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots]

Starts the real servers on loopback with sample data (a platform with its
dispatcher and two subscriber endpoints, one of them flaky; a receiver that
takes signed events in), then takes full-page screenshots with Debian's
chromium through Playwright (``scripts/install-browser.sh`` installs it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.browser.conftest import CHROMIUM, launch_chromium  # noqa: E402
from tests.browser.servers import (  # noqa: E402
    Endpoint,
    PlatformServer,
    ReceiverServer,
    delivery_rows,
    message_event,
    wait_for,
)

CONVERSATIONS = [
    ("Ana Martin", ["Hello, are you open on Sunday?", "Great, I'll come by around 11."]),
    ("@jonas.schmidt", ["Do you have this model in blue?", "Size 42 please", "Can you hold it until Friday?"]),
    ("Chloé Dubois", ["Bonjour, avez-vous encore des croissants ?"]),
    ("+33612345678", ["My order has not arrived yet.", "Order number is 48213."]),
    ("Kenji Nakamura", ["Is parking available near the shop?", "Thanks a lot, see you tomorrow!"]),
]


def flaky(request: dict, tries: int) -> tuple[int, bytes]:
    """Every third delivery is refused twice before it goes through; every seventh never does."""
    number = int(request["headers"].get("webhook-id", "msg_0")[-2:], 16)
    if number % 7 == 0:
        return 500, b'{"error":"database is read-only"}'
    if number % 3 == 0 and tries < 2:
        return 503, b'{"error":"upstream busy, retry later"}'
    return 200, b'{"received":true}'


def seed_platform(platform: PlatformServer, healthy: Endpoint, struggling: Endpoint) -> None:
    from tidings.contract.samples import SampleFactory
    from tidings.platform.deliveries.outbox import record_event

    shop = platform.tenant("Maison Lumière")
    platform.subscribe(shop, healthy.url, "message_created")
    platform.subscribe(shop, struggling.url, "message_updated")
    number = 0
    for index, (consumer, texts) in enumerate(CONVERSATIONS):
        for text in texts:
            number += 1
            platform.ingest(shop, text, conversation=f"conv-{index}", number=number, consumer=consumer)
            time.sleep(0.05)  # a little spread in the times shown
    samples = SampleFactory(5)

    async def updates(conn) -> None:
        for _ in range(12):
            await record_event(conn, org_id=shop.org_id, event=samples.message_updated(org_id=shop.org_id),
                               signer=platform.signer)

    platform.run(updates)
    wait_for(lambda: all(row.status in ("delivered", "failed") for row in delivery_rows(platform, shop.org_id)),
             seconds=60, what="every delivery to finish")
    hold_back_a_conversation(platform, shop.org_id)
    platform.shop = shop


HELD_CONVERSATION = 48213


def hold_back_a_conversation(platform: PlatformServer, org_id: int) -> None:
    """Ordered delivery, for the deliveries page's "Held back" section: four
    updates of one conversation to the struggling endpoint, whose first has
    been refused three times and waits for its next try; the others wait
    queued behind it. Their first try is set after the screenshots are
    taken, so the dispatcher leaves them as they are meanwhile."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import select, update

    from tidings.contract.samples import SampleFactory
    from sqlalchemy import insert

    from tidings.platform.deliveries.outbox import record_event
    from tidings.store.platform_tables import attempts, deliveries

    samples = SampleFactory(6)
    later = time.time() + 95

    async def work(conn) -> None:
        for _ in range(4):
            event = samples.message_updated(org_id=org_id, conversation={"id": HELD_CONVERSATION})
            await record_event(conn, org_id=org_id, event=event, signer=platform.signer, now=later)
        head = (await conn.execute(
            select(deliveries.c.id).where(deliveries.c.conversation_id == HELD_CONVERSATION)
            .order_by(deliveries.c.sequence))).scalars().first()
        first_try = datetime.now(UTC) - timedelta(seconds=50)
        await conn.execute(insert(attempts), [
            {"delivery_id": head, "number": number, "started_at": first_try + timedelta(seconds=offset),
             "duration_ms": duration, "status_code": 503,
             "response_excerpt": '{"error":"upstream busy, retry later"}', "error": None,
             "request_headers": {"Content-Type": "application/json"}, "worker_id": "worker-1"}
            for number, offset, duration in ((1, 0, 41.0), (2, 12, 38.5), (3, 45, 44.2))
        ])
        await conn.execute(update(deliveries).where(deliveries.c.id == head).values(
            attempt_count=3, last_status_code=503, last_error="answered 503; retry 3 in 95 s"))

    platform.run(work)


# (sender type, sender label, content type, content, status) per message, a few minutes apart.
THREADS = [
    ("Ana Martin", True, [
        ("Consumer", "Ana Martin", "Text", "Hello! Are you open on Sunday morning?", "Success"),
        ("User", "Léa (Maison Lumière)", "Text", "Good morning Ana, yes: 9am to 1pm.", "Success"),
        ("Consumer", "Ana Martin", "Image", "https://cdn.example.com/media/lamp-brass.jpg", "Success"),
        ("Consumer", "Ana Martin", "Text", "Do you still have this lamp in brass?", "Success"),
        ("User", "Léa (Maison Lumière)", "Text", "We do! I can set one aside for you until Sunday.", "Success"),
        ("Consumer", "Ana Martin", "Hologram", "https://cdn.example.com/media/3d-room-scan.holo", "Success"),
        ("Consumer", "Ana Martin", "Text", "Perfect, thank you. See you Sunday!", "Success"),
        ("User", "Léa (Maison Lumière)", "Text", "See you then, have a lovely week.", "Sending"),
    ]),
    ("@jonas.schmidt", False, [
        ("Consumer", "Jonas Schmidt", "Text", "Do you deliver to Berlin?", "Success"),
        ("User", "Marc (Maison Lumière)", "Text", "Yes, within 3 working days, free above 80 €.", "Failed"),
        ("Consumer", "Jonas Schmidt", "Text", "Hello? Any news about delivery to Berlin?", "Success"),
    ]),
    ("Chloé Dubois", False, [
        ("Consumer", "Chloé Dubois", "Text", "Bonjour, avez-vous encore l'abat-jour en lin ?", "Success"),
        ("Consumer", "Chloé Dubois", "IgStoryMention", "https://cdn.example.com/stories/8812.jpg", "Success"),
    ]),
    ("+33612345678", True, [
        ("Consumer", "+33612345678", "Text", "My order 48213 has not arrived yet.", "Success"),
        ("User", "Léa (Maison Lumière)", "Text", "Sorry about that, it left our shop this morning.", "Success"),
        ("Metadata", "System", "Text", "Conversation assigned to Léa", "Success"),
    ]),
    ("Kenji Nakamura", True, [
        ("Consumer", "Kenji Nakamura", "Document", "https://cdn.example.com/media/invoice-2291.pdf", "Success"),
        ("Consumer", "Kenji Nakamura", "Text", "Could you send the invoice with my company name?", "Success"),
        ("Bot", "Order assistant", "Text", "Invoice requests are handled within one day.", "Success"),
    ]),
]


def seed_receiver(receiver: ReceiverServer) -> int:
    """Sends the threads above, signed, to the receiver's webhook; returns the first conversation's id."""
    import orjson

    from tidings.contract.samples import SampleFactory

    samples = SampleFactory(8)
    first_conversation = None
    minute = 0
    for consumer, is_read, messages in THREADS:
        conversation = None
        for sender_type, label, content_type, content, status in messages:
            minute += 3
            date = f"2024-06-12 {9 + minute // 60:02d}:{minute % 60:02d}:00.000000+00:00"
            body = message_event(samples, consumer=consumer, text=content, content_type=content_type,
                                 sender_type=sender_type, status=status, date=date, sender_label=label,
                                 is_read=is_read, same_conversation_as=conversation)
            answer = receiver.send(body)
            answer.raise_for_status()
            conversation = orjson.loads(body)["payload"]["conversation"]
            conversation.pop("last_message", None)
        first_conversation = first_conversation or conversation["id"]
    return first_conversation


def shoot_inbox(browser, receiver: ReceiverServer, conversation_id: int, out: Path) -> list[Path]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-GB", timezone_id="UTC")
    page = context.new_page()
    page.goto(receiver.sign_in_url("/inbox"))
    page.wait_for_selector("#live-indicator[data-state=on]")
    page.wait_for_function(f"document.querySelectorAll('#conversations > li.conversation').length >= {len(THREADS)}")
    shots = [out / "inbox.png"]
    page.screenshot(path=shots[-1], full_page=True)
    page.goto(receiver.admin_url + f"/inbox/threads/{conversation_id}")
    page.wait_for_selector("#live-indicator[data-state=on]")
    shots.append(out / "inbox-thread.png")
    page.screenshot(path=shots[-1], full_page=True)
    context.close()
    return shots


def shoot_dashboard(browser, platform: PlatformServer, out: Path) -> list[Path]:
    shop = platform.shop
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-GB", timezone_id="UTC")
    page = context.new_page()
    page.goto(platform.base_url + "/dashboard/sign-in")
    page.fill("input[name=api_key]", shop.api_key)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/configurations")
    page.wait_for_selector("#live-indicator[data-state=on]")
    shots = [out / "dashboard-configurations.png"]
    page.screenshot(path=shots[-1], full_page=True)

    page.goto(platform.base_url + "/dashboard/deliveries")
    page.wait_for_selector("#live-indicator[data-state=on]")
    shots.append(out / "dashboard-deliveries.png")
    page.screenshot(path=shots[-1], full_page=True)

    retried = max(delivery_rows(platform, shop.org_id), key=lambda row: (row.attempt_count, row.id))
    page.goto(platform.base_url + f"/dashboard/deliveries/{retried.id}")
    page.wait_for_selector("#live-indicator[data-state=on]")
    shots.append(out / "dashboard-delivery.png")
    page.screenshot(path=shots[-1], full_page=True)
    context.close()
    return shots


def receiver_caught_up(receiver: ReceiverServer) -> bool:
    from tidings.web import inbox_queries

    with receiver.service.log.engine.connect() as conn:
        return inbox_queries.projected_position(conn) >= receiver.service.log.last_position(conn)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is missing: run scripts/install-browser.sh first", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    healthy = Endpoint().start()
    struggling = Endpoint(decide=flaky).start()
    with tempfile.TemporaryDirectory() as directory:
        platform = PlatformServer(Path(directory)).start()
        receiver = ReceiverServer(f"sqlite:///{Path(directory) / 'receiver.db'}").start()
        try:
            seed_platform(platform, healthy, struggling)
            first_conversation = seed_receiver(receiver)
            wait_for(lambda: receiver_caught_up(receiver), seconds=30, what="the inbox to be projected")
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                try:
                    shots = shoot_dashboard(browser, platform, args.out)
                    shots += shoot_inbox(browser, receiver, first_conversation, args.out)
                finally:
                    browser.close()
        finally:
            platform.stop()
            receiver.stop()
            healthy.stop()
            struggling.stop()
    for shot in shots:
        print(shot.relative_to(ROOT) if shot.is_relative_to(ROOT) else shot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
