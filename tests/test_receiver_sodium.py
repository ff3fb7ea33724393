"""libsodium's Ed25519 on the receiver's hot path answers exactly as the contract's Verifier."""

from __future__ import annotations

import dataclasses
import time


from tests.test_receiver_helpers import Keys
from tidings.contract.signing import SignatureError, Verifier
from tidings.receiver import Receiver
from tidings.receiver.sodium import SodiumVerifier, sodium_verifier


def outcome(verifier: Verifier, body: bytes, headers: dict[str, str]) -> str:
    try:
        return verifier.verify(body, headers)
    except SignatureError as exc:
        return type(exc).__name__


def cases(keys: Keys, other: Keys, body: bytes):
    signed = keys.headers(body)
    vendor = keys.signer.vendor_header
    only_vendor = {vendor: signed[vendor]}
    only_standard = {k: v for k, v in signed.items() if k != vendor}
    yield body, signed
    yield body, only_vendor
    yield body, only_standard
    yield body + b" ", signed  # one byte more
    yield body[:-2], only_vendor  # truncated
    yield body.replace(b"123", b"124", 1), only_vendor
    yield body, other.headers(body)  # another sender's key
    yield body, {vendor: other.signer.vendor_signature(body)}
    yield body, {**only_standard, "webhook-signature": signed["webhook-signature"][:-4] + "AAA="}
    yield body, keys.headers(body, timestamp=int(time.time()) - 10_000)
    yield body, {vendor: "not base64!"}
    yield body, {}


def test_same_answers_as_the_contracts_verifier(seed_example_bytes):
    keys, other, rotated = Keys(), Keys(), Keys()
    reference = Verifier(public_keys=[rotated.private_key.public_key(), keys.private_key.public_key()])
    fast = sodium_verifier(reference)
    assert isinstance(fast, SodiumVerifier)
    results = [(outcome(reference, b, h), outcome(fast, b, h)) for b, h in cases(keys, other, seed_example_bytes)]
    assert all(a == b for a, b in results), results
    assert [a for a, _ in results][:3] == ["vendor", "vendor", "v1a"]
    assert "InvalidSignature" in [a for a, _ in results]


def test_the_receiver_checks_signatures_with_libsodium(sqlite_url, seed_example_bytes):
    keys = Keys()
    receiver = Receiver(sqlite_url, keys.verifier(), any_org=True)
    assert isinstance(receiver.verifier, SodiumVerifier)
    headers = {k.lower(): v for k, v in keys.headers(seed_example_bytes).items()}
    assert receiver.admit(seed_example_bytes, headers).kind == "event"
    # Without libsodium's keys nothing verifies: the subclass's primitive is the one in use.
    object.__setattr__(receiver.verifier, "_sodium_keys", ())
    assert receiver.admit(seed_example_bytes, headers).status == 401


def test_other_verifiers_are_left_alone():
    only_secret = Verifier(secrets=["whsec_" + "A" * 32])
    assert sodium_verifier(only_secret) is only_secret

    @dataclasses.dataclass(frozen=True)
    class Custom(Verifier):
        pass

    custom = Custom(public_keys=[Keys().private_key.public_key()])
    assert sodium_verifier(custom) is custom
