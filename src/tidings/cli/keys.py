"""``tidings keys ...``: the platform's Ed25519 signing key pair and webhook secrets.

Commands that take a key accept a PEM file path or the compact string form
(``whsk_...`` private, ``whpk_...`` public); ``read_private_key`` and
``read_public_key`` turn such an argument into a key.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tidings.cli.errors import CliError
from tidings.contract.signing import (
    PRIVATE_KEY_FILENAME,
    PRIVATE_KEY_PREFIX,
    PUBLIC_KEY_FILENAME,
    PUBLIC_KEY_PREFIX,
    KeyFormatError,
    generate_private_key,
    generate_secret,
    load_private_key,
    load_public_key,
    public_key_whpk,
    save_key_pair,
)

KeyT = TypeVar("KeyT", Ed25519PrivateKey, Ed25519PublicKey)

app = typer.Typer(help="Create signing keys and webhook secrets.", no_args_is_help=True)


@app.command("generate", help="Write a new Ed25519 key pair: signing-key.pem (0600) and signing-key.pub.pem.")
def generate_command(
    out: Path = typer.Option(..., "--out", help="directory for the two key files (created if missing)"),
    force: bool = typer.Option(False, "--force", help="replace an existing key pair"),
) -> None:
    if out.exists() and not out.is_dir():
        raise CliError(f"{out} exists and is not a directory")
    if not force:
        for existing in (out / PRIVATE_KEY_FILENAME, out / PUBLIC_KEY_FILENAME):
            if existing.exists():
                raise CliError(f"{existing} already exists; pass --force to replace the key pair")
    key = generate_private_key()
    try:
        private_path, public_path = save_key_pair(key, out)
    except OSError as exc:
        raise CliError(f"cannot write the key pair to {out}: {exc.strerror or exc}") from None
    typer.echo(f"private key: {private_path} (keep it secret)")
    typer.echo(f"public key:  {public_path}")
    typer.echo(f"public key as a string: {public_key_whpk(key.public_key())}")


@app.command("secrets-key", help="Write a new key that encrypts webhook secrets at rest, to a 0600 file; "
                                  "--rotate puts it before the keys already there.")
def secrets_key_command(
    out: Path = typer.Option(..., "--out", help="the key file, e.g. .tidings/secrets.key"),
    rotate: bool = typer.Option(False, "--rotate", help="keep the file's keys after the new one (they still "
                                                        "decrypt); then run `tidings db reencrypt`"),
) -> None:
    from tidings.cli.secrets_key import read_key_file, write_key_file
    from tidings.platform.sealed import new_key

    if out.exists() and not rotate:
        raise CliError(f"{out} already exists; pass --rotate to add a newer key before its keys")
    older = read_key_file(out) if out.exists() else []
    try:
        write_key_file(out, [new_key(), *older])
    except OSError as exc:
        raise CliError(f"cannot write the secrets key file {out}: {exc.strerror or exc}") from None
    typer.echo(f"secrets key file: {out} ({1 + len(older)} keys, the new one first; keep it secret)")


@app.command("secret", help="Print a new whsec_ secret for the v1 (HMAC) signature.")
def secret_command() -> None:
    typer.echo(generate_secret())


def read_private_key(value: str, *, exit_code: int = 1) -> Ed25519PrivateKey:
    """The private key given on the command line: a PEM file path or a ``whsk_`` string."""
    return _read_key(value, load_private_key, "private key", exit_code)


def read_public_key(value: str, *, exit_code: int = 1) -> Ed25519PublicKey:
    """The public key given on the command line: a PEM file path or a ``whpk_`` string."""
    return _read_key(value, load_public_key, "public key", exit_code)


def _read_key(value: str, load: Callable[[bytes | str], KeyT], what: str, exit_code: int) -> KeyT:
    if value.startswith((PRIVATE_KEY_PREFIX, PUBLIC_KEY_PREFIX)):
        source, data = "", value  # never echo a key string back
    else:
        source = f"{value}: "
        try:
            data = Path(value).read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read {what} file {value}: {exc.strerror or exc}", exit_code) from None
    try:
        return load(data)
    except KeyFormatError as exc:
        raise CliError(f"{source}{exc}", exit_code) from None
