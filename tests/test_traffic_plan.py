"""The simulated traffic: reproducible, and it covers every partner and content type."""

from __future__ import annotations

from collections import Counter

import pytest

from tidings.contract import ContentType, MessagingPartner
from tidings.traffic import ChannelMessage, Directory, PartnerMessage, Reply, TrafficPlan
from tidings.traffic.runner import percentile

DIRECTORY = Directory(businesses=("a" * 24, "b" * 24), channels=(("c" * 24, False),))


def drive(seed: int, count: int) -> list:
    plan = TrafficPlan(seed, DIRECTORY)
    threads: dict[str, list[int]] = {}
    actions = []
    for i in range(count):
        action = plan.next(threads)
        actions.append(action)
        if isinstance(action, PartnerMessage) and action.conversation_id is None:
            threads.setdefault(action.partner, []).append(1000 + i)
    return actions


def test_same_seed_same_traffic():
    assert drive(5, 300) == drive(5, 300)
    assert drive(5, 300) != drive(6, 300)


def test_traffic_covers_every_partner_content_type_and_replies():
    actions = drive(1, 600)
    kinds = Counter(type(a).__name__ for a in actions)
    assert kinds["Reply"] > 100 and kinds["ChannelMessage"] > 30 and kinds["PartnerMessage"] > 200
    partners = {a.partner for a in actions if isinstance(a, PartnerMessage)}
    assert partners == set(MessagingPartner.known_values)
    content_types = {a.content_type for a in actions if isinstance(a, (PartnerMessage, ChannelMessage))}
    assert content_types == set(ContentType.known_values)
    # consumers come back to their conversations, and replies go to known ones
    assert any(a.conversation_id for a in actions if isinstance(a, PartnerMessage))
    assert all(a.conversation_id >= 1000 for a in actions if isinstance(a, Reply))


def test_custom_channel_messages_are_sometimes_resent():
    channel_messages = [a for a in drive(2, 2000) if isinstance(a, ChannelMessage)]
    ids = Counter(a.external_message_id for a in channel_messages)
    assert any(n > 1 for n in ids.values())


def test_no_channel_no_channel_message_and_no_business_is_refused():
    plan = TrafficPlan(0, Directory(businesses=("a" * 24,), channels=()))
    assert not any(isinstance(plan.next({}), ChannelMessage) for _ in range(200))
    with pytest.raises(ValueError):
        TrafficPlan(0, Directory(businesses=(), channels=()))


@pytest.mark.parametrize("values, share, expected", [
    ([], 0.5, None), ([3.0], 0.99, 3.0), ([1, 2, 3, 4], 0.5, 2), (list(range(1, 101)), 0.99, 99),
    (list(range(1, 101)), 0.5, 50),
])
def test_percentile_is_nearest_rank(values, share, expected):
    assert percentile(values, share) == expected
