"""The receiving side: what a subscriber runs to take in ``message_created``
and ``message_updated`` events.

Library::

    from tidings.contract.signing import Verifier, load_public_key
    from tidings.receiver import Receiver, ReceiverApp

    receiver = Receiver("sqlite:///events.db", Verifier(public_keys=[load_public_key(pem)]), org_ids=[1])
    app = receiver_app(receiver, path="/webhook")           # ASGI: the public listener (webhook, /health)
    # or: fastapi_app.include_router(webhook_router(receiver))
    # or, in a Flask / Django view: answer = receiver.handle_sync(body, headers, query)

The private side (the inbox and the read API, behind a token, on a listener
of its own) is assembled above the web pages: ``admin_app(receiver,
AdminListener(port=8001))`` in ``tidings.apps.receiver_admin``.

Service: ``tidings receive --db URL --public-key PEM --org-id N`` (``tidings.apps.receiver_service``).
"""

from tidings.receiver.answers import Answer
from tidings.receiver.asgi import ReceiverApp, receiver_app
from tidings.receiver.builtin_handlers import HandlerFailed, append_jsonl, forward_to, run_command
from tidings.receiver.core import Receiver
from tidings.receiver.dedupe import dedupe_key
from tidings.receiver.handlers import EventFilter, Handler, Handlers, ReceivedEvent, retry_delay
from tidings.receiver.log import EventLog, StoredEvent

__all__ = [
    "Answer",
    "EventFilter",
    "EventLog",
    "Handler",
    "HandlerFailed",
    "Handlers",
    "ReceivedEvent",
    "Receiver",
    "ReceiverApp",
    "StoredEvent",
    "append_jsonl",
    "dedupe_key",
    "forward_to",
    "receiver_app",
    "retry_delay",
    "run_command",
    "webhook_router",
]


def __getattr__(name: str):
    # FastAPI is imported only by those who use the router.
    if name == "webhook_router":
        from tidings.receiver.fastapi_router import webhook_router

        return webhook_router
    raise AttributeError(name)
