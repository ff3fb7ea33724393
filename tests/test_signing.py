"""tidings.contract.signing: what both ends rely on to trust a request body."""

from __future__ import annotations

import base64
import json
import stat
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tidings.contract import signing
from tidings.contract.signing import (
    DEFAULT_TOLERANCE_SECONDS,
    InvalidSignature,
    KeyFormatError,
    MalformedSignature,
    MissingSignature,
    SignatureError,
    Signer,
    TimestampOutOfTolerance,
    Verifier,
    generate_private_key,
    generate_secret,
    load_private_key,
    load_public_key,
    private_key_pem,
    private_key_whsk,
    public_key_pem,
    public_key_whpk,
    save_key_pair,
    secret_bytes,
)

NOW = 1_700_000_000
VENDOR_HEADER = "X-Tidings-Signature-v1"
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

# Module-level, not fixtures: hypothesis examples share them.
KEY = generate_private_key()
OTHER_KEY = generate_private_key()
SECRET = generate_secret()
OTHER_SECRET = generate_secret()


def signed(body: bytes, *, key: Ed25519PrivateKey = KEY, secrets=(SECRET,), timestamp=NOW, msg_id="msg_1"):
    return Signer(key).sign(body, msg_id=msg_id, timestamp=timestamp, secrets=secrets)


def keys_only(*keys: Ed25519PrivateKey) -> Verifier:
    return Verifier(public_keys=[key.public_key() for key in keys or (KEY,)])


def secrets_only(*secrets: str) -> Verifier:
    return Verifier(secrets=list(secrets or (SECRET,)))


def without(headers: dict[str, str], *names: str) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name not in names}


