"""What the simulated people do next: pure decisions from a seed, no I/O."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tidings.contract.samples import MEDIA_URLS, REPLY_TEXTS, CONSUMER_TEXTS, CONTENT_TYPES, PARTNERS

_NAMES = ["Ana Martin", "Ben Okafor", "Chloé Dubois", "David Rossi", "Emma Silva", "Farid Nguyen", "Giulia García"]


@dataclass(frozen=True)
class Directory:
    """What an organization has to write to: its businesses and custom channels."""

    businesses: tuple[str, ...]
    channels: tuple[tuple[str, bool], ...]  # (channel id, is read-only)


@dataclass(frozen=True)
class PartnerMessage:
    """A consumer writes through a built-in partner (Facebook, SMS, ...)."""

    partner: str
    business_id: str
    content_type: str
    content: str
    consumer_name: str
    conversation_id: int | None  # None: a new conversation


@dataclass(frozen=True)
class ChannelMessage:
    """A consumer writes through a custom channel."""

    channel_id: str
    business_id: str
    external_conversation_id: str
    external_message_id: str
    content_type: str
    content: str
    consumer_name: str


@dataclass(frozen=True)
class Reply:
    """A business user answers in a conversation."""

    conversation_id: int
    content: str


Action = PartnerMessage | ChannelMessage | Reply


class TrafficPlan:
    """The next action, drawn from a seed; the same seed gives the same traffic.

    About a third of the actions are replies (when there is a conversation to
    reply in); consumers write through every partner and every content type.
    Now and then a custom channel's message is sent twice, as channels do when
    they retry, to show that the platform ingests it once.
    """

    def __init__(self, seed: int, directory: Directory, *, reply_share: float = 0.35,
                 duplicate_share: float = 0.03) -> None:
        if not directory.businesses:
            raise ValueError("the organization has no business to write to")
        self.random = random.Random(seed)
        self.directory = directory
        self.reply_share = reply_share
        self.duplicate_share = duplicate_share
        self.count = 0
        self._last_channel_message: ChannelMessage | None = None

    def _content(self, content_type: str) -> str:
        if content_type == "Text":
            return self.random.choice(CONSUMER_TEXTS)
        if content_type == "Unsupported":
            return ""
        return MEDIA_URLS[content_type].format(n=self.random.getrandbits(32))

    def next(self, threads: Mapping[str, Sequence[int]]) -> Action:
        """The next action; ``threads`` are the conversations seen so far, by partner."""
        self.count += 1
        reply_targets = [cid for ids in threads.values() for cid in ids]
        if reply_targets and self.random.random() < self.reply_share:
            return Reply(self.random.choice(reply_targets), self.random.choice(REPLY_TEXTS))
        # Read-only channels bring messages in too; only replies avoid them.
        writable = [cid for cid, _readonly in self.directory.channels]
        if self._last_channel_message and self.random.random() < self.duplicate_share:
            return self._last_channel_message
        content_type = str(CONTENT_TYPES[self.count % len(CONTENT_TYPES)])
        business = self.random.choice(self.directory.businesses)
        name = self.random.choice(_NAMES)
        slot = self.count % (len(PARTNERS) + (1 if writable else 0))
        if slot == len(PARTNERS):
            thread = self.random.randrange(50)  # consumers come back to their threads
            message = ChannelMessage(
                channel_id=self.random.choice(writable), business_id=business,
                external_conversation_id=f"sim-{business}-{thread}",
                external_message_id=f"sim-{self.random.getrandbits(64):016x}",
                content_type=content_type, content=self._content(content_type), consumer_name=name)
            self._last_channel_message = message
            return message
        partner = str(PARTNERS[slot])
        known = threads.get(partner, ())
        # Half the time a consumer writes again in a conversation of theirs.
        conversation_id = self.random.choice(known) if known and self.random.random() < 0.5 else None
        return PartnerMessage(partner=partner, business_id=business, content_type=content_type,
                              content=self._content(content_type), consumer_name=name,
                              conversation_id=conversation_id)
