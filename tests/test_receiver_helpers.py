"""What the receiver's tests share: keys, signed requests, waiting for a condition.

No tests here; the other ``test_receiver*`` modules import from it.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable

import httpx

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
