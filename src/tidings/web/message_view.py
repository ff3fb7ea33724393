"""How the inbox shows a message and a conversation: pure functions, no I/O.

Snapshots come from the receiver's inbox tables as the sender wrote them,
unknown fields and unknown enum values included. The contract asks a
receiver to show a placeholder for a content type it does not know; a
sender type it does not know is shown as such rather than dropped, so that
an operator sees that something new arrived.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tidings.contract import ContentType, MessageStatus, SenderType

TEXT = "text"
MEDIA = "media"
PLACEHOLDER = "placeholder"

_MEDIA_LABELS = {
    ContentType.IMAGE: "Image",
    ContentType.VIDEO: "Video",
    ContentType.AUDIO: "Audio",
    ContentType.DOCUMENT: "Document",
    ContentType.IG_STORY_REPLY: "Instagram story reply",
    ContentType.IG_STORY_MENTION: "Instagram story mention",
}


LINK_SCHEMES = frozenset({"http", "https"})


@dataclass(frozen=True)
class ShownContent:
    kind: str  # TEXT, MEDIA or PLACEHOLDER
    text: str  # the text, the media label, or the placeholder
    url: str | None = None  # a media message's link: an http(s) URL only
    detail: str | None = None  # a media message's content that is no such URL, shown as text


def web_link(text: str) -> str | None:
    """``text`` when it is an absolute ``http`` or ``https`` URL that can be a link, else None.

    A consumer writes a media message's content: ``javascript:``, ``data:``
    and every other scheme stay text. So does anything with a space or a
    control character, which a browser would strip or read differently.

    >>> web_link("https://cdn.example.com/a.png"), web_link("javascript:alert(1)"), web_link("java\tscript:x")
    ('https://cdn.example.com/a.png', None, None)
    """
    if not text or any(ord(char) <= 0x20 or 0x7F <= ord(char) <= 0x9F for char in text) or "\\" in text:
        return None
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    if parts.scheme.lower() not in LINK_SCHEMES or not parts.hostname:
        return None
    return text


def shown_content(content_type: Any, content: Any) -> ShownContent:
    """What the inbox shows for one message's ``content``."""
    kind = ContentType(str(content_type or ""))
    text = "" if content is None else str(content)
    if not kind.is_known:
        return ShownContent(PLACEHOLDER, f"Unsupported content ({kind})")
    if kind == ContentType.UNSUPPORTED:
        return ShownContent(PLACEHOLDER, "Unsupported content (the channel could not convert it)")
    if kind == ContentType.TEXT:
        return ShownContent(TEXT, text)
    label = _MEDIA_LABELS.get(kind, str(kind))
    link = web_link(text)
    return ShownContent(MEDIA, label, link, None if link or not text else text)


def preview(content_type: Any, content: Any, limit: int = 90) -> str:
    """One line for the conversation list."""
    shown = shown_content(content_type, content)
    line = " ".join(shown.text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def sender_role(sender_type: Any) -> str:
    """A CSS-friendly role: ``user``, ``consumer``, ``metadata`` or ``unknown``."""
    kind = SenderType(str(sender_type or ""))
    return str(kind).lower() if kind.is_known else "unknown"


def sender_type_label(sender_type: Any) -> str:
    kind = SenderType(str(sender_type or ""))
    if kind.is_known:
        return {"User": "Business user", "Consumer": "Customer", "Metadata": "Metadata"}[str(kind)]
    return f"Unknown sender type ({kind})"


def status_class(status: Any) -> str:
    """``sending``, ``success``, ``failed`` or ``unknown``: a message status as a CSS class."""
    kind = MessageStatus(str(status or ""))
    return str(kind).lower() if kind.is_known else "unknown"


def channel_name(conversation: dict[str, Any]) -> str:
    """The channel a conversation comes from: a custom channel's name, else the messaging partner."""
    custom = conversation.get("custom_channel")
    if isinstance(custom, dict) and custom.get("name"):
        return str(custom["name"])
    return str(conversation.get("messaging_partner") or "Unknown channel")


def consumer_name(conversation: dict[str, Any]) -> str:
    """The best name there is for the customer: name, phone number, e-mail, else an id."""
    for field in ("consumer_name", "consumer_phone_number", "consumer_email"):
        value = conversation.get(field)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return f"Conversation {conversation.get('id', '?')}"


def initials(name: str) -> str:
    """Up to two letters for an avatar; a telephone sign for a phone number."""
    if name.startswith("+") and name[1:].replace(" ", "").isdigit():
        return "☎"
    letters = [part[0] for part in name.replace("@", " ").replace(".", " ").split() if part and part[0].isalpha()]
    return "".join(letters[:2]).upper() or "?"


def conversation_order(conversation: dict[str, Any]) -> str:
    """Where a conversation goes in the list: by the date of its last message
    (the contract's dates, in UTC, sort as text), then by id."""
    last = conversation.get("last_message") or {}
    return f"{last.get('date') or ''}|{int(conversation['id']):020d}"


def message_order(message: dict[str, Any]) -> str:
    """Where a message goes in its thread: by date, then by id."""
    return f"{message.get('date') or ''}|{int(message['id']):020d}"
