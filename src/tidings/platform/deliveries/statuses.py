"""The statuses of a delivery and the sets the rules speak of (see the package's docstring)."""

from __future__ import annotations

__all__ = ["DELIVERED", "DELIVERING", "FAILED", "FINAL", "HEAD", "HELD", "PENDING", "QUEUED", "STATUSES",
           "UNFINISHED"]

QUEUED = "queued"  # ordered delivery: waits for the one before it in its conversation
PENDING = "pending"  # due at next_attempt_at
HELD = "held"  # its configuration is paused; pending again once it is resumed
DELIVERING = "delivering"  # claimed by a worker (worker_id), being sent
DELIVERED = "delivered"
FAILED = "failed"

STATUSES = (QUEUED, PENDING, HELD, DELIVERING, DELIVERED, FAILED)  # in the order of a delivery's life
FINAL = (DELIVERED, FAILED)
UNFINISHED = (QUEUED, PENDING, HELD, DELIVERING)
HEAD = (PENDING, DELIVERING, HELD)  # a conversation's one delivery that may be sent (ordered delivery)
