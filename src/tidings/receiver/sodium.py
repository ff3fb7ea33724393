"""Ed25519 verification through libsodium (PyNaCl) on the receiver's hot path.

The rules of verifying stay the contract's (``tidings.contract.signing.Verifier``:
headers, schemes, tolerance, rotation); this subclass replaces only the
primitive that checks one signature against the configured keys.

libsodium verifies in about half the time OpenSSL takes through
cryptography, which cuts the receiver's CPU per acknowledged event by about a
quarter (``bench/receive.py``); like cryptography, it releases the GIL during
the check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from tidings.contract.signing import Verifier


@dataclass(frozen=True)
class SodiumVerifier(Verifier):
    _sodium_keys: tuple[VerifyKey, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        super().__post_init__()
        raw = [key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) for key in self.public_keys]
        object.__setattr__(self, "_sodium_keys", tuple(VerifyKey(key) for key in raw))

    def _ed25519_verifies(self, signature: bytes, message: bytes) -> bool:
        for key in self._sodium_keys:
            try:
                key.verify(message, signature)
            except BadSignatureError:
                continue
            return True
        return False


def sodium_verifier(verifier: Verifier) -> Verifier:
    """The same verifier with libsodium's Ed25519; others (subclasses, HMAC only) are left as they are."""
    if type(verifier) is not Verifier or not verifier.public_keys:
        return verifier
    return SodiumVerifier(
        public_keys=verifier.public_keys,
        secrets=verifier.secrets,
        vendor_prefix=verifier.vendor_prefix,
        tolerance_seconds=verifier.tolerance_seconds,
    )
