"""Deliveries: one row per event and webhook configuration, and everything
that moves it through its life.

::

    queued --promote--> pending --claim--> delivering --result--> delivered | failed
                           ^                   |
                           +----reschedule-----+   (a retry, or handed back unsent)
                           +----reap stalled---+   (its worker stopped beating)
    held <--pause / resume--> pending              (the configuration is paused)
    delivered | failed --resend / recover--> pending, held or queued
    delivering --drop--> (gone)                    (its configuration was deleted)

Ordered delivery (a configuration's ``ordering`` is ``"conversation"``): of
one configuration and conversation, at most one delivery is ``pending``,
``delivering`` or ``held`` at a time (the head; ``statuses.HEAD``), but for
its follower; the others wait ``queued`` in sequence order. When the head
finishes, the worker that finished it promotes the next one and claims it
at once, together with the one behind it (its follower), which it sends
once the head is delivered and hands back ``queued`` otherwise. So one
worker at a time sends a conversation's deliveries, one after the other,
and the claim itself never looks at ordering.

Modules:

- ``statuses``: the statuses and the sets the rules speak of;
- ``outbox``: a new event's deliveries, written with the change that caused it;
- ``statements``: the engine's hot-path SQL, each engine's form side by side;
- ``cycle``: the dispatcher's write cycle, one implementation per engine;
- ``leases``: workers, heartbeats, and handing back stalled work;
- ``actions``: the operator's actions (pause, resume, resend, recover, delete);
- ``reads``: deliveries and attempts as the API and the dashboard show them.
"""
