"""Imports every module that defines tables, so that ``metadata`` holds them all."""

from tidings.store import platform_tables, receiver_tables  # noqa: F401
