"""``tidings receive`` as users run it: a real process, handlers named on the
command line, the inbox and the handlers served by the follower process, the
read side on the admin listener only. The command binds its own sockets
(``--port 0 --admin-port 0``) and prints where it listens."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time

import httpx

from tests.test_receiver_helpers import Keys, wait_until
from tidings.contract import dump_event
from tidings.contract.samples import SampleFactory

RECEIVE = [sys.executable, "-c", "from tidings.cli import main; main()", "receive"]


def start_up_lines(server: subprocess.Popen, count: int, timeout: float = 30.0) -> list[str]:
    """The first ``count`` lines the command writes to standard error, within ``timeout`` seconds."""
    selector = selectors.DefaultSelector()
    selector.register(server.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buffer, lines = b"", []
    while len(lines) < count:
        left = deadline - time.monotonic()
        if left <= 0 or server.poll() is not None:
            raise AssertionError(f"the receiver did not start: {buffer.decode(errors='replace')}")
        if selector.select(left):
            chunk = os.read(server.stderr.fileno(), 4096)
            buffer += chunk
            *complete, rest = buffer.split(b"\n")
            lines += [line.decode() for line in complete]
            buffer = rest
    return lines


def answer_of(method: str, url: str, **options) -> httpx.Response | None:
    """The answer, or None while the server that holds the socket has not started serving it yet."""
    try:
        return httpx.request(method, url, timeout=2, **options)
    except httpx.HTTPError:
        return None


def stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def test_the_command_stores_projects_and_runs_handlers(tmp_path):
    keys = Keys()
    key_file = tmp_path / "sender.pub.pem"
    key_file.write_text(keys.public_pem)
    (tmp_path / "shop_hooks.py").write_text(
        "import json, os\n"
        f"OUT = {str(tmp_path / 'seen.txt')!r}\n"
        "def remember(event):\n"
        "    with open(OUT, 'a') as out:\n"
        "        out.write(json.dumps({'id': event.id, 'pid': os.getpid()}) + '\\n')\n"
    )
    jsonl = tmp_path / "new-messages.jsonl"
    command = [
        *RECEIVE, "--db", f"sqlite:///{tmp_path / 'receiver.db'}", "--public-key", str(key_file), "--any-org",
        "--port", "0", "--admin-port", "0",
        "--workers", "2", "--handler", "shop_hooks:remember", "--jsonl", str(jsonl),
        "--on", "message_created", "--where", "sender_type=Consumer", "--where", "status=Success",
    ]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("TIDINGS_ADMIN_TOKEN", None)
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        receiving, admin_line = start_up_lines(server, 2)
        base = re.search(r"receiving on (http://\S+)/webhook for every organization", receiving).group(1)
        sign_in = re.search(r"admin \(inbox, read API\): (http://\S+/inbox\?token=\S+)", admin_line).group(1)
        admin, token = sign_in.split("/inbox?token=")
        bearer = {"authorization": f"Bearer {token}"}

        wait_until(lambda: (answer := answer_of("GET", base + "/health")) and answer.status_code == 200, timeout=30)
        factory = SampleFactory(51)
        consumer = factory.message_created(message={"sender_type": "Consumer", "status": "Success"})
        user = factory.message_created(message={"sender_type": "User", "status": "Sending"})
        for event in (consumer, user):
            body = dump_event(event)
            assert httpx.post(base + "/webhook", content=body, headers=keys.headers(body)).status_code == 200

        def listed():
            answer = answer_of("GET", admin + "/inbox/conversations", headers=bearer)
            return answer is not None and answer.status_code == 200 and len(answer.json()["conversations"]) == 2 and answer.json()["conversations"]

        conversations = wait_until(listed)
        assert {c["id"] for c in conversations} == {consumer.payload.conversation.id, user.payload.conversation.id}
        # The read side is on the admin listener only, and only with the token.
        assert httpx.get(base + "/inbox/conversations").status_code == 404
        assert httpx.get(admin + "/inbox/conversations").status_code == 401
        # --on/--where filter the plain function and the built-in: only the consumer's new message.
        lines = wait_until(lambda: jsonl.exists() and jsonl.read_text().splitlines())
        assert [json.loads(line)["event"]["payload"]["message"]["id"] for line in lines] == [consumer.payload.message.id]
        seen = wait_until(lambda: (tmp_path / "seen.txt").exists() and (tmp_path / "seen.txt").read_text().splitlines())
        assert [json.loads(line)["id"] for line in seen] == [1]
        runner = json.loads(seen[0])["pid"]
        assert runner != server.pid
        # The follower is a fork of the supervisor (same command line); uvicorn's workers are spawned.
        assert open(f"/proc/{runner}/cmdline", "rb").read() == open(f"/proc/{server.pid}/cmdline", "rb").read()
    finally:
        stop(server)


def test_the_command_refuses_to_start_without_saying_which_organizations(tmp_path):
    keys = Keys()
    key_file = tmp_path / "sender.pub.pem"
    key_file.write_text(keys.public_pem)
    result = subprocess.run([*RECEIVE, "--db", f"sqlite:///{tmp_path / 'r.db'}", "--public-key", str(key_file)],
                            capture_output=True, timeout=60)
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, lines
    assert "--org-id" in lines[0] and "--any-org" in lines[0]
    assert not (tmp_path / "r.db").exists()  # nothing was started


def test_a_token_given_in_the_environment_is_used_and_not_printed(tmp_path):
    keys = Keys()
    key_file = tmp_path / "sender.pub.pem"
    key_file.write_text(keys.public_pem)
    token = "an-operator-chosen-token-42"
    server = subprocess.Popen(
        [*RECEIVE, "--db", f"sqlite:///{tmp_path / 'r.db'}", "--public-key", str(key_file), "--org-id", "1",
         "--port", "0", "--admin-port", "0"],
        env={**os.environ, "TIDINGS_ADMIN_TOKEN": token}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        receiving, admin_line = start_up_lines(server, 2)
        assert "for organization 1" in receiving
        assert token not in admin_line
        admin = re.search(r"(http://[^/\s]+)/inbox\?token=", admin_line).group(1)
        answer = wait_until(lambda: answer_of("GET", admin + "/events", headers={"authorization": f"Bearer {token}"}),
                            timeout=30)
        assert answer.status_code == 200 and answer.json() == {"events": [], "next_after": 0}
    finally:
        stop(server)
