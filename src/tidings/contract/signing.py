"""Signing and verifying webhook requests: Ed25519 and Standard Webhooks.

Every request carries three signatures of the same body (CONTRACT.md, section 2):

- ``X-Tidings-Signature-v1`` (the vendor header; the prefix is configurable):
  base64 Ed25519 over the exact raw body. It covers no timestamp.
- ``webhook-signature`` (Standard Webhooks), over ``{webhook-id}.{webhook-timestamp}.{body}``:
  ``v1a,<base64>`` is Ed25519 with the platform's key, then one ``v1,<base64>``
  HMAC-SHA256 per secret of the webhook configuration (two while a secret rotates).

Keys travel as PEM (PKCS#8 for the private key, SubjectPublicKeyInfo for the
public one) or as compact strings: ``whsk_`` / ``whpk_`` + base64 of the raw
32 bytes. Secrets are ``whsec_`` + base64, as in Standard Webhooks.

Exceptions::

    SignatureError
     +-- MissingSignature         no signature this verifier could check
     +-- MalformedSignature       bad base64, bad header syntax, bad timestamp
     +-- InvalidSignature         well-formed, but no configured key or secret verifies it
     +-- TimestampOutOfTolerance  authentic, but signed too long ago (or in the future)
     +-- KeyFormatError           a key or secret that cannot be read

A verifier that holds the configuration's secret checks the HMAC ``v1``
first, about ten times cheaper than an Ed25519 verification. Keys and
secrets are decoded once, when the ``Verifier`` is built; no regex is used.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import os
import secrets as _random
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tidings.contract.headers import DEFAULT_VENDOR_PREFIX, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, VendorHeaders

__all__ = [
    "DEFAULT_TOLERANCE_SECONDS",
    "DEFAULT_VENDOR_PREFIX",
    "ID_HEADER",
    "PRIVATE_KEY_FILENAME",
    "PRIVATE_KEY_PREFIX",
    "PUBLIC_KEY_FILENAME",
    "PUBLIC_KEY_PREFIX",
    "SECRET_PREFIX",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "InvalidSignature",
    "KeyFormatError",
    "MalformedSignature",
    "MissingSignature",
    "SignatureError",
    "Signer",
    "TimestampOutOfTolerance",
    "Verifier",
    "generate_private_key",
    "generate_secret",
    "load_private_key",
    "load_public_key",
    "private_key_pem",
    "private_key_whsk",
    "public_key_pem",
    "public_key_whpk",
    "save_key_pair",
    "secret_bytes",
]

DEFAULT_TOLERANCE_SECONDS = 300

SECRET_PREFIX = "whsec_"
PRIVATE_KEY_PREFIX = "whsk_"
PUBLIC_KEY_PREFIX = "whpk_"
PRIVATE_KEY_FILENAME = "signing-key.pem"
PUBLIC_KEY_FILENAME = "signing-key.pub.pem"

VENDOR = "vendor"
V1A = "v1a"
V1 = "v1"

_ED25519_SIGNATURE_SIZE = 64
_HMAC_SIZE = 32
_RAW_KEY_SIZE = 32
_SECRET_SIZE = 24
_MAX_TIMESTAMP_DIGITS = 15
_HTTP_WHITESPACE = " \t"


class SignatureError(Exception):
    """Base of every signing and verifying failure; ``str()`` is one sentence."""


class MissingSignature(SignatureError):
    """No signature header that the configured keys or secrets could check."""


class MalformedSignature(SignatureError):
    """A signature or timestamp header that does not even parse."""


class InvalidSignature(SignatureError):
    """Well-formed signatures, none of which verifies with a configured key or secret."""


class TimestampOutOfTolerance(SignatureError):
    """An authentic timestamp too far from now: a replay, or a clock that is off."""


class KeyFormatError(SignatureError):
    """A key or a secret that cannot be read."""


# ---------------------------------------------------------------- base64


def _b64encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _strict_b64decode(text: str) -> bytes | None:
    """The bytes of canonical, padded base64 ``text``; ``None`` for anything else.

    Strict decoding alone still accepts non-zero unused bits (``QR==`` decodes
    like ``QQ==``), so the text must also be exactly what re-encoding gives.
    """
    try:
        data = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    if _b64encode(data) != text:
        return None
    return data


# ---------------------------------------------------------------- keys and secrets


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def generate_secret() -> str:
    """A fresh ``whsec_`` secret: 24 random bytes, as Standard Webhooks recommends."""
    return SECRET_PREFIX + _b64encode(_random.token_bytes(_SECRET_SIZE))


def _as_text(data: str | bytes, what: str) -> str:
    if isinstance(data, bytes):
        try:
            return data.decode("ascii").strip()
        except UnicodeDecodeError:
            raise KeyFormatError(f"The {what} is not text (PEM or {_prefix_of(what)} string).") from None
    if isinstance(data, str):
        return data.strip()
    raise TypeError(f"a {what} is given as str or bytes, not {type(data).__name__}")


def _prefix_of(what: str) -> str:
    return PRIVATE_KEY_PREFIX if what == "private key" else PUBLIC_KEY_PREFIX


def _raw_key_bytes(text: str, prefix: str, what: str) -> bytes:
    raw = _strict_b64decode(text[len(prefix) :])
    if raw is None or len(raw) != _RAW_KEY_SIZE:
        raise KeyFormatError(
            f"The {what} {prefix}... is not canonical base64 of {_RAW_KEY_SIZE} raw Ed25519 key bytes."
        )
    return raw


def load_private_key(data: str | bytes) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PKCS#8 PEM (unencrypted) or a ``whsk_`` string."""
    text = _as_text(data, "private key")
    if text.startswith(PRIVATE_KEY_PREFIX):
        return Ed25519PrivateKey.from_private_bytes(_raw_key_bytes(text, PRIVATE_KEY_PREFIX, "private key"))
    if text.startswith(PUBLIC_KEY_PREFIX) or "PUBLIC KEY-----" in text:
        raise KeyFormatError("This is a public key; signing needs the private key.")
    if not text.startswith("-----BEGIN"):
        raise KeyFormatError("The private key is neither a PEM private key nor a whsk_ string.")
    try:
        key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
    except TypeError:
        raise KeyFormatError("The private key PEM is encrypted; give an unencrypted PKCS#8 key.") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFormatError("The private key PEM cannot be read: it is damaged or not PKCS#8.") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFormatError(f"The private key is not Ed25519 but {_key_kind(key)}.")
    return key


