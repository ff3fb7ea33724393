"""Secrets at rest: a webhook configuration's ``whsec_`` secrets and its
custom headers' values are stored encrypted (Fernet, from ``cryptography``).

Several keys may be in use, newest first: the newest encrypts, every one
decrypts (``MultiFernet``), so a key is rotated by putting a new one first
and re-encrypting the rows (``reseal_configurations``). A value stored before
encryption began (no ``fernet:`` prefix) is read as it is, and encrypted by
the next re-encryption, which ``tidings serve`` runs on the clear rows when it
starts. The process's keys are set once at start-up (``use_keys``); a
decrypted value is cached by its ciphertext, so the dispatcher pays for a
decryption once per change of a configuration, not per attempt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.store.platform_tables import webhook_configs

__all__ = ["SEALED_PREFIX", "NoSecretsKey", "Sealer", "UnreadableSecret", "check_keys_open", "is_sealed", "new_key", "open_value", "parse_keys",
           "reseal_configurations", "sealer", "use_keys"]

SEALED_PREFIX = "fernet:"  # marks a stored value as encrypted; clear values from before never start so
_CACHE_SIZE = 10_000


class NoSecretsKey(RuntimeError):
    """The process was given no secrets key (``use_keys``)."""


class UnreadableSecret(ValueError):
    """A stored value that none of the keys decrypts: the key it was sealed with is missing."""


def new_key() -> str:
    """A new secrets key (32 random bytes, URL-safe base64: Fernet's form)."""
    return Fernet.generate_key().decode()


def parse_keys(text: str) -> list[str]:
    """The keys in ``text``, newest first: one per line or separated by commas (pure).

    >>> parse_keys(" a=, b=\\n\\n c= ")
    ['a=', 'b=', 'c=']
    """
    return [part.strip() for line in text.splitlines() for part in line.split(",") if part.strip()]


def is_sealed(value: str) -> bool:
    return value.startswith(SEALED_PREFIX)


class Sealer:
    """Encrypts under the newest of ``keys``, decrypts under any of them."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise NoSecretsKey("at least one secrets key is needed")
        try:
            self._fernet = MultiFernet([Fernet(key.encode() if isinstance(key, str) else key) for key in keys])
        except ValueError:
            raise NoSecretsKey("a secrets key must be 32 bytes of URL-safe base64 (tidings keys secrets-key)") from None
        self._opened: dict[str, str] = {}

    def seal(self, text: str) -> str:
        return SEALED_PREFIX + self._fernet.encrypt(text.encode()).decode()

    def open(self, stored: str) -> str:
        """The clear value of ``stored``; a value stored in clear is returned as it is."""
        if not is_sealed(stored):
            return stored
        found = self._opened.get(stored)
        if found is None:
            try:
                found = self._fernet.decrypt(stored[len(SEALED_PREFIX):].encode()).decode()
            except InvalidToken:
                raise UnreadableSecret("a stored secret cannot be decrypted with the secrets keys given") from None
            if len(self._opened) >= _CACHE_SIZE:
                self._opened.clear()
            self._opened[stored] = found
        return found

    def reseal(self, stored: str) -> str:
        """``stored`` encrypted under the newest key (a clear value is encrypted)."""
        if not is_sealed(stored):
            return self.seal(stored)
        try:
            return SEALED_PREFIX + self._fernet.rotate(stored[len(SEALED_PREFIX):].encode()).decode()
        except InvalidToken:
            raise UnreadableSecret("a stored secret cannot be decrypted with the secrets keys given") from None

    def seal_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Custom headers as stored: names in clear, values encrypted."""
        return {name: self.seal(value) for name, value in headers.items()}

    def open_headers(self, stored: Mapping[str, str] | None) -> dict[str, str]:
        return {name: self.open(value) for name, value in (stored or {}).items()}


_current: Sealer | None = None


def use_keys(keys: Sequence[str]) -> Sealer:
    """Sets the process's secrets keys, newest first; returns the sealer."""
    global _current
    _current = Sealer(keys)
    return _current


def sealer() -> Sealer:
    """The process's sealer; ``NoSecretsKey`` if ``use_keys`` was never called."""
    if _current is None:
        raise NoSecretsKey("no secrets key: pass --secrets-key-file or set TIDINGS_SECRETS_KEY")
    return _current


def open_value(stored: str) -> str:
    """The clear value of ``stored``: a value stored in clear needs no key."""
    return sealer().open(stored) if is_sealed(stored) else stored


def resealed(row: Any, box: Sealer, *, clear_only: bool) -> dict[str, Any]:
    """The columns of a configuration ``row`` that change when its secrets are
    encrypted under the newest key (only its clear ones, if ``clear_only``)."""
    def redo(value: str) -> str:
        return value if clear_only and is_sealed(value) else box.reseal(value)

    changes: dict[str, Any] = {}
    if (secret := redo(row.secret)) != row.secret:
        changes["secret"] = secret
    if row.previous_secret and (previous := redo(row.previous_secret)) != row.previous_secret:
        changes["previous_secret"] = previous
    headers = dict(row.custom_headers or {})
    if (new_headers := {name: redo(value) for name, value in headers.items()}) != headers:
        changes["custom_headers"] = new_headers
    return changes


async def check_keys_open(conn: AsyncConnection) -> None:
    """Raises ``UnreadableSecret`` if the keys do not decrypt a stored secret
    (a process started with another key than the one the rows were sealed with)."""
    stored = (await conn.execute(select(webhook_configs.c.secret)
                                 .where(webhook_configs.c.secret.startswith(SEALED_PREFIX)).limit(1))).scalar()
    if stored is not None:
        sealer().open(stored)


async def reseal_configurations(conn: AsyncConnection, *, clear_only: bool = False) -> int:
    """Encrypts every configuration's secrets under the newest key (only the
    values still in clear, if ``clear_only``); returns how many rows changed."""
    box = sealer()
    rows = (await conn.execute(select(webhook_configs.c.id, webhook_configs.c.secret, webhook_configs.c.previous_secret,
                                      webhook_configs.c.custom_headers))).all()
    changed = 0
    for row in rows:
        changes = resealed(row, box, clear_only=clear_only)
        if changes:
            await conn.execute(update(webhook_configs).where(webhook_configs.c.id == row.id).values(**changes))
            changed += 1
    return changed
