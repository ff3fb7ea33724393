"""``tidings event sign`` and ``tidings event verify``: the signature headers from the shell.

``sign`` prints the headers as one JSON object, which ``verify --headers``
reads back. ``verify`` exits 0 when the body is authentic, 1 when it is not
(missing, malformed, invalid or stale signature), and 2 when it cannot check
(an unreadable key, secret, body or headers file).
"""

from __future__ import annotations

import secrets as _random
import sys
from pathlib import Path

import orjson
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tidings.cli.errors import CliError
from tidings.cli.keys import read_private_key, read_public_key
from tidings.contract.signing import (
    DEFAULT_TOLERANCE_SECONDS,
    DEFAULT_VENDOR_PREFIX,
    KeyFormatError,
    SignatureError,
    Signer,
    Verifier,
)

NOT_AUTHENTIC = 1
CANNOT_CHECK = 2


def sign_command(
    file: str = typer.Argument(..., help="the event body, signed byte for byte; - for standard input"),
    key: str = typer.Option(..., "--key", help="the platform's private key: PEM file path or whsk_ string"),
    secret: list[str] = typer.Option(
        None, "--secret", help="a whsec_ secret for a v1 signature; repeat it while a secret rotates"
    ),
    msg_id: str = typer.Option(None, "--id", help="the webhook-id (default: a fresh msg_ id)"),
    # Ranges are checked here, not by typer, so that a bad value is one CliError line.
    timestamp: int = typer.Option(None, "--timestamp", help="Unix seconds (default: now)"),
    vendor_prefix: str = typer.Option(DEFAULT_VENDOR_PREFIX, "--vendor-prefix", help="prefix of the vendor header"),
) -> None:
    signer = Signer(read_private_key(key), vendor_prefix=vendor_prefix)
    body = _read_bytes(file, "event body")
    try:
        headers = signer.sign(
            body,
            msg_id=msg_id if msg_id is not None else f"msg_{_random.token_hex(12)}",
            timestamp=timestamp,
            secrets=secret or (),
        )
    except KeyFormatError as exc:
        raise CliError(f"--secret: {exc}") from None
    except ValueError as exc:
        raise CliError(str(exc)) from None
    sys.stdout.buffer.write(orjson.dumps(headers) + b"\n")


def verify_command(
    file: str = typer.Argument(..., help="the event body as received; - for standard input"),
    headers_file: str = typer.Option(
        ..., "--headers", help="a JSON object of the request's headers, as printed by sign; - for standard input"
    ),
    public_key: list[str] = typer.Option(
        None, "--public-key", help="the platform's public key: PEM file path or whpk_ string; repeatable"
    ),
    secret: list[str] = typer.Option(None, "--secret", help="a whsec_ secret of the configuration; repeatable"),
    tolerance: int = typer.Option(
        DEFAULT_TOLERANCE_SECONDS, "--tolerance", help="seconds webhook-timestamp may be off from now"
    ),
    vendor_prefix: str = typer.Option(DEFAULT_VENDOR_PREFIX, "--vendor-prefix", help="prefix of the vendor header"),
) -> None:
    if not public_key and not secret:
        raise CliError("give --public-key or --secret (or both)", CANNOT_CHECK)
    if tolerance < 0:
        raise CliError(f"--tolerance is a number of seconds, 0 or more, not {tolerance}", CANNOT_CHECK)
    if file == "-" and headers_file == "-":
        raise CliError("the body and the headers cannot both come from standard input", CANNOT_CHECK)
    keys = [read_public_key(value, exit_code=CANNOT_CHECK) for value in public_key or ()]
    verifier = _verifier(keys, secret or [], vendor_prefix, tolerance)
    headers = _read_headers(headers_file)
    body = _read_bytes(file, "event body", CANNOT_CHECK)
    try:
        scheme = verifier.verify(body, headers)
    except SignatureError as exc:
        raise CliError(str(exc), NOT_AUTHENTIC) from None
    typer.echo(f"authentic ({scheme})")


def _verifier(public_keys: list[Ed25519PublicKey], secrets: list[str], vendor_prefix: str, tolerance: int) -> Verifier:
    try:
        return Verifier(
            public_keys=public_keys, secrets=secrets, vendor_prefix=vendor_prefix, tolerance_seconds=tolerance
        )
    except KeyFormatError as exc:
        raise CliError(f"--secret: {exc}", CANNOT_CHECK) from None


def _read_bytes(path: str, what: str, exit_code: int = 1) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {what} {path}: {exc.strerror or exc}", exit_code) from None


def _read_headers(path: str) -> dict[str, str]:
    data = _read_bytes(path, "headers file", CANNOT_CHECK)
    try:
        headers = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CliError(f"headers file {path} is not JSON: {exc}", CANNOT_CHECK) from None
    if not isinstance(headers, dict) or not all(isinstance(value, str) for value in headers.values()):
        raise CliError(f"headers file {path} must hold one JSON object of string values", CANNOT_CHECK)
    return headers