def load_public_key(data: str | bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from a SubjectPublicKeyInfo PEM or a ``whpk_`` string."""
    text = _as_text(data, "public key")
    if text.startswith(PUBLIC_KEY_PREFIX):
        return Ed25519PublicKey.from_public_bytes(_raw_key_bytes(text, PUBLIC_KEY_PREFIX, "public key"))
    if text.startswith(PRIVATE_KEY_PREFIX) or "PRIVATE KEY-----" in text:
        raise KeyFormatError("This is a private key; verifying needs the public key only.")
    if not text.startswith("-----BEGIN"):
        raise KeyFormatError("The public key is neither a PEM public key nor a whpk_ string.")
    try:
        key = serialization.load_pem_public_key(text.encode("ascii"))
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFormatError("The public key PEM cannot be read: it is damaged or not SubjectPublicKeyInfo.") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFormatError(f"The public key is not Ed25519 but {_key_kind(key)}.")
    return key


def _key_kind(key: object) -> str:
    return type(key).__name__.lstrip("_")


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def private_key_whsk(key: Ed25519PrivateKey) -> str:
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return PRIVATE_KEY_PREFIX + _b64encode(raw)


def public_key_whpk(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + _b64encode(raw)


def save_key_pair(key: Ed25519PrivateKey, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``signing-key.pem`` (mode 0600) and ``signing-key.pub.pem``; return both paths.

    Creates the directory if needed and replaces existing files (callers decide
    whether overwriting is allowed). Each file is written to a temporary file
    created with its final mode and then renamed, so the private key is never
    readable by others, not even for a moment, and never left half-written.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    private_path = folder / PRIVATE_KEY_FILENAME
    public_path = folder / PUBLIC_KEY_FILENAME
    _write_atomically(private_path, private_key_pem(key), mode=0o600)
    _write_atomically(public_path, public_key_pem(key.public_key()), mode=0o644)
    return private_path, public_path


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def secret_bytes(secret: str) -> bytes:
    """The key bytes of a ``whsec_`` secret (the prefix is optional, as in Standard Webhooks).

    Missing ``=`` padding is accepted like Standard Webhooks does; any other
    deviation from base64 (stray characters, whitespace inside) is refused.
    """
    if not isinstance(secret, str):
        raise TypeError(f"a secret is given as str, not {type(secret).__name__}")
    return _secret_bytes(secret)


@functools.lru_cache(maxsize=256)
def _secret_bytes(secret: str) -> bytes:
    encoded = secret.strip().removeprefix(SECRET_PREFIX)
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise KeyFormatError("The secret is not a whsec_ secret (whsec_ followed by base64 bytes).")
    return key


# ---------------------------------------------------------------- signing


def _signed_content(msg_id: str, timestamp: str, body: bytes) -> bytes:
    return f"{msg_id}.{timestamp}.".encode() + body


def _check_message_id(msg_id: str) -> None:
    # It becomes a header value and the first part of the signed content.
    if not msg_id or not msg_id.isascii() or not msg_id.isprintable() or " " in msg_id:
        raise ValueError(f"a message id is printable ASCII without spaces, not {msg_id!r}")


@dataclass(frozen=True)
class Signer:
    """Signs request bodies with the platform's Ed25519 key (and per-configuration secrets)."""

    private_key: Ed25519PrivateKey
    vendor_prefix: str = DEFAULT_VENDOR_PREFIX
    headers: VendorHeaders = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.private_key, Ed25519PrivateKey):
            raise TypeError("Signer needs an Ed25519PrivateKey (see load_private_key)")
        object.__setattr__(self, "headers", VendorHeaders(self.vendor_prefix))

    @property
    def vendor_header(self) -> str:
        return self.headers.signature

    def _ed25519_sign(self, message: bytes) -> bytes:
        """The one Ed25519 primitive; a subclass may sign with another library
        (the signature is deterministic, so the bytes are the same)."""
        return self.private_key.sign(message)

    def vendor_signature(self, body: bytes) -> str:
        """The base64 Ed25519 signature of the raw body, for the vendor header."""
        return _b64encode(self._ed25519_sign(body))

    def sign(
        self,
        body: bytes,
        *,
        msg_id: str,
        timestamp: int | None = None,
        secrets: Sequence[str] = (),
    ) -> dict[str, str]:
        """All signature headers of one request.

        ``{prefix}-Signature-v1``: base64 Ed25519 over the raw body;
        ``webhook-id``: ``msg_id``; ``webhook-timestamp``: ``timestamp`` (Unix
        seconds, now when ``None``); ``webhook-signature``: ``v1a,<Ed25519 over
        f"{id}.{ts}." + body>`` then one ``v1,<HMAC-SHA256>`` per secret, in the
        order given (several secrets while one rotates), separated by spaces.

        Raises ``ValueError`` for an unusable id or timestamp and
        ``KeyFormatError`` for an unreadable secret.
        """
        _check_message_id(msg_id)
        if timestamp is None:
            timestamp = int(time.time())
        elif isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
            raise ValueError(f"a timestamp is a non-negative number of Unix seconds, not {timestamp!r}")
        return {
            self.vendor_header: self.vendor_signature(body),
            ID_HEADER: msg_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: self.standard_signature(msg_id, timestamp, body, secrets),
        }

    def standard_signature(self, msg_id: str, timestamp: int, body: bytes, secrets: Sequence[str] = ()) -> str:
        """The ``webhook-signature`` value alone: ``v1a,<Ed25519>`` then one
        ``v1,<HMAC-SHA256>`` per secret, over ``f"{msg_id}.{timestamp}." + body``.

        For a sender that stored the vendor signature once and signs each
        attempt with that attempt's timestamp; ``sign`` gives every header.
        The arguments are not checked here (``sign`` checks them).
        """
        content = _signed_content(msg_id, str(timestamp), body)
        signatures = [f"{V1A},{_b64encode(self._ed25519_sign(content))}"]
        signatures += [
            f"{V1},{_b64encode(hmac.digest(secret_bytes(secret), content, 'sha256'))}" for secret in secrets
        ]
        return " ".join(signatures)