def entries(headers: dict[str, str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for entry in headers["webhook-signature"].split(" "):
        version, signature = entry.split(",")
        found.setdefault(version, []).append(signature)
    return found


def only_entry(headers: dict[str, str], version: str, signature: str | None = None) -> dict[str, str]:
    """The Standard Webhooks headers with a single entry of ``version`` (its own signature unless given)."""
    signature = entries(headers)[version][0] if signature is None else signature
    return {**without(headers, VENDOR_HEADER), "webhook-signature": f"{version},{signature}"}


def flip_byte(body: bytes, index: int = 0, mask: int = 0x01) -> bytes:
    changed = bytearray(body)
    changed[index % len(changed)] ^= mask
    return bytes(changed)


# ---------------------------------------------------------------- interoperability


def test_standardwebhooks_package_verifies_our_v1_signature(seed_example_bytes):
    headers = signed(seed_example_bytes, timestamp=int(time.time()))

    assert Webhook(SECRET).verify(seed_example_bytes, headers) == json.loads(seed_example_bytes)
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_SECRET).verify(seed_example_bytes, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(seed_example_bytes.replace(b"Jane", b"June"), headers)


def test_standardwebhooks_package_verifies_every_secret_of_a_rotation(seed_example_bytes):
    headers = signed(seed_example_bytes, secrets=(SECRET, OTHER_SECRET), timestamp=int(time.time()))

    assert len(entries(headers)["v1"]) == 2
    for secret in (SECRET, OTHER_SECRET):
        assert Webhook(secret).verify(seed_example_bytes, headers, json_parse=False) is None


def test_our_verifier_accepts_a_v1_signature_made_by_the_standardwebhooks_package(seed_example_bytes):
    from datetime import datetime, timezone

    at = datetime.fromtimestamp(NOW, tz=timezone.utc)
    signature = Webhook(SECRET).sign("msg_42", at, seed_example_bytes.decode())
    headers = {"webhook-id": "msg_42", "webhook-timestamp": str(NOW), "webhook-signature": signature}

    assert secrets_only().verify(seed_example_bytes, headers, now=NOW) == "v1"


def test_bare_cryptography_verifies_vendor_and_v1a_with_the_published_pem(seed_example_bytes):
    pem = public_key_pem(KEY.public_key())
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    public_key = serialization.load_pem_public_key(pem)
    headers = signed(seed_example_bytes, msg_id="msg_7")

    public_key.verify(base64.b64decode(headers[VENDOR_HEADER], validate=True), seed_example_bytes)
    (v1a,) = entries(headers)["v1a"]
    public_key.verify(base64.b64decode(v1a, validate=True), b"msg_7.%d." % NOW + seed_example_bytes)


def test_signed_headers_have_the_contract_shape(seed_example_bytes):
    headers = signed(seed_example_bytes, secrets=(SECRET, OTHER_SECRET), msg_id="msg_abc")

    assert list(headers) == [VENDOR_HEADER, "webhook-id", "webhook-timestamp", "webhook-signature"]
    assert headers["webhook-id"] == "msg_abc"
    assert headers["webhook-timestamp"] == str(NOW)
    assert [entry.split(",")[0] for entry in headers["webhook-signature"].split(" ")] == ["v1a", "v1", "v1"]
    assert Signer(KEY).vendor_signature(seed_example_bytes) == headers[VENDOR_HEADER]


def test_sign_without_a_timestamp_uses_now(seed_example_bytes):
    before = int(time.time())
    headers = Signer(KEY).sign(seed_example_bytes, msg_id="msg_1")
    assert before <= int(headers["webhook-timestamp"]) <= int(time.time())
    assert "v1," not in headers["webhook-signature"]
    assert keys_only().verify(seed_example_bytes, only_entry(headers, "v1a")) == "v1a"


@pytest.mark.parametrize("msg_id", ["", "msg 1", "msg\n1", "msg_é"])
def test_sign_refuses_an_id_that_cannot_be_a_header_value(msg_id):
    with pytest.raises(ValueError, match="message id"):
        Signer(KEY).sign(b"{}", msg_id=msg_id)


@pytest.mark.parametrize("timestamp", [-1, 1.5, True])
def test_sign_refuses_a_timestamp_that_is_not_unix_seconds(timestamp):
    with pytest.raises(ValueError, match="timestamp"):
        Signer(KEY).sign(b"{}", msg_id="msg_1", timestamp=timestamp)


# ---------------------------------------------------------------- each scheme verifies


def test_each_scheme_verifies_on_its_own(seed_example_bytes):
    headers = signed(seed_example_bytes)

    assert secrets_only().verify(seed_example_bytes, headers, now=NOW) == "v1"
    assert keys_only().verify(seed_example_bytes, headers, now=NOW) == "vendor"
    assert keys_only().verify(seed_example_bytes, only_entry(headers, "v1a"), now=NOW) == "v1a"
    both = Verifier(public_keys=[KEY.public_key()], secrets=[SECRET])
    assert both.verify(seed_example_bytes, headers, now=NOW) == "v1"  # the cheapest first
    assert both.verify(seed_example_bytes, without(headers, "webhook-signature"), now=NOW) == "vendor"


def test_header_names_are_case_insensitive(seed_example_bytes):
    headers = signed(seed_example_bytes)
    upper = {name.upper(): value for name, value in headers.items()}
    lower = {name.lower(): value for name, value in headers.items()}

    assert secrets_only().verify(seed_example_bytes, upper, now=NOW) == "v1"
    assert keys_only().verify(seed_example_bytes, lower, now=NOW) == "vendor"
    titled = {name.title(): value for name, value in only_entry(headers, "v1a").items()}
    assert keys_only().verify(seed_example_bytes, titled, now=NOW) == "v1a"


def test_unknown_signature_versions_are_skipped(seed_example_bytes):
    headers = signed(seed_example_bytes)
    (v1,) = entries(headers)["v1"]
    mixed = {**headers, "webhook-signature": f"v2,c29tZXRoaW5n  v1,{v1}"}

    assert secrets_only().verify(seed_example_bytes, mixed, now=NOW) == "v1"


def test_a_custom_vendor_prefix_names_the_header(seed_example_bytes):
    headers = Signer(KEY, vendor_prefix="X-Acme").sign(seed_example_bytes, msg_id="m", timestamp=NOW)
    vendor_only = without(headers, "webhook-signature")

    assert "X-Acme-Signature-v1" in headers
    acme = Verifier(public_keys=[KEY.public_key()], vendor_prefix="X-Acme")
    assert acme.verify(seed_example_bytes, vendor_only) == "vendor"
    with pytest.raises(MissingSignature):
        keys_only().verify(seed_example_bytes, vendor_only)


# ---------------------------------------------------------------- tampering, wrong keys


@pytest.mark.parametrize("verifier_of", [keys_only, secrets_only], ids=["keys", "secrets"])
def test_a_body_changed_by_one_byte_is_invalid(seed_example_bytes, verifier_of):
    headers = signed(seed_example_bytes)
    tampered = seed_example_bytes.replace(b'"id": 123', b'"id": 124', 1)
    assert len(tampered) == len(seed_example_bytes) and tampered != seed_example_bytes

    with pytest.raises(InvalidSignature, match="No signature matches this body") as caught:
        verifier_of().verify(tampered, headers, now=NOW)
    assert "\n" not in str(caught.value)


def test_the_invalid_message_names_every_signature_tried(seed_example_bytes):
    headers = signed(seed_example_bytes)
    verifier = Verifier(public_keys=[KEY.public_key()], secrets=[SECRET])

    with pytest.raises(InvalidSignature) as caught:
        verifier.verify(flip_byte(seed_example_bytes), headers, now=NOW)
    message = str(caught.value)
    assert all(part in message for part in (VENDOR_HEADER, "webhook-signature v1a", "webhook-signature v1"))
    assert "the public key or the secret" in message


def test_a_wrong_public_key_is_invalid(seed_example_bytes):
    headers = signed(seed_example_bytes)
    with pytest.raises(InvalidSignature, match=VENDOR_HEADER):
        keys_only(OTHER_KEY).verify(seed_example_bytes, headers, now=NOW)
    with pytest.raises(InvalidSignature, match="v1a"):
        keys_only(OTHER_KEY).verify(seed_example_bytes, only_entry(headers, "v1a"), now=NOW)


def test_a_wrong_secret_is_invalid(seed_example_bytes):
    with pytest.raises(InvalidSignature, match="webhook-signature v1"):
        secrets_only(OTHER_SECRET).verify(seed_example_bytes, signed(seed_example_bytes), now=NOW)


def test_a_forged_v1a_beside_a_missing_vendor_header_is_invalid_not_missing(seed_example_bytes):
    forged = signed(seed_example_bytes, key=OTHER_KEY, secrets=())
    with pytest.raises(InvalidSignature):
        keys_only().verify(seed_example_bytes, without(forged, VENDOR_HEADER), now=NOW)


def test_a_signature_over_another_id_or_timestamp_is_invalid(seed_example_bytes):
    headers = signed(seed_example_bytes)
    for changed in ({"webhook-id": "msg_2"}, {"webhook-timestamp": str(NOW + 1)}):
        for verifier, scheme in ((secrets_only(), "v1"), (keys_only(), "v1a")):
            with pytest.raises(InvalidSignature):
                verifier.verify(seed_example_bytes, {**only_entry(headers, scheme), **changed}, now=NOW)


# ---------------------------------------------------------------- malformed signatures


def non_canonical(encoded: str) -> str:
    """The same bytes under a lenient decoder, with an unused bit set in the last character."""
    data = encoded.rstrip("=")
    last = B64_ALPHABET[B64_ALPHABET.index(data[-1]) | 1]
    return data[:-1] + last + encoded[len(data) :]


BAD_BASE64 = {
    "padding-less": lambda s: s.rstrip("="),
    "non-canonical": non_canonical,
    "stray character": lambda s: s[:10] + "!" + s[10:],
    "inner newline": lambda s: s[:10] + "\n" + s[10:],
    "url-safe alphabet": lambda s: "-_" + s[2:],
    "extra padding": lambda s: s + "==",
    "too short": lambda s: base64.b64encode(base64.b64decode(s)[:-3]).decode(),
    "empty": lambda s: "",
}


def test_non_canonical_base64_decodes_to_the_same_bytes_when_lenient():
    # Proof that the non-canonical case tests strictness, not a different signature.
    original = base64.b64encode(bytes(range(64))).decode()
    assert non_canonical(original) != original
    assert base64.b64decode(non_canonical(original)) == base64.b64decode(original)


@pytest.mark.parametrize("corrupt", list(BAD_BASE64.values()), ids=list(BAD_BASE64))
def test_bad_base64_in_the_vendor_header_is_malformed(seed_example_bytes, corrupt):
    headers = signed(seed_example_bytes)
    vendor_only = {VENDOR_HEADER: corrupt(headers[VENDOR_HEADER])}
    with pytest.raises(MalformedSignature, match=f"{VENDOR_HEADER} header is not canonical base64"):
        keys_only().verify(seed_example_bytes, vendor_only, now=NOW)


@pytest.mark.parametrize("corrupt", list(BAD_BASE64.values()), ids=list(BAD_BASE64))
@pytest.mark.parametrize("scheme", ["v1", "v1a"])
def test_bad_base64_in_a_webhook_signature_entry_is_malformed(seed_example_bytes, corrupt, scheme):
    headers = signed(seed_example_bytes)
    verifier = secrets_only() if scheme == "v1" else keys_only()
    bad = only_entry(headers, scheme, corrupt(entries(headers)[scheme][0]))
    with pytest.raises(MalformedSignature, match=f"A {scheme} signature in webhook-signature is not canonical base64"):
        verifier.verify(seed_example_bytes, bad, now=NOW)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"webhook-signature": "v1a"}, "is not 'version,signature'"),
        ({"webhook-signature": ""}, "webhook-signature header is empty"),
        ({"webhook-id": None}, "without a webhook-id header"),
        ({"webhook-timestamp": None}, "without a webhook-timestamp header"),
        ({"webhook-timestamp": "1700000000.5"}, "not a number of Unix seconds"),
        ({"webhook-timestamp": "-1700000000"}, "not a number of Unix seconds"),
        ({"webhook-timestamp": "１７００"}, "not a number of Unix seconds"),
        ({"webhook-timestamp": "9" * 40}, "not a number of Unix seconds"),
    ],
)
def test_bad_standard_webhooks_headers_are_malformed(seed_example_bytes, changes, message):
    headers = {**only_entry(signed(seed_example_bytes), "v1a"), **changes}
    headers = {name: value for name, value in headers.items() if value is not None}
    with pytest.raises(MalformedSignature, match=message):
        keys_only().verify(seed_example_bytes, headers, now=NOW)


