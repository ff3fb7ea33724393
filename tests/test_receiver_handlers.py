"""Handlers: run from the log after the acknowledgement, at least once, with
retries and backoff, then the dead-letter list and its replay."""

from __future__ import annotations

import json
import sys
import threading

import pytest
from aiohttp import web

from tests.loopback import UvicornThread, serve_aiohttp
from tests.test_receiver_helpers import Keys, post, wait_until
from tidings.contract import dump_event
from tidings.contract.samples import SampleFactory
from tidings.receiver import EventFilter, Handlers, ReceivedEvent, append_jsonl, forward_to, retry_delay, run_command
from tidings.receiver.handler_runner import list_failures, replay_dead
from tidings.receiver.handlers import field_value, load_handlers
from tidings.apps.receiver_service import ReceiverConfig, ReceiverService


def test_backoff_doubles_and_is_capped():
    assert [retry_delay(n, base=0.5, cap=3) for n in range(1, 6)] == [0.5, 1, 2, 3, 3]
    assert retry_delay(1, base=0) == 0


def test_filters_on_type_and_fields():
    document = {"type": "message_created", "payload": {"message": {"sender_type": "Consumer", "status": "Success", "is_deleted": False},
                                                       "conversation": {"messaging_partner": "Whatsapp"}, "org_id": 4}}
    new_message = EventFilter(frozenset({"message_created"}), (("sender_type", "Consumer"), ("status", "Success")))
    assert new_message.matches("message_created", document)
    assert not new_message.matches("message_updated", document)
    assert not EventFilter(fields=(("sender_type", "User"),)).matches("message_created", document)
    assert EventFilter.parse(["message_created"], ["conversation.messaging_partner=Whatsapp", "org_id=4", "is_deleted=false"]).matches(
        "message_created", document
    )
    assert EventFilter(where=lambda d: d["payload"]["org_id"] > 3).matches("anything", document)
    assert field_value({"payload": "not an object"}, "status") is None
    with pytest.raises(ValueError):
        EventFilter.parse([], ["no-equals-sign"])


def service_with(db_url: str, keys: Keys, handlers: Handlers, **options) -> ReceiverService:
    config = ReceiverConfig(db_url=db_url, public_keys=[keys.public_pem], any_org=True, poll_interval=0.02, backoff_base=0.0, **options)
    return ReceiverService(config, handlers)


def send(server: UvicornThread, keys: Keys, body: bytes) -> None:
    answer = post(server.url + "/webhook", body, keys.headers(body))
    assert answer.status_code == 200, answer.text


def test_a_handler_that_fails_twice_runs_three_times_and_is_done(db_url):
    keys = Keys()
    handlers = Handlers()
    calls: list[int] = []

    @handlers.on("message_created", sender_type="Consumer", status="Success", name="flaky")
    def flaky(event: ReceivedEvent) -> None:
        calls.append(event.id)
        if len(calls) <= 2:
            raise RuntimeError(f"failure number {len(calls)}")

    consumer_message = SampleFactory(1).message_created(message={"sender_type": "Consumer", "status": "Success"})
    user_message = SampleFactory(2).message_created(message={"sender_type": "User", "status": "Sending"})
    svc = service_with(db_url, keys, handlers)
    with UvicornThread(svc.app) as server:
        send(server, keys, dump_event(user_message))  # filtered out: not "new message received"
        send(server, keys, dump_event(consumer_message))
        wait_until(lambda: len(calls) >= 3 and not list_failures(svc.log, dead=None))
    assert len(calls) == 3
    assert len(set(calls)) == 1  # three tries of the one matching event
    assert list_failures(svc.log, dead=None) == []


def test_a_handler_sees_each_events_sequence_number(sqlite_url):
    keys = Keys()
    handlers = Handlers()
    seen: dict[int, int | None] = {}

    @handlers.on("message_created", name="numbers")
    def numbers(event: ReceivedEvent) -> None:
        seen[event.event.payload.message.id] = event.sequence

    factory = SampleFactory(4)
    bodies = [dump_event(factory.message_created(message={"id": 100 + n})) for n in range(3)]
    svc = service_with(sqlite_url, keys, handlers)
    with UvicornThread(svc.app) as server:
        for number, body in zip([1, 2], bodies):
            answer = post(server.url + "/webhook", body, {**keys.headers(body), "X-Tidings-Sequence": str(number)})
            assert answer.status_code == 200, answer.text
        send(server, keys, bodies[2])  # no header: no number
        wait_until(lambda: len(seen) == 3)
    assert seen == {100: 1, 101: 2, 102: None}


