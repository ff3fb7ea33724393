"""The browser: Debian's chromium, driven by Playwright, headless.

Playwright's own browser downloads are never used. Without ``/usr/bin/chromium``
the browser tests skip, with the reason; with ``TIDINGS_REQUIRE_BROWSER=1`` (CI)
its absence is a failure. ``scripts/install-browser.sh`` installs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
REQUIRE_BROWSER = os.environ.get("TIDINGS_REQUIRE_BROWSER") == "1"
WAIT_MS = 10_000  # the longest any expectation waits: live updates arrive within a second or two


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


# Module scope, not session: while Playwright's sync API is running, its event
# loop is the running loop of this thread, and the suite's async tests that
# come after the browser tests could not run.
@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: run scripts/install-browser.sh to run the browser tests"
        if REQUIRE_BROWSER:
            pytest.fail(reason + " (TIDINGS_REQUIRE_BROWSER=1)")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


def is_policy_violation(text: str) -> bool:
    """Whether a console message is chromium's report of a Content-Security-Policy violation."""
    return "Content Security Policy" in text


@pytest.fixture
def page(browser):
    """A tab; the test fails if the page logs a Content-Security-Policy violation (the pages must work under it)."""
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    violations: list[str] = []
    tab.on("console", lambda message: is_policy_violation(message.text) and violations.append(message.text))
    try:
        yield tab
    finally:
        context.close()
    assert violations == [], f"Content-Security-Policy violations: {violations}"
