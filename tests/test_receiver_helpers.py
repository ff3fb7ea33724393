"""What the receiver's tests share: keys, signed requests, waiting for a condition.

No tests here; the other ``test_receiver*`` modules import from it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable

import httpx
import uvicorn

from tidings.contract.signing import Signer, Verifier, generate_private_key, public_key_pem


class Keys:
    """A sender's key pair: sign bodies, verify them, hand out the public PEM."""

    def __init__(self) -> None:
        self.private_key = generate_private_key()
        self.signer = Signer(self.private_key)
        self.public_pem = public_key_pem(self.private_key.public_key()).decode()

    def verifier(self, **kwargs) -> Verifier:
        return Verifier(public_keys=[self.private_key.public_key()], **kwargs)

    def headers(self, body: bytes, msg_id: str | None = None, timestamp: int | None = None) -> dict[str, str]:
        """All signature headers, as the platform sends them."""
        return {"content-type": "application/json", **self.signer.sign(body, msg_id=msg_id or f"msg_{uuid.uuid4().hex}", timestamp=timestamp)}

    def vendor_headers(self, body: bytes) -> dict[str, str]:
        """Only the vendor header, as the seed's platform sends it: no webhook-id."""
        return {"content-type": "application/json", self.signer.vendor_header: self.signer.vendor_signature(body)}


ADMIN_TOKEN = "test-admin-token-0123456789"


def free_port() -> int:
    """A port free a moment ago, for a server in another process that cannot be handed a socket."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def loopback_socket() -> socket.socket:
    """A listening socket on 127.0.0.1 with a port the system chose, kept by the server it is given to."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


class ServerThread:
    """An ASGI app served by uvicorn in a thread, with its lifespan, on ``sock`` (or a loopback socket of its own)."""

    def __init__(self, app, lifespan: str = "on", sock: socket.socket | None = None, **options) -> None:
        self.socket = sock or loopback_socket()
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(app, lifespan=lifespan, log_level="warning", access_log=False, **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()


def admin_for(sock: socket.socket, token: str = ADMIN_TOKEN, **options):
    """The ``AdminListener`` of an admin app served on ``sock``."""
    from tidings.apps.receiver_admin import AdminListener

    return AdminListener(port=sock.getsockname()[1], token=token, token_given=True, **options)


class ServedReceiver:
    """A ``ReceiverService`` on two loopback sockets: the public listener (webhook, /health,
    with the service's lifespan) and the admin listener (inbox, read API) behind ``ADMIN_TOKEN``."""

    def __init__(self, config, handlers=None, **public_options) -> None:
        from tidings.apps.receiver_service import ReceiverService

        self.admin_socket = loopback_socket()
        self.admin = admin_for(self.admin_socket)
        self.service = ReceiverService(config, handlers, admin=self.admin)
        self.public = ServerThread(self.service.app, **public_options)
        self.admin_server = ServerThread(self.service.admin_app, lifespan="off", sock=self.admin_socket)

    @property
    def url(self) -> str:
        return self.public.url

    @property
    def admin_url(self) -> str:
        return self.admin_server.url

    def admin_client(self) -> httpx.Client:
        """A client of the read API, with the bearer token."""
        return httpx.Client(base_url=self.admin_url, timeout=10, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})

    def __enter__(self) -> ServedReceiver:
        self.public.__enter__()
        try:
            self.admin_server.__enter__()
        except BaseException:
            self.public.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *_exc) -> None:
        self.admin_server.__exit__(None, None, None)
        self.public.__exit__(None, None, None)


def wait_until(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02):
    """Poll ``condition`` until it is truthy; its value, or an AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.post(url, content=body, headers=headers or {})


@contextlib.contextmanager
def client(base_url: str):
    with httpx.Client(base_url=base_url, timeout=10) as session:
        yield session
