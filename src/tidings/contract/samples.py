"""Realistic sample events, reproducible from a seed.

Tests, the demo, the tryout delivery and the benchmarks all draw from here,
so every messaging partner, content type, sender type and status shows up.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any, Iterator

from tidings.contract.enums import (
    ContentType,
    ConversationStatus,
    MessageStatus,
    MessagingPartner,
    SenderType,
)
from tidings.contract.models import (
    Business,
    Conversation,
    ConversationCustomChannel,
    EventPayload,
    Message,
    MessageCreated,
    MessageCustomChannel,
    MessageEvent,
    MessageUpdated,
)

PARTNERS = [MessagingPartner(v) for v in sorted(MessagingPartner.known_values)]
CONTENT_TYPES = [ContentType(v) for v in sorted(ContentType.known_values)]
SENDER_TYPES = [SenderType(v) for v in sorted(SenderType.known_values)]
STATUSES = [MessageStatus(v) for v in sorted(MessageStatus.known_values)]
CUSTOM_PARTNER = "Custom"  # a custom channel's conversations carry the channel's name

_FIRST = ["Ana", "Ben", "Chloé", "David", "Emma", "Farid", "Giulia", "Hugo", "Inès", "Jonas", "Kenji", "Léa", "Mateo", "Nora"]
_LAST = ["Martin", "Bernard", "Dubois", "Rossi", "García", "Nakamura", "Schmidt", "Okafor", "Silva", "Nguyen"]
_CITIES = [("Paris", "75002", "FR"), ("Lyon", "69001", "FR"), ("Berlin", "10115", "DE"), ("Madrid", "28013", "ES"), ("Lisbon", "1100-148", "PT")]
_SHOPS = ["Boulangerie du Coin", "Garage Central", "Optique Lumière", "Pizzeria Roma", "Fleurs & Co", "Salon Élégance"]
CONSUMER_TEXTS = [
    "Hello, are you open on Sunday?",
    "Do you have this model in blue?",
    "Thanks a lot, see you tomorrow!",
    "Can I book a table for four at 8pm?",
    "My order has not arrived yet.",
    "What are your opening hours?",
    "Bonjour, avez-vous encore des croissants ?",
    "Is parking available near the shop?",
]
REPLY_TEXTS = ["Yes, we are open 9am-1pm.", "Of course, see you then!", "Let me check and come back to you.", "Your order ships today."]
MEDIA_URLS = {
    "Image": "https://cdn.example.com/media/{n}.jpg",
    "Video": "https://cdn.example.com/media/{n}.mp4",
    "Audio": "https://cdn.example.com/media/{n}.ogg",
    "Document": "https://cdn.example.com/media/{n}.pdf",
    "IgStoryReply": "https://cdn.example.com/stories/{n}.jpg",
    "IgStoryMention": "https://cdn.example.com/stories/{n}.jpg",
}
_EPOCH = datetime(2024, 1, 15, 9, 0, tzinfo=UTC)


class SampleFactory:
    """Sample events from a seed: the same seed gives the same events.

    ``n``-th calls cycle through every partner, content type, sender type and
    status, so a few dozen events cover all of them; the rest is random.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.random = random.Random(seed)
        self._count = 0
        self._ids = 1000

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _hex24(self) -> str:
        return f"{self.random.getrandbits(96):024x}"

    def business(self) -> Business:
        city, zipcode, country = self.random.choice(_CITIES)
        street = f"{self.random.randint(1, 180)} rue {self.random.choice(_LAST)}"
        return Business(
            id=self._hex24(),
            name=self.random.choice(_SHOPS),
            city=city,
            zipcode=zipcode,
            country=country,
            formatted_address=f"{street}, {zipcode} {city}, {country}",
        )

    def message(self, conversation_id: int, *, n: int | None = None, **overrides: Any) -> Message:
        n = self._count if n is None else n
        content_type = CONTENT_TYPES[n % len(CONTENT_TYPES)]
        sender_type = SENDER_TYPES[(n // len(CONTENT_TYPES)) % len(SENDER_TYPES)]
        # Consumers' and metadata messages arrive delivered; a user's reply
        # goes through the whole life cycle.
        status = STATUSES[n % len(STATUSES)] if sender_type == SenderType.USER else MessageStatus.SUCCESS
        if content_type == ContentType.TEXT:
            content = self.random.choice(REPLY_TEXTS if sender_type == SenderType.USER else CONSUMER_TEXTS)
        elif content_type == ContentType.UNSUPPORTED:
            content = ""
        else:
            content = MEDIA_URLS[content_type].format(n=self.random.getrandbits(40))
        is_user = sender_type == SenderType.USER
        fields: dict[str, Any] = {
            "id": self._next_id(),
            "conversation_id": conversation_id,
            "date": _EPOCH + timedelta(seconds=n * 37, microseconds=self.random.randint(0, 999_999)),
            "content_type": content_type,
            "sender_type": sender_type,
            "sender_label": f"{self.random.choice(_FIRST)} {self.random.choice(_LAST)}",
            "status": status,
            "is_deleted": False,
            "is_automated": is_user and self.random.random() < 0.1,
            "content": content,
            "user_id": self._hex24() if is_user else None,
            "custom_channel": None,
        }
        fields.update(overrides)
        return Message(**fields)

    def conversation(self, *, n: int | None = None, last_message: Message | None = None, **overrides: Any) -> Conversation:
        n = self._count if n is None else n
        custom = n % (len(PARTNERS) + 1) == len(PARTNERS)
        partner = CUSTOM_PARTNER if custom else PARTNERS[n % (len(PARTNERS) + 1)]
        first, last = self.random.choice(_FIRST), self.random.choice(_LAST)
        name = {
            "Instagram": f"@{first.lower()}{last.lower()}",
            "SMS": None,
            "Whatsapp": f"{first} {last[0]}.",
        }.get(str(partner), f"{first} {last}")
        created = _EPOCH + timedelta(seconds=n * 37 - 3600)
        fields: dict[str, Any] = {
            "id": overrides.pop("id", None) or self._next_id(),
            "consumer_img": f"https://cdn.example.com/avatars/{self.random.getrandbits(32):08x}.jpg" if partner != "SMS" else None,
            "consumer_name": name,
            "consumer_phone_number": f"+336{self.random.randint(10_000_000, 99_999_999)}" if partner in ("SMS", "Whatsapp") else None,
            "consumer_email": f"{first.lower()}.{last.lower()}@example.com" if self.random.random() < 0.3 else None,
            "last_message": last_message,
            "is_read": self.random.random() < 0.5,
            "status": ConversationStatus.OPEN if n % 9 else ConversationStatus.CLOSED,
            "created_at": created,
            "has_one_user_message": self.random.random() < 0.6,
            "business": self.business(),
            "messaging_partner": partner,
            "issues": ["facebook_no_page_linked"] if partner == "Facebook" and n % 13 == 0 else [],
            "first_message_date": created.strftime("%Y-%m-%d %H:%M:%S.%f+00:00"),
            "is_expired": n % 9 == 0,
            "is_solved": self.random.random() < 0.2,
            "is_automated": False,
            "assigned_user_id": self._hex24() if self.random.random() < 0.5 else None,
            "custom_channel": (
                ConversationCustomChannel(
                    id=self._hex24(),
                    name="Shop chat",
                    icon="https://cdn.example.com/icons/chat.png",
                    is_readonly=False,
                    external_conversation_id=f"ext-conv-{self.random.getrandbits(32):08x}",
                )
                if custom
                else None
            ),
        }
        fields.update(overrides)
        return Conversation(**fields)

    def payload(self, *, org_id: int | None = None, message: dict[str, Any] | None = None,
                conversation: dict[str, Any] | None = None) -> EventPayload:
        n = self._count
        self._count += 1
        conversation_id = (conversation or {}).get("id") or self._next_id()
        msg = self.message(conversation_id, n=n, **(message or {}))
        conv = self.conversation(n=n, **{**(conversation or {}), "id": conversation_id})
        if conv.custom_channel is not None and msg.custom_channel is None:
            msg = msg.model_copy(update={"custom_channel": MessageCustomChannel(external_message_id=f"ext-msg-{msg.id}")})
        conv = conv.model_copy(update={"last_message": msg})
        return EventPayload(message=msg, conversation=conv, org_id=org_id if org_id is not None else 1 + n % 3)

    def message_created(self, **kwargs: Any) -> MessageCreated:
        return MessageCreated(type="message_created", payload=self.payload(**kwargs))

    def message_updated(self, **kwargs: Any) -> MessageUpdated:
        return MessageUpdated(type="message_updated", payload=self.payload(**kwargs))

    def event(self, event_type: str = "message_created", **kwargs: Any) -> MessageEvent:
        if event_type == "message_created":
            return self.message_created(**kwargs)
        if event_type == "message_updated":
            return self.message_updated(**kwargs)
        raise ValueError(f"no sample for event type {event_type!r}")

    def events(self, count: int, event_type: str | None = None) -> Iterator[MessageEvent]:
        """``count`` events; of ``event_type``, or alternating both types."""
        for i in range(count):
            yield self.event(event_type or ("message_created" if i % 4 else "message_updated"))
