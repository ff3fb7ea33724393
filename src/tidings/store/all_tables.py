"""Imports every module that defines tables, so that ``metadata`` holds them all."""

from tidings.store import platform_tables  # noqa: F401

try:
    from tidings.store import receiver_tables  # noqa: F401
except ImportError:  # pragma: no cover - present once the receiver's tables exist
    pass