# ---------------------------------------------------------------- verifying


@dataclass(frozen=True)
class Verifier:
    """Checks that a request body comes from the platform.

    ``public_keys`` enable the Ed25519 schemes (the vendor header and ``v1a``),
    ``secrets`` the HMAC scheme ``v1``. Several of each are accepted, so that a
    key or a secret can rotate: any one of them verifying is enough. They are
    decoded once, here; a verifier with neither is a ``ValueError``, an
    unreadable secret a ``KeyFormatError``.
    """

    public_keys: Sequence[Ed25519PublicKey] = ()
    secrets: Sequence[str] = ()
    vendor_prefix: str = DEFAULT_VENDOR_PREFIX
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS
    _keys: tuple[Ed25519PublicKey, ...] = field(init=False, repr=False, compare=False)
    _secret_keys: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    _vendor_header: str = field(init=False, repr=False, compare=False)
    _vendor_header_lower: str = field(init=False, repr=False, compare=False)
    _configured: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.public_keys, Ed25519PublicKey) or isinstance(self.secrets, str):
            raise TypeError("public_keys and secrets are sequences; wrap a single one in a list")
        keys = tuple(self.public_keys)
        for key in keys:
            if not isinstance(key, Ed25519PublicKey):
                raise TypeError(
                    f"public_keys holds Ed25519PublicKey objects (see load_public_key), not {type(key).__name__}"
                )
        if not keys and not self.secrets:
            raise ValueError("a Verifier needs at least one public key or one secret")
        if self.tolerance_seconds < 0:
            raise ValueError("tolerance_seconds cannot be negative")
        object.__setattr__(self, "_keys", keys)
        object.__setattr__(self, "_secret_keys", tuple(secret_bytes(secret) for secret in self.secrets))
        object.__setattr__(self, "_vendor_header", VendorHeaders(self.vendor_prefix).signature)
        object.__setattr__(self, "_vendor_header_lower", self._vendor_header.lower())
        configured = [_count(len(keys), "public key"), _count(len(self._secret_keys), "secret")]
        object.__setattr__(self, "_configured", " or ".join(part for part in configured if part))

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float | None = None) -> str:
        """The scheme that verified the body, ``"v1"``, ``"vendor"`` or ``"v1a"``; raises otherwise.

        Header names are matched case-insensitively. Any one valid signature
        among those present is enough, checked cheapest first: ``v1`` (HMAC),
        then the vendor header, then ``v1a``. Only the schemes this verifier is
        configured for count: ``v1`` needs secrets, the others public keys.

        The Standard Webhooks timestamp must lie within ``tolerance_seconds``
        of ``now`` (default: the current time), in both directions. The vendor
        header carries no timestamp. When the timestamp is out of tolerance
        and a ``v1`` or ``v1a`` signature proves it authentic, the request is a
        replay (or a clock is off) and ``TimestampOutOfTolerance`` is raised
        even if the vendor header is valid too. An unproven timestamp proves
        nothing, so a stale or malformed one next to forged ``v1``/``v1a``
        entries does not stop a valid vendor header from verifying. So a
        verifier with public keys cannot refuse every replay: a replay stripped
        of its ``webhook-*`` headers still carries a valid vendor signature. A
        receiver that must refuse replays verifies with secrets only (``v1``,
        always timestamped) and still dedupes by ``webhook-id`` within the
        tolerance window.

        When nothing verifies, the error raised is the most telling one:
        ``InvalidSignature`` if at least one well-formed signature failed
        (a forged ``v1a`` next to no vendor header is invalid, not missing),
        else ``MalformedSignature`` (bad base64, which must be canonical and
        padded, a bad entry, a missing or non-numeric ``webhook-id`` /
        ``webhook-timestamp``), else ``MissingSignature``.
        """
        lowered = {name.lower(): value for name, value in headers.items()}
        vendor_value = lowered.get(self._vendor_header_lower) if self._keys else None
        failures = _Failures()
        hmac_entries, ed25519_entries = self._standard_entries(lowered.get(SIGNATURE_HEADER), failures)
        if vendor_value is None and not hmac_entries and not ed25519_entries and not failures.malformed:
            raise MissingSignature(self._missing_message(lowered))

        content = stale = None
        if hmac_entries or ed25519_entries:
            content, stale = self._timestamped_content(body, lowered, now, failures)
            if content is None:
                hmac_entries = ed25519_entries = []

        if stale is None:  # the usual path: stop at the first signature that verifies
            if self._any_hmac_verifies(hmac_entries, content, failures):
                return V1
            if vendor_value is not None and self._vendor_verifies(vendor_value, body, failures):
                return VENDOR
            if self._any_ed25519_verifies(ed25519_entries, content, failures):
                return V1A
        else:
            if self._any_hmac_verifies(hmac_entries, content, failures) or self._any_ed25519_verifies(
                ed25519_entries, content, failures
            ):
                raise TimestampOutOfTolerance(stale)
            if vendor_value is not None and self._vendor_verifies(vendor_value, body, failures):
                return VENDOR
        raise failures.error(self._configured, self._vendor_header)

    def _standard_entries(self, value: str | None, failures: _Failures) -> tuple[list[str], list[str]]:
        """The base64 parts of the ``v1`` and ``v1a`` entries this verifier can check."""
        hmac_entries: list[str] = []
        ed25519_entries: list[str] = []
        if value is None:
            return hmac_entries, ed25519_entries
        entries = value.split(" ")
        for entry in entries:
            if not entry:
                continue  # tolerate doubled spaces between entries
            version, comma, signature = entry.partition(",")
            if not comma:
                failures.malformed_because(f"The {SIGNATURE_HEADER} entry {entry[:20]!r} is not 'version,signature'.")
            elif version == V1:
                if self._secret_keys:
                    hmac_entries.append(signature)
            elif version == V1A:
                if self._keys:
                    ed25519_entries.append(signature)
            # Other versions are for other verifiers: Standard Webhooks says to skip them.
        if not any(entries):
            failures.malformed_because(f"The {SIGNATURE_HEADER} header is empty.")
        return hmac_entries, ed25519_entries

    def _timestamped_content(
        self, body: bytes, lowered: dict[str, str], now: float | None, failures: _Failures
    ) -> tuple[bytes | None, str | None]:
        """The Standard Webhooks signed content, and why its timestamp is stale (``None`` if not)."""
        msg_id = lowered.get(ID_HEADER, "").strip(_HTTP_WHITESPACE)
        stamp = lowered.get(TIMESTAMP_HEADER, "").strip(_HTTP_WHITESPACE)
        if not msg_id:
            failures.malformed_because(f"The {SIGNATURE_HEADER} header comes without a {ID_HEADER} header.")
            return None, None
        if not stamp:
            failures.malformed_because(f"The {SIGNATURE_HEADER} header comes without a {TIMESTAMP_HEADER} header.")
            return None, None
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= _MAX_TIMESTAMP_DIGITS):
            failures.malformed_because(f"The {TIMESTAMP_HEADER} {stamp[:20]!r} is not a number of Unix seconds.")
            return None, None
        content = _signed_content(msg_id, stamp, body)
        skew = (time.time() if now is None else now) - int(stamp)
        if abs(skew) <= self.tolerance_seconds:
            return content, None
        direction = "in the past" if skew > 0 else "in the future"
        return content, (
            f"The {TIMESTAMP_HEADER} {stamp} is {abs(skew):.0f} seconds {direction}, "
            f"beyond the {self.tolerance_seconds}-second tolerance (a replay, or a clock that is off)."
        )

    def _any_hmac_verifies(self, entries: list[str], content: bytes | None, failures: _Failures) -> bool:
        expected: list[bytes] | None = None
        for entry in entries:
            signature = _strict_b64decode(entry)
            if signature is None or len(signature) != _HMAC_SIZE:
                failures.malformed_because(
                    f"A {V1} signature in {SIGNATURE_HEADER} is not canonical base64 of a {_HMAC_SIZE}-byte HMAC."
                )
                continue
            if expected is None:  # one HMAC per secret, however many entries
                expected = [hmac.digest(key, content, "sha256") for key in self._secret_keys]
            if any(hmac.compare_digest(digest, signature) for digest in expected):
                return True
            failures.invalid(f"{SIGNATURE_HEADER} {V1}")
        return False

    def _vendor_verifies(self, value: str, body: bytes, failures: _Failures) -> bool:
        signature = _strict_b64decode(value.strip(_HTTP_WHITESPACE))
        if signature is None or len(signature) != _ED25519_SIGNATURE_SIZE:
            failures.malformed_because(
                f"The {self._vendor_header} header is not canonical base64 "
                f"of a {_ED25519_SIGNATURE_SIZE}-byte Ed25519 signature."
            )
            return False
        if self._ed25519_verifies(signature, body):
            return True
        failures.invalid(self._vendor_header)
        return False

    def _any_ed25519_verifies(self, entries: list[str], content: bytes | None, failures: _Failures) -> bool:
        for entry in entries:
            signature = _strict_b64decode(entry)
            if signature is None or len(signature) != _ED25519_SIGNATURE_SIZE:
                failures.malformed_because(
                    f"A {V1A} signature in {SIGNATURE_HEADER} is not canonical base64 "
                    f"of a {_ED25519_SIGNATURE_SIZE}-byte Ed25519 signature."
                )
                continue
            if self._ed25519_verifies(signature, content):
                return True
            failures.invalid(f"{SIGNATURE_HEADER} {V1A}")
        return False

    def _ed25519_verifies(self, signature: bytes, message: bytes) -> bool:
        for key in self._keys:
            try:
                key.verify(signature, message)
            except _CryptoInvalidSignature:
                continue
            return True
        return False

    def _missing_message(self, lowered: dict[str, str]) -> str:
        expected = []
        if self._keys:
            expected.append(f"a {self._vendor_header} header")
        schemes = ([V1A] if self._keys else []) + ([V1] if self._secret_keys else [])
        expected.append(f"a {' or '.join(schemes)} entry in {SIGNATURE_HEADER}")
        found = ""
        if not self._keys and self._vendor_header_lower in lowered:
            found = f" ({self._vendor_header} is present, but this verifier has no public key)"
        elif SIGNATURE_HEADER in lowered:
            credentials = "secrets" if self._secret_keys else "keys"
            found = f" ({SIGNATURE_HEADER} has no entry this verifier's {credentials} can check)"
        return f"The request carries no signature to check: expected {' or '.join(expected)}{found}."


def _count(number: int, noun: str) -> str:
    if number == 0:
        return ""
    return f"the {noun}" if number == 1 else f"the {number} {noun}s"


class _Failures:
    """What went wrong with each signature tried, to raise the most telling error at the end."""

    __slots__ = ("malformed", "invalid_headers")

    def __init__(self) -> None:
        self.malformed: str | None = None
        self.invalid_headers: list[str] = []

    def malformed_because(self, sentence: str) -> None:
        if self.malformed is None:
            self.malformed = sentence

    def invalid(self, where: str) -> None:
        if where not in self.invalid_headers:
            self.invalid_headers.append(where)

    def error(self, configured: str, vendor_header: str) -> SignatureError:
        if self.invalid_headers:
            return InvalidSignature(
                f"No signature matches this body with {configured} configured "
                f"(tried {', '.join(self.invalid_headers)})."
            )
        if self.malformed is not None:
            return MalformedSignature(self.malformed)
        return MissingSignature(f"The request carries no signature to check (expected {vendor_header}).")