def test_one_valid_signature_is_enough_beside_a_malformed_one(seed_example_bytes):
    headers = {**signed(seed_example_bytes), VENDOR_HEADER: "not base64!"}
    verifier = Verifier(public_keys=[KEY.public_key()], secrets=[SECRET])
    assert verifier.verify(seed_example_bytes, headers, now=NOW) == "v1"
    assert keys_only().verify(seed_example_bytes, headers, now=NOW) == "v1a"


def test_an_invalid_signature_outranks_a_malformed_one(seed_example_bytes):
    forged = signed(seed_example_bytes, key=OTHER_KEY, secrets=())
    headers = {**forged, VENDOR_HEADER: "not base64!"}
    with pytest.raises(InvalidSignature, match="v1a"):
        keys_only().verify(seed_example_bytes, headers, now=NOW)


# ---------------------------------------------------------------- missing signatures


def test_no_signature_header_at_all_is_missing(seed_example_bytes):
    with pytest.raises(MissingSignature, match=f"expected a {VENDOR_HEADER} header or a v1a or v1 entry"):
        Verifier(public_keys=[KEY.public_key()], secrets=[SECRET]).verify(seed_example_bytes, {"content-type": "x"})


def test_signatures_for_other_credentials_only_are_missing(seed_example_bytes):
    headers = signed(seed_example_bytes)
    with pytest.raises(MissingSignature, match="no entry this verifier's keys can check"):
        keys_only().verify(seed_example_bytes, only_entry(headers, "v1"), now=NOW)
    with pytest.raises(MissingSignature, match="this verifier has no public key"):
        secrets_only().verify(seed_example_bytes, without(headers, "webhook-signature"), now=NOW)
    with pytest.raises(MissingSignature, match="no entry this verifier's secrets can check"):
        secrets_only().verify(seed_example_bytes, only_entry(headers, "v1a"), now=NOW)


