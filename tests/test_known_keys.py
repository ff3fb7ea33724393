"""The cache of API keys found recently: hits only, for a bounded time."""

from __future__ import annotations

import time

from tidings.platform.api.context import KnownKeys


def test_a_key_is_remembered_until_its_time_runs_out():
    keys = KnownKeys(ttl=0.05)
    assert keys.get(("key", "h")) is None
    keys.put(("key", "h"), "row")
    assert keys.get(("key", "h")) == "row"
    time.sleep(0.06)
    assert keys.get(("key", "h")) is None


def test_a_full_cache_starts_again_rather_than_growing():
    keys = KnownKeys(size=3)
    for n in range(3):
        keys.put(("key", n), n)
    keys.put(("key", 3), 3)
    assert keys.get(("key", 3)) == 3
    assert [keys.get(("key", n)) for n in range(3)] == [None, None, None]
