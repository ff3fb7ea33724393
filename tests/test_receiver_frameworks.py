"""Each framework entry point, through a real server on loopback: the raw ASGI
app, the FastAPI router, and the synchronous entry point in a Flask view."""

from __future__ import annotations

import threading

import httpx
from fastapi import FastAPI
from flask import Flask, Response, request
from werkzeug.serving import make_server

from tests.loopback import UvicornThread
from tests.test_receiver_helpers import Keys, post
from tidings.receiver import EventLog, Receiver, ReceiverApp, webhook_router


def test_asgi_app(sqlite_url, seed_example_bytes):
    keys = Keys()
    log = EventLog(sqlite_url)
    receiver = Receiver(log, keys.verifier(), any_org=True)
    with UvicornThread(ReceiverApp(receiver, path="/hooks/tidings")) as server:
        url = server.url + "/hooks/tidings"
        assert post(url, seed_example_bytes, keys.headers(seed_example_bytes)).status_code == 200
        assert post(url, seed_example_bytes, {}).status_code == 401
        assert httpx.get(url).status_code == 405
        assert post(server.url + "/elsewhere", b"{}").status_code == 404
    assert receiver.committer.closed  # the lifespan's shutdown drained and stopped the writer
    assert [e.body for e in log.events_after()] == [seed_example_bytes]


def test_fastapi_router(sqlite_url, seed_example_bytes):
    keys = Keys()
    log = EventLog(sqlite_url)
    receiver = Receiver(log, keys.verifier(), any_org=True, url_secret="tok")
    app = FastAPI()
    app.include_router(webhook_router(receiver, "/webhook"))

    @app.get("/other")
    def other() -> dict:
        return {"mine": True}

    with UvicornThread(app) as server:
        assert post(server.url + "/webhook/tok", seed_example_bytes, keys.headers(seed_example_bytes)).status_code == 200
        assert post(server.url + "/webhook?secret=tok", seed_example_bytes, keys.headers(seed_example_bytes)).status_code == 200
        refused = post(server.url + "/webhook", seed_example_bytes, keys.headers(seed_example_bytes))
        assert refused.status_code == 401
        assert httpx.get(server.url + "/other").json() == {"mine": True}
    assert receiver.committer.closed
    assert len(log.events_after()) == 2


def test_sync_entry_point_in_a_flask_view(sqlite_url, seed_example_bytes):
    keys = Keys()
    log = EventLog(sqlite_url)
    receiver = Receiver(log, keys.verifier(), any_org=True)
    app = Flask(__name__)

    @app.post("/webhook")
    def webhook() -> Response:
        answer = receiver.handle_sync(request.get_data(), request.headers.items(), request.query_string.decode())
        return Response(answer.body, status=answer.status, headers=dict(answer.headers), content_type="application/json")

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/webhook"
        first = post(url, seed_example_bytes, keys.headers(seed_example_bytes, msg_id="flask-1"))
        assert (first.status_code, first.json()) == (200, {"status": "stored"})
        assert post(url, seed_example_bytes, keys.headers(seed_example_bytes, msg_id="flask-1")).status_code == 200
        assert post(url, seed_example_bytes + b" ", keys.headers(seed_example_bytes)).status_code == 401
        quarantined = post(url, b"[1, 2]", keys.headers(b"[1, 2]"))
        assert quarantined.json() == {"status": "quarantined"}
    finally:
        server.shutdown()
        thread.join(10)
        receiver.close()
    assert [e.dedupe_key for e in log.events_after()] == ["id:flask-1"]
    assert [q.body for q in log.quarantined()] == [b"[1, 2]"]