# ---------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    "offset, direction", [(DEFAULT_TOLERANCE_SECONDS + 1, "past"), (-DEFAULT_TOLERANCE_SECONDS - 1, "future")]
)
@pytest.mark.parametrize("scheme", ["v1", "v1a"])
def test_a_timestamp_beyond_the_tolerance_is_refused(seed_example_bytes, offset, direction, scheme):
    verifier = secrets_only() if scheme == "v1" else keys_only()
    headers = only_entry(signed(seed_example_bytes), scheme)

    message = f"301 seconds in the {direction}, beyond the 300-second tolerance"
    with pytest.raises(TimestampOutOfTolerance, match=message):
        verifier.verify(seed_example_bytes, headers, now=NOW + offset)
    assert verifier.verify(seed_example_bytes, headers, now=NOW + offset - (1 if offset > 0 else -1)) == scheme


def test_the_tolerance_is_configurable(seed_example_bytes):
    headers = signed(seed_example_bytes)
    strict = Verifier(secrets=[SECRET], tolerance_seconds=5)
    with pytest.raises(TimestampOutOfTolerance, match="6 seconds in the past, beyond the 5-second"):
        strict.verify(seed_example_bytes, headers, now=NOW + 6)
    assert strict.verify(seed_example_bytes, headers, now=NOW + 5) == "v1"