def test_a_handler_that_always_fails_is_dead_lettered_then_replayed(db_url):
    keys = Keys()
    handlers = Handlers()
    broken = threading.Event()
    broken.set()
    calls: list[int] = []

    @handlers.on(name="fragile", max_tries=3)
    async def fragile(event: ReceivedEvent) -> None:
        calls.append(event.id)
        if broken.is_set():
            raise ConnectionError("downstream is down")

    svc = service_with(db_url, keys, handlers)
    with UvicornThread(svc.app) as server:
        send(server, keys, dump_event(SampleFactory(4).message_created()))
        (dead,) = wait_until(lambda: list_failures(svc.log, dead=True))
        assert dead.handler == "fragile"
        assert dead.attempts == 3
        assert "downstream is down" in dead.last_error
        assert len(calls) == 3

        broken.clear()  # the cause is fixed
        with svc.log.transaction() as conn:
            assert replay_dead(conn, [dead.id]) == 1
        wait_until(lambda: len(calls) == 4 and not list_failures(svc.log, dead=None))
    assert calls == [dead.event_id] * 4


def test_built_in_handlers_forward_append_and_run(sqlite_url, tmp_path):
    keys = Keys()
    forwarded: list[bytes] = []

    async def sink(request: web.Request) -> web.Response:
        forwarded.append(await request.read())
        return web.Response(text="ok")

    import asyncio

    sink_ready = threading.Event()
    sink_port: list[int] = []
    stop_sink = threading.Event()

    def serve_sink() -> None:
        async def main() -> None:
            app = web.Application()
            app.router.add_post("/hook", sink)
            async with serve_aiohttp(app) as url:
                sink_port.append(int(url.rsplit(":", 1)[1]))
                sink_ready.set()
                await asyncio.to_thread(stop_sink.wait, 60)

        asyncio.run(main())

    sink_thread = threading.Thread(target=serve_sink, daemon=True)
    sink_thread.start()
    assert sink_ready.wait(10)
    lines = tmp_path / "events.jsonl"
    copies = tmp_path / "copies"
    copies.mkdir()
    script = f"import sys, os; open(os.path.join({str(copies)!r}, os.environ['TIDINGS_EVENT_ID']), 'wb').write(sys.stdin.buffer.read())"
    handlers = Handlers()
    handlers.add(forward_to(f"http://127.0.0.1:{sink_port[0]}/hook"), name="forward")
    handlers.add(append_jsonl(lines), name="jsonl")
    handlers.add(run_command([sys.executable, "-c", script]), name="command")
    handlers.add(run_command([sys.executable, "-c", "import sys; sys.exit(3)"]), name="failing-command", max_tries=1)

    bodies = [dump_event(e) for e in SampleFactory(6).events(3)]
    svc = service_with(sqlite_url, keys, handlers)
    try:
        with UvicornThread(svc.app) as server:
            for body in bodies:
                send(server, keys, body)
            wait_until(lambda: len(forwarded) == 3 and len(list(copies.iterdir())) == 3 and len(list_failures(svc.log)) == 3)
    finally:
        stop_sink.set()
        sink_thread.join(10)
    assert forwarded == bodies
    written = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [entry["id"] for entry in written] == [1, 2, 3]
    assert [json.dumps(entry["event"], separators=(",", ":")).encode() for entry in written] == [
        json.dumps(json.loads(b), separators=(",", ":")).encode() for b in bodies
    ]
    assert sorted((copies / name).read_bytes() for name in ("1", "2", "3")) == sorted(bodies)
    assert {row.handler for row in list_failures(svc.log)} == {"failing-command"}
    assert all("exited with 3" in row.last_error for row in list_failures(svc.log))


def test_handlers_load_from_module_specs(tmp_path, monkeypatch):
    (tmp_path / "my_hooks.py").write_text(
        "from tidings.receiver import Handlers\n"
        "registry = Handlers()\n"
        "@registry.on('message_created', status='Success')\n"
        "def on_success(event):\n    pass\n"
        "def plain(event):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_handlers("my_hooks:registry")
    (handler,) = list(registry)
    assert handler.filter.fields == (("status", "Success"),)
    (plain,) = list(load_handlers("my_hooks:plain", EventFilter(frozenset({"message_updated"}))))
    assert plain.name == "my_hooks:plain" and plain.filter.event_types == {"message_updated"}
    with pytest.raises(ValueError):
        load_handlers("my_hooks")
    with pytest.raises(ValueError):
        load_handlers("my_hooks:missing")
