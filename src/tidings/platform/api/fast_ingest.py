"""The platform's HTTP protocol: uvicorn's own, with custom-channel ingestion
answered without ASGI (a ``tidings.serving.FastPathProtocol``).

    uvicorn.run(create_app(context), http=IngestHttpProtocol)   # or http=http_protocol() from app.py

Only the plain case of ``POST /v2/custom-channels/{channel_id}/messages``
skips FastAPI: an organization key already in ``PlatformContext.known_keys``,
no query string, a JSON body that ``IncomingMessageIn`` accepts. Its body is
parsed and validated as FastAPI would (``json.loads``, then the same pydantic
model) and handed to the ``IngestQueue``. Any other request, and any such
request the fast path does not take (unknown or PROVIDER key, ``org_id``,
another content type, a body that does not validate, a channel id FastAPI
refuses), goes to the FastAPI app, with the body already read if it was: its
answers, errors included, stay FastAPI's, and the route stays declared there
for the OpenAPI document. Why: FastAPI's routing, dependency injection and
middleware cost more than the batched writer itself (``bench/ingest.py``);
the answers are the same bytes either way (``tests/test_ingest_fast_path.py``).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

from pydantic import ValidationError

from tidings.platform.api.auth import ORG_KEY, hash_api_key
from tidings.platform.api.models import IncomingMessageIn, storable
from tidings.platform.conversations import MessagingError, NotFound, Refused
from tidings.platform.ingestion import ChannelMessage, IncomingMessage, IngestResult
from tidings.serving.fast_path import FastPathProtocol, http_response
from tidings.serving.limits import DEFAULT_LIMITS

INGEST_PATH = re.compile(r"/v2/custom-channels/([^/]+)/messages")
MAX_CHANNEL_ID = 24  # the route's Path(max_length=24)
# Larger bodies (a message's content is at most 100,000 characters), when
# --max-body-bytes allows them, go to FastAPI, which reads them with flow control.
MAX_FAST_BODY = DEFAULT_LIMITS.max_body_bytes
TOO_DEEP = b'{"detail":"the JSON body is nested too deeply"}'

_INTERNAL_ERROR = b"Internal Server Error"


@dataclass(frozen=True)
class FastRequest:
    """What the fast path needs of a request's head."""

    channel_id: str
    api_key: str


def fast_request(scope: dict) -> FastRequest | None:
    """The request, if its head is one the fast path takes (pure).

    Only ``POST /v2/custom-channels/{id}/messages`` without a query string,
    with one non-empty ``x-APIKey``, one ``Content-Type: application/json``
    and one ``Content-Length`` within ``MAX_FAST_BODY``; anything unusual
    (a chunked body, repeated headers, a channel id FastAPI would refuse)
    is left to FastAPI.
    """
    if scope["method"] != "POST" or scope["query_string"] or scope["root_path"]:
        return None
    matched = INGEST_PATH.fullmatch(scope["path"])
    if matched is None:
        return None
    channel_id = matched.group(1)
    if len(channel_id) > MAX_CHANNEL_ID:
        return None
    try:
        storable(channel_id)
    except ValueError:
        return None
    api_key = content_type = length = None
    for name, value in scope["headers"]:
        if name == b"x-apikey":
            if api_key is not None:
                return None
            api_key = value
        elif name == b"content-type":
            if content_type is not None:
                return None
            content_type = value
        elif name == b"content-length":
            if length is not None:
                return None
            length = value
        elif name == b"transfer-encoding":
            return None
    if not api_key or content_type is None or not _is_json(content_type) or length is None:
        return None
    if not length.isdigit() or int(length) > MAX_FAST_BODY:
        return None
    return FastRequest(channel_id, api_key.decode("latin-1"))


def _is_json(content_type: bytes) -> bool:
    return content_type.partition(b";")[0].strip().lower() == b"application/json"


class NestedTooDeeply(ValueError):
    """A JSON body nested deeper than the parser's recursion allows."""