def test_an_authentic_stale_timestamp_wins_over_a_valid_vendor_header(seed_example_bytes):
    headers = signed(seed_example_bytes)
    verifier = Verifier(public_keys=[KEY.public_key()], secrets=[SECRET])
    for checked_by in (verifier, keys_only(), secrets_only()):
        with pytest.raises(TimestampOutOfTolerance):
            checked_by.verify(seed_example_bytes, headers, now=NOW + 3600)


def test_an_unproven_stale_timestamp_does_not_block_a_valid_vendor_header(seed_example_bytes):
    forged = signed(seed_example_bytes, key=OTHER_KEY, secrets=())
    headers = {**forged, VENDOR_HEADER: signed(seed_example_bytes)[VENDOR_HEADER]}
    assert keys_only().verify(seed_example_bytes, headers, now=NOW + 3600) == "vendor"
    with pytest.raises(InvalidSignature):  # and a forgery with a stale timestamp is a forgery
        keys_only().verify(seed_example_bytes, without(headers, VENDOR_HEADER), now=NOW + 3600)


def test_verify_uses_the_clock_when_now_is_not_given(seed_example_bytes):
    fresh = signed(seed_example_bytes, timestamp=int(time.time()))
    assert secrets_only().verify(seed_example_bytes, fresh) == "v1"
    with pytest.raises(TimestampOutOfTolerance):
        secrets_only().verify(seed_example_bytes, signed(seed_example_bytes, timestamp=NOW))


# ---------------------------------------------------------------- rotation


def test_during_a_key_rotation_the_old_and_the_new_key_verify(seed_example_bytes):
    new_key = generate_private_key()
    verifier = keys_only(new_key, KEY)
    for key in (KEY, new_key):
        headers = signed(seed_example_bytes, key=key, secrets=())
        assert verifier.verify(seed_example_bytes, headers, now=NOW) == "vendor"
        assert verifier.verify(seed_example_bytes, only_entry(headers, "v1a"), now=NOW) == "v1a"
    with pytest.raises(InvalidSignature):
        verifier.verify(seed_example_bytes, signed(seed_example_bytes, key=OTHER_KEY), now=NOW)


def test_during_a_secret_rotation_the_old_and_the_new_secret_verify(seed_example_bytes):
    new_secret = generate_secret()
    both_signed = signed(seed_example_bytes, secrets=(SECRET, new_secret))
    old_signed = signed(seed_example_bytes, secrets=(SECRET,))

    assert secrets_only(SECRET).verify(seed_example_bytes, both_signed, now=NOW) == "v1"
    assert secrets_only(new_secret).verify(seed_example_bytes, both_signed, now=NOW) == "v1"
    assert secrets_only(new_secret, SECRET).verify(seed_example_bytes, old_signed, now=NOW) == "v1"
    with pytest.raises(InvalidSignature):
        secrets_only(new_secret).verify(seed_example_bytes, old_signed, now=NOW)


# ---------------------------------------------------------------- construction


def test_a_verifier_needs_a_key_or_a_secret():
    with pytest.raises(ValueError, match="at least one public key or one secret"):
        Verifier()


