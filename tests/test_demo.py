"""``tidings demo``: deliveries flow within 30 seconds, and both URLs it prints render real data."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.timeout(150)
TIDINGS = str(Path(sys.executable).with_name("tidings"))


def test_demo_shows_deliveries_within_30_seconds_and_both_pages_render_real_data(tmp_path):
    # No --port: the demo takes its default ports, or others when they are busy, and prints its URLs.
    started = time.monotonic()
    demo = subprocess.Popen([TIDINGS, "demo", "--duration", "45", "--data-dir",
                             str(tmp_path / "demo"), "--rate", "10"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "COLUMNS": "200"}, cwd=tmp_path)
    try:
        lines = []
        dashboard = inbox = key = None
        while not (dashboard and inbox):
            line = demo.stdout.readline()
            assert line, "the demo stopped early:\n" + "".join(lines)
            lines.append(line)
            if found := re.search(r"dashboard:\s+(\S+)\s+\(sign in with the API key (\S+)\)", line):
                dashboard, key = found.groups()
            if found := re.search(r"inbox:\s+(\S+)", line):
                inbox = found.group(1)
        with httpx.Client(timeout=10) as client:
            deadline = started + 30
            delivered = 0
            while delivered == 0:
                assert time.monotonic() < deadline, "no delivery within 30 seconds"
                time.sleep(1)
                configs = client.get(dashboard.replace("/dashboard", "/v2/webhooks"), headers={"x-APIKey": key}).json()
                for config in configs["items"]:
                    page = client.get(dashboard.replace("/dashboard", f"/v2/webhooks/{config['id']}/deliveries"),
                                      params={"status": "delivered", "per_page": "1"}, headers={"x-APIKey": key})
                    delivered += page.json()["count"]
            # the dashboard, signed in with the key the demo printed, lists real deliveries
            signed_in = client.post(f"{dashboard}/sign-in", data={"api_key": key},
                                    headers={"Origin": dashboard.rsplit("/dashboard", 1)[0]}, follow_redirects=True)
            assert signed_in.status_code == 200
            deliveries = client.get(f"{dashboard}/deliveries")
            assert deliveries.status_code == 200 and "message_created" in deliveries.text
            assert "delivered" in deliveries.text
            # the inbox, opened with the URL the demo printed (its token), shows conversations that came through
            # the webhooks; the token leaves the URL, a session cookie that is not the token takes its place
            assert "?token=" in inbox
            admin, token = inbox.split("/inbox?token=")
            assert client.get(f"{admin}/inbox").status_code == 401
            listing = client.get(inbox, follow_redirects=True)
            assert listing.status_code == 200 and str(listing.url) == f"{admin}/inbox"
            assert token not in client.cookies.values()
            conversations = client.get(f"{admin}/inbox/conversations").json()["conversations"]
            assert conversations
            assert str(conversations[0]["consumer_name"] or "") in listing.text
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(30)
        except subprocess.TimeoutExpired:
            demo.kill()
    assert demo.returncode == 0, "".join(lines) + demo.stdout.read()
