"""Applying each conversation's events in ``X-Tidings-Sequence`` order: pure decisions, no I/O.

The platform numbers the events of one conversation within one webhook
configuration (an organization and an event type) 1, 2, 3... with no holes.
A receiver that sees a hole has lost an event, or not received it yet, or the
sender gave up on it. The inbox projector asks ``placement`` what to do with
each event, given the last sequence applied for its key, and ``plan_batch``
works a whole batch out: what is applied now and in which order, what is
held, and which holes are reported because they were waited on for longer
than the bound (the held events are then applied anyway: nothing is held for
ever).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

APPLY = "apply"
HOLD = "hold"
_MAX_SEQUENCE = 2**63 - 1  # a BIGINT column

# (org_id, event type, conversation id): a configuration is one per organization and event type.
SequenceKey = tuple[int, str, int]


def parse_sequence(value: str | None) -> int | None:
    """The header's value as a positive integer; anything else is ``None`` (ignored, never a refusal)."""
    if not value or not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return number if 0 < number <= _MAX_SEQUENCE else None


def placement(sequence: int | None, last_applied: int | None) -> str:
    """``APPLY`` or ``HOLD`` one event, given the last sequence applied for its key.

    Applied now: no sequence; the first event ever seen of the key (a receiver
    that starts after the platform has numbered many events must not wait);
    the next in line; an old or duplicate number (its successors are already
    applied: holding it would gain nothing). Held: a number beyond the next.
    """
    if sequence is None or last_applied is None or sequence <= last_applied + 1:
        return APPLY
    return HOLD


@dataclass(frozen=True, slots=True)
class Arrival:
    """An event of the log as the sequencer sees it."""

    event_id: int
    key: SequenceKey | None  # None: not sequenced (not a message event, or no org or conversation)
    sequence: int | None


@dataclass(frozen=True, slots=True)
class Held:
    event_id: int
    key: SequenceKey
    sequence: int
    held_since: float


@dataclass(frozen=True, slots=True)
class Gap:
    key: SequenceKey
    first_missing: int
    last_missing: int
    waiting_since: float


@dataclass
class Plan:
    applied: list[int] = field(default_factory=list)  # event ids, in the order to apply them
    held: list[Held] = field(default_factory=list)  # newly held
    released: list[int] = field(default_factory=list)  # event ids no longer held (now in ``applied``)
    last_applied: dict[SequenceKey, int] = field(default_factory=dict)  # keys whose last applied moved
    reported: list[Gap] = field(default_factory=list)  # holes given up on
    late: set[int] = field(default_factory=set)  # applied event ids whose number was already passed


def in_sequence_order(arrivals: Sequence[Arrival]) -> list[Arrival]:
    """The batch with each key's events sorted by sequence, in the places that key's events took.

    Events of other keys keep their log order; so do unsequenced ones.
    """
    places: dict[SequenceKey, list[int]] = {}
    for index, arrival in enumerate(arrivals):
        if arrival.key is not None and arrival.sequence is not None:
            places.setdefault(arrival.key, []).append(index)
    ordered = list(arrivals)
    for indices in places.values():
        for index, arrival in zip(indices, sorted((arrivals[i] for i in indices), key=lambda a: a.sequence)):
            ordered[index] = arrival
    return ordered


def holes(last_applied: int, held: Iterable[Held]) -> list[Gap]:
    """The missing numbers between ``last_applied`` and the held events, each since the first event held past it."""
    ordered = sorted(held, key=lambda h: h.sequence)
    gaps = []
    previous = last_applied
    for index, event in enumerate(ordered):
        if event.sequence > previous + 1:
            since = min(later.held_since for later in ordered[index:])
            gaps.append(Gap(event.key, previous + 1, event.sequence - 1, since))
        previous = max(previous, event.sequence)
    return gaps


def plan_batch(
    arrivals: Sequence[Arrival],
    last_applied: dict[SequenceKey, int],
    held: Iterable[Held],
    now: float,
    gap_wait: float,
) -> Plan:
    """What to do with a batch of the log, given what is applied and held (see the module's docstring)."""
    plan = Plan()
    last = dict(last_applied)
    waiting: dict[SequenceKey, list[Held]] = {}
    for event in held:
        waiting.setdefault(event.key, []).append(event)
    for events in waiting.values():
        events.sort(key=lambda h: h.sequence)
    newly_held: set[int] = set()

    def release(key: SequenceKey, up_to_gap: bool) -> None:
        """Apply the held events of ``key`` that are next in line (all of them unless ``up_to_gap``)."""
        events = waiting.get(key, [])
        while events and (not up_to_gap or events[0].sequence <= last[key] + 1):
            event = events.pop(0)
            plan.applied.append(event.event_id)
            if event.event_id in newly_held:
                plan.held = [h for h in plan.held if h.event_id != event.event_id]
            else:
                plan.released.append(event.event_id)
            last[key] = max(last[key], event.sequence)

    for arrival in in_sequence_order(arrivals):
        key, sequence = arrival.key, arrival.sequence
        if key is None or sequence is None:
            plan.applied.append(arrival.event_id)
            continue
        if placement(sequence, last.get(key)) == HOLD:
            event = Held(arrival.event_id, key, sequence, now)
            waiting.setdefault(key, []).append(event)
            waiting[key].sort(key=lambda h: h.sequence)
            plan.held.append(event)
            newly_held.add(arrival.event_id)
            continue
        plan.applied.append(arrival.event_id)
        if key in last and sequence <= last[key]:
            plan.late.add(arrival.event_id)
        last[key] = max(last.get(key, sequence), sequence)
        release(key, up_to_gap=True)

    for key, events in waiting.items():
        if events and now - min(h.held_since for h in events) > gap_wait:
            plan.reported.extend(holes(last[key], events))
            release(key, up_to_gap=False)

    plan.last_applied = {key: value for key, value in last.items() if last_applied.get(key) != value}
    return plan