def test_a_verifier_reads_its_credentials_once():
    with pytest.raises(KeyFormatError):
        Verifier(secrets=["whsec_not base64"])
    with pytest.raises(TypeError, match="load_public_key"):
        Verifier(public_keys=[public_key_pem(KEY.public_key())])
    with pytest.raises(TypeError, match="wrap a single one"):
        Verifier(secrets=SECRET)
    with pytest.raises(ValueError, match="negative"):
        Verifier(secrets=[SECRET], tolerance_seconds=-1)


def test_verify_does_not_decode_credentials_per_call(seed_example_bytes, monkeypatch):
    verifier = Verifier(public_keys=[KEY.public_key()], secrets=[SECRET])
    headers = signed(seed_example_bytes)

    def refuse(*args, **kwargs):
        raise AssertionError("credentials decoded during verify")

    for name in ("secret_bytes", "_secret_bytes", "load_public_key"):
        monkeypatch.setattr(signing, name, refuse)
    assert verifier.verify(seed_example_bytes, headers, now=NOW) == "v1"
    assert verifier.verify(seed_example_bytes, without(headers, "webhook-signature"), now=NOW) == "vendor"


def test_every_error_is_a_signature_error():
    for error in (MissingSignature, MalformedSignature, InvalidSignature, TimestampOutOfTolerance, KeyFormatError):
        assert issubclass(error, SignatureError)


# ---------------------------------------------------------------- keys and secrets


def test_pem_round_trips():
    private_pem = private_key_pem(KEY)
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    loaded = load_private_key(private_pem)
    assert private_key_pem(loaded) == private_pem
    assert load_private_key(private_pem.decode()).sign(b"x") == KEY.sign(b"x")  # Ed25519 is deterministic

    public_pem = public_key_pem(KEY.public_key())
    assert public_key_pem(load_public_key(public_pem.decode())) == public_pem


def test_whsk_and_whpk_round_trips():
    whsk, whpk = private_key_whsk(KEY), public_key_whpk(KEY.public_key())
    assert whsk.startswith("whsk_") and len(base64.b64decode(whsk[5:], validate=True)) == 32
    assert whpk.startswith("whpk_") and len(base64.b64decode(whpk[5:], validate=True)) == 32

    assert private_key_whsk(load_private_key(whsk)) == whsk
    assert private_key_pem(load_private_key(whsk.encode() + b"\n")) == private_key_pem(KEY)
    assert public_key_pem(load_public_key(whpk)) == public_key_pem(KEY.public_key())
    assert public_key_whpk(load_private_key(whsk).public_key()) == whpk


def _rsa_pems() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def test_unreadable_private_keys_raise_key_format_error():
    rsa_private, _ = _rsa_pems()
    encrypted = KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    damaged = private_key_pem(KEY).replace(b"MC4CAQ", b"MC4CAA")
    cases = {
        public_key_pem(KEY.public_key()): "This is a public key",
        public_key_whpk(KEY.public_key()): "This is a public key",
        encrypted: "encrypted",
        rsa_private: "not Ed25519",
        damaged: "cannot be read",
        private_key_whsk(KEY)[:-4]: "not canonical base64 of 32 raw",
        "hello": "neither a PEM private key nor a whsk_",
        b"\xff\xfe": "not text",
    }
    for data, message in cases.items():
        with pytest.raises(KeyFormatError, match=message):
            load_private_key(data)


def test_unreadable_public_keys_raise_key_format_error():
    _, rsa_public = _rsa_pems()
    cases = {
        private_key_pem(KEY): "This is a private key",
        private_key_whsk(KEY): "This is a private key",
        rsa_public: "not Ed25519",
        public_key_pem(KEY.public_key())[:-40] + b"\n-----END PUBLIC KEY-----\n": "cannot be read",
        "whpk_" + base64.b64encode(b"\x00" * 31).decode(): "not canonical base64 of 32 raw",
        "": "neither a PEM public key nor a whpk_",
    }
    for data, message in cases.items():
        with pytest.raises(KeyFormatError, match=message):
            load_public_key(data)


