"""``tidings keys generate``, ``tidings event sign`` and ``tidings event verify``, run as a user runs them."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from tidings.contract.signing import (
    Verifier,
    generate_private_key,
    generate_secret,
    load_private_key,
    load_public_key,
    private_key_pem,
    private_key_whsk,
    public_key_pem,
    public_key_whpk,
)

CONSOLE_SCRIPT = Path(sys.executable).with_name("tidings")
MODULE_COMMAND = [sys.executable, "-c", "from tidings.cli import main; main()"]
COMMAND = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else MODULE_COMMAND
VENDOR_HEADER = "X-Tidings-Signature-v1"


def tidings(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*COMMAND, *map(str, args)], input=stdin, capture_output=True, timeout=60, check=False)


def one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    """The single ``error: ...`` line a failed command prints, checked to be nothing more."""
    stderr = result.stderr.decode()
    assert stderr.startswith("error: "), stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    return stderr.strip()


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    result = tidings("keys", "generate", "--out", directory)
    assert result.returncode == 0, result.stderr
    return directory


@pytest.fixture
def body_file(tmp_path, seed_example_bytes) -> Path:
    path = tmp_path / "event.json"
    path.write_bytes(seed_example_bytes)
    return path


def sign(key_dir: Path, body_file: Path, *options: str) -> dict[str, str]:
    result = tidings("event", "sign", "--key", key_dir / "signing-key.pem", *options, body_file)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(b"\n") == 1
    return json.loads(result.stdout)


def write_headers(directory: Path, headers: dict[str, str]) -> Path:
    path = directory / "headers.json"
    path.write_text(json.dumps(headers))
    return path


# ---------------------------------------------------------------- keys generate


def test_keys_generate_writes_a_key_pair_and_prints_it(tmp_path):
    out = tmp_path / "new" / "keys"
    result = tidings("keys", "generate", "--out", out)

    assert result.returncode == 0, result.stderr
    private_path, public_path = out / "signing-key.pem", out / "signing-key.pub.pem"
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    private_key = load_private_key(private_path.read_bytes())
    public_pem = public_path.read_bytes()
    assert public_pem == public_key_pem(private_key.public_key())
    printed = result.stdout.decode()
    assert str(private_path) in printed and str(public_path) in printed
    assert public_key_whpk(load_public_key(public_pem)) in printed.split()


def test_keys_generate_refuses_to_overwrite_without_force(tmp_path):
    assert tidings("keys", "generate", "--out", tmp_path).returncode == 0
    before = (tmp_path / "signing-key.pem").read_bytes()

    refused = tidings("keys", "generate", "--out", tmp_path)
    assert refused.returncode == 1
    expected = f"error: {tmp_path / 'signing-key.pem'} already exists; pass --force to replace the key pair"
    assert one_line_error(refused) == expected
    assert (tmp_path / "signing-key.pem").read_bytes() == before

    (tmp_path / "signing-key.pem").unlink()  # a lone public key is a key pair too
    assert "signing-key.pub.pem already exists" in one_line_error(tidings("keys", "generate", "--out", tmp_path))

    forced = tidings("keys", "generate", "--out", tmp_path, "--force")
    assert forced.returncode == 0, forced.stderr
    replaced = load_private_key((tmp_path / "signing-key.pem").read_bytes())
    assert (tmp_path / "signing-key.pub.pem").read_bytes() == public_key_pem(replaced.public_key())
    assert private_key_pem(replaced) != before


def test_keys_generate_refuses_a_file_as_directory(tmp_path):
    (tmp_path / "taken").write_text("x")
    result = tidings("keys", "generate", "--out", tmp_path / "taken")
    assert result.returncode == 1
    assert "exists and is not a directory" in one_line_error(result)


def test_keys_secret_prints_a_fresh_whsec_secret():
    first, second = (tidings("keys", "secret").stdout.decode().strip() for _ in range(2))
    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"), validate=True)) == 24


# ---------------------------------------------------------------- event sign


def test_sign_prints_headers_that_verify(key_dir, body_file, seed_example_bytes):
    secret = generate_secret()
    headers = sign(key_dir, body_file, "--secret", secret, "--id", "msg_cli", "--timestamp", "1700000000")

    assert headers["webhook-id"] == "msg_cli" and headers["webhook-timestamp"] == "1700000000"
    public_key = load_public_key((key_dir / "signing-key.pub.pem").read_bytes())
    assert Verifier(public_keys=[public_key]).verify(seed_example_bytes, headers, now=1_700_000_000) == "vendor"
    assert Verifier(secrets=[secret]).verify(seed_example_bytes, headers, now=1_700_000_000) == "v1"


def test_sign_defaults_to_a_fresh_id_and_now_and_reads_stdin(key_dir, body_file, seed_example_bytes):
    secrets = [generate_secret(), generate_secret()]
    from_file = sign(key_dir, body_file, "--secret", secrets[0], "--secret", secrets[1])
    from_stdin = tidings("event", "sign", "--key", key_dir / "signing-key.pem", "-", stdin=seed_example_bytes)

    assert from_stdin.returncode == 0, from_stdin.stderr
    from_stdin_headers = json.loads(from_stdin.stdout)
    assert from_file[VENDOR_HEADER] == from_stdin_headers[VENDOR_HEADER]  # the same bytes were signed
    assert from_file["webhook-id"].startswith("msg_") and from_file["webhook-id"] != from_stdin_headers["webhook-id"]
    assert abs(int(from_file["webhook-timestamp"]) - time.time()) < 60
    for secret in secrets:  # both secrets of a rotation, checked by the reference implementation
        assert Webhook(secret).verify(seed_example_bytes, from_file) == json.loads(seed_example_bytes)


def test_sign_accepts_a_whsk_string(key_dir, body_file):
    whsk = private_key_whsk(load_private_key((key_dir / "signing-key.pem").read_bytes()))
    result = tidings("event", "sign", "--key", whsk, "--id", "m", "--timestamp", "1", body_file)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == sign(key_dir, body_file, "--id", "m", "--timestamp", "1")


def test_sign_failures_are_one_line(key_dir, body_file, tmp_path):
    key = key_dir / "signing-key.pem"
    cases = [
        (["--key", key, tmp_path / "missing.json"], "cannot read event body"),
        (["--key", tmp_path / "missing.pem", body_file], "cannot read private key file"),
        (["--key", key_dir / "signing-key.pub.pem", body_file], "This is a public key; signing needs the private key."),
        (["--key", "whsk_tooshort", body_file], "is not canonical base64 of 32 raw Ed25519 key bytes"),
        (["--key", key, "--secret", "whsec_not base64", body_file], "--secret: The secret is not a whsec_ secret"),
        (["--key", key, "--id", "two words", body_file], "a message id is printable ASCII without spaces"),
        (["--key", key, "--timestamp", "-5", body_file], "a timestamp is a non-negative number of Unix seconds"),
    ]
    for args, message in cases:
        result = tidings("event", "sign", *args)
        assert result.returncode == 1 and result.stdout == b"", args
        assert message in one_line_error(result), args
    assert "whsk_tooshort" not in one_line_error(tidings("event", "sign", "--key", "whsk_tooshort", body_file))


# ---------------------------------------------------------------- event verify


def test_verify_reports_the_scheme_that_verified(key_dir, body_file, tmp_path):
    secret = generate_secret()
    headers_path = write_headers(tmp_path, sign(key_dir, body_file, "--secret", secret))
    public_pem = key_dir / "signing-key.pub.pem"
    whpk = public_key_whpk(load_public_key(public_pem.read_bytes()))

    for key_options, scheme in (
        (["--public-key", public_pem], "vendor"),
        (["--public-key", whpk], "vendor"),
        (["--secret", secret], "v1"),
    ):
        result = tidings("event", "verify", *key_options, "--headers", headers_path, body_file)
        assert (result.returncode, result.stdout, result.stderr) == (0, f"authentic ({scheme})\n".encode(), b"")


def test_verify_reads_body_or_headers_from_stdin(key_dir, body_file, tmp_path, seed_example_bytes):
    headers = sign(key_dir, body_file)
    headers_path = write_headers(tmp_path, headers)
    public_pem = key_dir / "signing-key.pub.pem"

    body_on_stdin = tidings(
        "event", "verify", "--public-key", public_pem, "--headers", headers_path, "-", stdin=seed_example_bytes
    )
    assert body_on_stdin.stdout == b"authentic (vendor)\n", body_on_stdin.stderr
    headers_on_stdin = tidings(
        "event", "verify", "--public-key", public_pem, "--headers", "-", body_file, stdin=json.dumps(headers).encode()
    )
    assert headers_on_stdin.stdout == b"authentic (vendor)\n", headers_on_stdin.stderr


def test_verify_exits_1_when_not_authentic(key_dir, body_file, tmp_path, seed_example_bytes):
    secret = generate_secret()
    public_pem = key_dir / "signing-key.pub.pem"
    fresh = sign(key_dir, body_file, "--secret", secret)
    stale = sign(key_dir, body_file, "--secret", secret, "--timestamp", str(int(time.time()) - 3600))
    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(seed_example_bytes.replace(b"Jane Doe", b"Jane Dox"))
    other_key = public_key_whpk(generate_private_key().public_key())

    cases = [
        (["--public-key", public_pem], fresh, tampered, "error: No signature matches this body with the public key"),
        (["--secret", secret], fresh, tampered, "error: No signature matches this body with the secret configured"),
        (["--public-key", other_key], fresh, body_file, "error: No signature matches this body"),
        (["--secret", generate_secret()], fresh, body_file, "(tried webhook-signature v1)"),
        (["--secret", secret], stale, body_file, "seconds in the past, beyond the 300-second tolerance"),
        (["--public-key", public_pem], stale, body_file, "seconds in the past, beyond the 300-second tolerance"),
        (["--public-key", public_pem], {}, body_file, "error: The request carries no signature to check"),
        (["--public-key", public_pem], {VENDOR_HEADER: "bm90IGEgc2lnbmF0dXJl"}, body_file, "64-byte Ed25519"),
    ]
    for options, headers, body, message in cases:
        result = tidings("event", "verify", *options, "--headers", write_headers(tmp_path, headers), body)
        assert result.returncode == 1 and result.stdout == b"", (options, headers)
        assert message in one_line_error(result), (options, headers)

    stale_path = write_headers(tmp_path, stale)
    widened = tidings("event", "verify", "--secret", secret, "--tolerance", "7200", "--headers", stale_path, body_file)
    assert widened.stdout == b"authentic (v1)\n", widened.stderr


def test_verify_exits_2_when_it_cannot_check(key_dir, body_file, tmp_path):
    headers_path = write_headers(tmp_path, sign(key_dir, body_file))
    public_pem = key_dir / "signing-key.pub.pem"
    not_json = tmp_path / "not.json"
    not_json.write_text("X-Tidings-Signature-v1: abc")
    not_strings = tmp_path / "numbers.json"
    not_strings.write_text('{"webhook-timestamp": 1700000000}')

    cases = [
        (["--headers", headers_path, body_file], "give --public-key or --secret (or both)"),
        (["--public-key", key_dir / "signing-key.pem", "--headers", headers_path, body_file], "This is a private key"),
        (["--public-key", tmp_path / "nope.pem", "--headers", headers_path, body_file], "cannot read public key file"),
        (["--secret", "whsec_!!", "--headers", headers_path, body_file], "--secret: The secret is not a whsec_ secret"),
        (["--public-key", public_pem, "--headers", tmp_path / "nope.json", body_file], "cannot read headers file"),
        (["--public-key", public_pem, "--headers", not_json, body_file], "is not JSON"),
        (["--public-key", public_pem, "--headers", not_strings, body_file], "one JSON object of string values"),
        (["--public-key", public_pem, "--headers", headers_path, tmp_path / "nope"], "cannot read event body"),
        (["--public-key", public_pem, "--headers", "-", "-"], "cannot both come from standard input"),
        (["--public-key", public_pem, "--tolerance", "-1", "--headers", headers_path, body_file], "--tolerance is"),
    ]
    for args, message in cases:
        result = tidings("event", "verify", *args)
        assert result.returncode == 2 and result.stdout == b"", args
        assert message in one_line_error(result), args


def test_the_console_script_runs_and_lists_the_commands():
    assert CONSOLE_SCRIPT.exists(), "pip install -e '.[dev]' installs the tidings console script"
    for group, commands in (("event", (b"sign", b"verify")), ("keys", (b"generate", b"secret"))):
        result = tidings(group, "--help")
        assert result.returncode == 0, result.stderr
        assert all(command in result.stdout for command in commands)
