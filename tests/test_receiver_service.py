"""``tidings receive`` as users run it: a real process, handlers named on the
command line, the inbox and the handlers served by the follower process."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import httpx

from tests.loopback import base_url, command_on_socket, loopback_socket, port_of
from tests.test_receiver_helpers import Keys, wait_until
from tidings.contract import dump_event
from tidings.contract.samples import SampleFactory


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
    listening = loopback_socket()
    command, options = command_on_socket(listening, [
        "receive", "--db", f"sqlite:///{tmp_path / 'receiver.db'}", "--public-key", str(key_file),
        "--port", str(port_of(listening)), "--workers", "2", "--handler", "shop_hooks:remember", "--jsonl", str(jsonl),
        "--on", "message_created", "--where", "sender_type=Consumer", "--where", "status=Success",
    ])
    options["env"]["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{options['env']['PYTHONPATH']}"
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **options)
    try:
        base = base_url(listening)

        def up():
            try:
                return httpx.get(base + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=30)
        factory = SampleFactory(51)
        consumer = factory.message_created(message={"sender_type": "Consumer", "status": "Success"})
        user = factory.message_created(message={"sender_type": "User", "status": "Sending"})
        for event in (consumer, user):
            body = dump_event(event)
            assert httpx.post(base + "/webhook", content=body, headers=keys.headers(body)).status_code == 200

        conversations = wait_until(lambda: len(httpx.get(base + "/inbox/conversations").json()["conversations"]) == 2 and
                                   httpx.get(base + "/inbox/conversations").json()["conversations"])
        assert {c["id"] for c in conversations} == {consumer.payload.conversation.id, user.payload.conversation.id}
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
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        listening.close()