def test_save_key_pair_writes_a_private_file_only_its_owner_reads(tmp_path):
    private_path, public_path = save_key_pair(KEY, tmp_path / "keys")

    assert (private_path.name, public_path.name) == ("signing-key.pem", "signing-key.pub.pem")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    assert private_key_pem(load_private_key(private_path.read_bytes())) == private_key_pem(KEY)
    assert public_key_pem(load_public_key(public_path.read_bytes())) == public_key_pem(KEY.public_key())

    save_key_pair(OTHER_KEY, tmp_path / "keys")  # replaces, and leaves no temporary file behind
    assert load_private_key(private_path.read_bytes()).sign(b"x") == OTHER_KEY.sign(b"x")
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["signing-key.pem", "signing-key.pub.pem"]


def test_generated_secrets_are_24_random_bytes():
    first, second = generate_secret(), generate_secret()
    assert first.startswith("whsec_") and first != second
    assert len(secret_bytes(first)) == 24
    assert secret_bytes(first) == base64.b64decode(first.removeprefix("whsec_"), validate=True)


def test_secret_bytes_reads_standard_webhooks_secrets():
    raw = bytes(range(20))  # base64 with one "=" of padding
    encoded = base64.b64encode(raw).decode()
    assert encoded.endswith("=")
    for accepted in (f"whsec_{encoded}", encoded, f"whsec_{encoded.rstrip('=')}", f" whsec_{encoded}\n"):
        assert secret_bytes(accepted) == raw
    for refused in ("whsec_", "", "whsec_abc!def", "whsec_ab cd", "whsec_abcde"):
        with pytest.raises(KeyFormatError, match="not a whsec_ secret"):
            secret_bytes(refused)


# ---------------------------------------------------------------- properties


@settings(max_examples=120, deadline=None)
@given(body=st.binary(min_size=1, max_size=2048), position=st.integers(min_value=0), mask=st.integers(1, 255))
def test_any_body_verifies_and_any_single_byte_change_does_not(body, position, mask):
    headers = signed(body)
    cases = (
        (secrets_only(), headers, "v1"),
        (keys_only(), headers, "vendor"),
        (keys_only(), only_entry(headers, "v1a"), "v1a"),
    )
    changed = flip_byte(body, position, mask)
    for verifier, presented, scheme in cases:
        assert verifier.verify(body, presented, now=NOW) == scheme
        with pytest.raises(InvalidSignature):
            verifier.verify(changed, presented, now=NOW)


def test_signing_is_deterministic_for_ed25519_and_keyed_for_hmac(seed_example_bytes):
    assert signed(seed_example_bytes) == signed(seed_example_bytes)
    other_v1 = entries(signed(seed_example_bytes, secrets=(OTHER_SECRET,)))["v1"]
    assert entries(signed(seed_example_bytes))["v1"] != other_v1


def test_standard_signature_is_the_webhook_signature_of_sign_and_verifies_on_its_own(seed_example_bytes):
    signer = Signer(KEY)
    value = signer.standard_signature("msg_9", NOW + 5, seed_example_bytes, [SECRET, OTHER_SECRET])
    headers = signer.sign(seed_example_bytes, msg_id="msg_9", timestamp=NOW + 5, secrets=(SECRET, OTHER_SECRET))
    assert value == headers["webhook-signature"]
    standard = {"webhook-id": "msg_9", "webhook-timestamp": str(NOW + 5), "webhook-signature": value}
    assert keys_only().verify(seed_example_bytes, standard, now=NOW + 5) == "v1a"
    assert secrets_only(OTHER_SECRET).verify(seed_example_bytes, standard, now=NOW + 5) == "v1"
    now = int(time.time())
    current = {"webhook-id": "msg_9", "webhook-timestamp": str(now),
               "webhook-signature": signer.standard_signature("msg_9", now, seed_example_bytes, [SECRET])}
    assert Webhook(SECRET).verify(seed_example_bytes, current) == json.loads(seed_example_bytes)
    # Another timestamp is another signature: v1a covers the id and the timestamp.
    assert signer.standard_signature("msg_9", NOW + 6, seed_example_bytes) != value.split(" ")[0]
    assert [entry.split(",")[0] for entry in signer.standard_signature("msg_9", NOW, b"{}").split(" ")] == ["v1a"]