def parse_message(body: bytes) -> IncomingMessage | None:
    """The message, if FastAPI would accept the body as it is (pure); raises
    ``NestedTooDeeply`` for a body nested past the recursion limit."""
    try:
        data = json.loads(body)  # as Starlette's Request.json()
        valid = IncomingMessageIn.model_validate(data)
    except RecursionError:
        raise NestedTooDeeply("the JSON body is nested too deeply") from None
    except (ValueError, ValidationError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return IncomingMessage(**valid.model_dump())


def refusal_status(error: MessagingError) -> int:
    """As ``conversation_routes.refusal``."""
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, Refused):
        return 409
    return 422


def answer_of(outcome: IngestResult | BaseException) -> tuple[int, bytes, bytes]:
    """``(status, content type, body)`` as FastAPI renders the route's answer (pure)."""
    if isinstance(outcome, IngestResult):
        body = b'{"message_id":%d,"conversation_id":%d,"duplicate":%s}' % (
            outcome.message_id, outcome.conversation_id, b"true" if outcome.duplicate else b"false")
        return 200, b"application/json", body
    if isinstance(outcome, NestedTooDeeply):
        return 400, b"application/json", TOO_DEEP
    if isinstance(outcome, MessagingError):  # FastAPI's HTTPException handler, a JSONResponse
        body = json.dumps({"detail": outcome.reason}, ensure_ascii=False, allow_nan=False, indent=None,
                          separators=(",", ":")).encode("utf-8")
        return refusal_status(outcome), b"application/json", body
    return 500, b"text/plain; charset=utf-8", _INTERNAL_ERROR  # Starlette's ServerErrorMiddleware


def find_platform_app(app):
    """The platform's FastAPI app inside uvicorn's wrappers, if the app is one."""
    for _ in range(10):
        state = getattr(app, "state", None)
        if state is not None and hasattr(state, "ingest_queue") and hasattr(state, "platform"):
            return app
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class IngestHttpProtocol(FastPathProtocol):
    """``uvicorn.run(app, http=IngestHttpProtocol)`` with ``create_app(...)`` as the app."""

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        self.platform_app = find_platform_app(config.loaded_app)
        self.fast_org_id: int | None = None
        self.fast_channel_id: str | None = None

    def take(self, cycle) -> bool:
        if self.platform_app is None:
            return False
        request = fast_request(cycle.scope)
        org_id = self._org_of(request.api_key) if request is not None else None
        if org_id is None:
            return False
        self.fast_org_id, self.fast_channel_id = org_id, request.channel_id
        return True

    def _org_of(self, api_key: str) -> int | None:
        """The organization of a known organization key; ``None`` leaves the request to FastAPI
        (which looks an unknown key up, and remembers it for the next request)."""
        row = self.platform_app.state.platform.known_keys.get(("key", hash_api_key(api_key)))
        if row is None or row.kind != ORG_KEY:
            return None
        return row.org_id

    def submit(self, cycle) -> asyncio.Future | None:
        try:
            incoming = parse_message(bytes(cycle.body))
        except NestedTooDeeply as error:  # answered here: FastAPI's parser would recurse as deep again
            future = self.loop.create_future()
            future.set_exception(error)
            return future
        if incoming is None:  # FastAPI answers, with its own words for what is wrong
            return None
        queue = self.platform_app.state.ingest_queue
        return queue.submit(ChannelMessage(self.fast_org_id, self.fast_channel_id, incoming))

    def render(self, cycle, outcome: object) -> tuple[bytes, bool]:
        if isinstance(outcome, BaseException) and not isinstance(outcome, (MessagingError, NestedTooDeeply)):
            raise outcome  # the base answers 500 and closes, as uvicorn does when an app raises
        status, content_type, body = answer_of(outcome)
        headers = [(b"content-length", b"%d" % len(body)), (b"content-type", content_type)]
        return http_response(status, headers, body, self.server_state.default_headers, cycle.keep_alive), False
