"""tidings: both ends of a conversations webhook.

- ``tidings.contract``: the wire format (events, dates, signatures), no I/O.
- ``tidings.store``: the database, for both ends.
- ``tidings.platform``: the sending side (API, outbox, dispatcher).
- ``tidings.receiver``: the receiving side (verify, store, ack, inbox, handlers).
"""

__version__ = "0.1.0"
