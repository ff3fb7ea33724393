"""The secrets key: where ``serve``, ``worker`` and ``db reencrypt`` find it,
and its file (0600, one key per line, newest first).

``TIDINGS_SECRETS_KEY`` (keys separated by commas, newest first) wins over a
file; else ``--secrets-key-file`` / ``TIDINGS_SECRETS_KEY_FILE``; else
``DATA_DIR/secrets.key``, which ``tidings serve`` creates on its first start
so that ``serve`` and ``demo`` need no configuration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from tidings.cli.errors import CliError

SECRETS_KEY_FILENAME = "secrets.key"

SecretsKeyFile = Annotated[Path | None, typer.Option(
    "--secrets-key-file", envvar="TIDINGS_SECRETS_KEY_FILE",
    help="file of the keys that encrypt webhook secrets at rest, newest first (default: DATA_DIR/secrets.key; "
         "TIDINGS_SECRETS_KEY, comma-separated, wins)")]


def write_key_file(path: Path, keys: list[str]) -> None:
    """Writes ``keys`` to ``path``, readable by its owner only, replacing it whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".new")
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an older scratch file keeps its mode otherwise
    with os.fdopen(descriptor, "w") as out:
        out.write("\n".join(keys) + "\n")
    os.replace(scratch, path)


def read_key_file(path: Path) -> list[str]:
    from tidings.platform.sealed import parse_keys

    try:
        return parse_keys(path.read_text())
    except OSError as exc:
        raise CliError(f"cannot read the secrets key file {path}: {exc.strerror or exc}") from None


def secrets_keys(key_file: Path | None, data_dir: Path, *, create: bool) -> tuple[list[str], str]:
    """The secrets keys, newest first, and where they came from; the default
    file is created (one new key) when ``create`` and missing."""
    from tidings.platform.sealed import new_key

    if text := os.environ.get("TIDINGS_SECRETS_KEY", "").strip():
        from tidings.platform.sealed import parse_keys

        return parse_keys(text), "TIDINGS_SECRETS_KEY"
    path = key_file or data_dir / SECRETS_KEY_FILENAME
    if not path.exists():
        if key_file is not None or not create:
            raise CliError(f"no secrets key file at {path}: give the one `tidings serve` made "
                           f"(--secrets-key-file, TIDINGS_SECRETS_KEY_FILE) or set TIDINGS_SECRETS_KEY")
        try:
            write_key_file(path, [new_key()])
        except OSError as exc:
            raise CliError(f"cannot write a secrets key into {path}: {exc.strerror or exc}") from None
        print(f"generated a secrets key: {path} (keep it with the database's backups, apart from them)")
    keys = read_key_file(path)
    if not keys:
        raise CliError(f"the secrets key file {path} holds no key")
    return keys, str(path)


def use_secrets_keys(key_file: Path | None, data_dir: Path, *, create: bool) -> None:
    """Sets the process's secrets keys; one clear line when they are unusable."""
    from tidings.platform.sealed import NoSecretsKey, use_keys

    keys, source = secrets_keys(key_file, data_dir, create=create)
    try:
        use_keys(keys)
    except NoSecretsKey as exc:
        raise CliError(f"{source}: {exc}") from None
