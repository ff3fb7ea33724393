"""Where the platform may send requests: the guard against server-side
request forgery (SSRF) and the scheme policy.

A webhook URL is chosen by a customer, so without a guard the platform would
POST wherever it is told: to its own database port, a cloud metadata service,
a router's admin page. Two checks:

- ``check_target_url`` when a configuration is saved (and before each send):
  the scheme, and a host that is a literal address or ``localhost``.
- ``GuardedResolver`` when connecting: every address a name resolves to is
  checked, so a public-looking name that resolves to ``127.0.0.1`` (or that
  changes its answer after the configuration was saved) is refused too.

Refused: loopback, private (RFC 1918, unique local ``fc00::/7``), link-local
(``169.254.0.0/16``, where cloud metadata lives, and ``fe80::/10``), shared
(``100.64.0.0/10``), multicast, unspecified and reserved addresses; in short
every address that is not globally routable. IPv4 addresses mapped into IPv6
are judged as the IPv4 address they carry.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

__all__ = [
    "GuardedResolver",
    "RefusedAddress",
    "Resolver",
    "SystemResolver",
    "TargetPolicy",
    "TargetRefused",
    "address_refusal",
    "check_target_url",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    allow_private: bool = False  # loopback, private and link-local targets (demo, tests)
    allow_http: bool = False  # plain http:// URLs

    @classmethod
    def from_settings(cls, settings) -> TargetPolicy:
        """From a ``DeliverySettings``."""
        return cls(allow_private=settings.allow_private_targets, allow_http=settings.allow_http)


class TargetRefused(ValueError):
    """A URL the platform will not send to; ``reason`` says why, in one sentence."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RefusedAddress(OSError):
    """Raised while connecting when a name resolves to no allowed address
    (an ``OSError``: it is a failure to connect)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def address_refusal(address: IPAddress) -> str | None:
    """Why ``address`` may not be a target, or ``None`` when it is globally routable."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return f"{address} is a loopback address"
    if address.is_link_local:
        return f"{address} is a link-local address"
    if address.is_unspecified:
        return f"{address} is the unspecified address"
    if address.is_multicast:
        return f"{address} is a multicast address"
    if address.is_private:
        return f"{address} is a private address"
    if not address.is_global:
        return f"{address} is not a globally routable address"
    return None


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None


def check_target_url(url: str, policy: TargetPolicy) -> None:
    """Raises ``TargetRefused`` for a URL the policy does not allow.

    Checks what can be known without resolving the name: the scheme, a
    literal address, ``localhost``. Resolved addresses are checked when
    connecting (``GuardedResolver``).
    """
    _check_target_url(url, policy)


@functools.lru_cache(maxsize=4096)  # pure, and called before every send
def _check_target_url(url: str, policy: TargetPolicy) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number in range
    except ValueError as exc:
        raise TargetRefused(f"the URL cannot be read: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "http":
        if not policy.allow_http:
            raise TargetRefused("plain http:// is not allowed; use https://")
    elif scheme != "https":
        raise TargetRefused(f"the URL must use https://, not {scheme or 'no scheme'}")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise TargetRefused("the URL has no host")
    if policy.allow_private:
        return
    if host == "localhost" or host.endswith(".localhost"):
        raise TargetRefused(f"{host} is a loopback name")
    address = _literal_address(host)
    if address is not None:
        refusal = address_refusal(address)
        if refusal:
            raise TargetRefused(refusal)


Address = tuple[int, str]  # (socket family, address), as connecting wants them


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[Address]:
        """The addresses ``host`` resolves to, for a TCP connection to ``port``."""

    async def close(self) -> None: ...


class SystemResolver:
    """The system's resolver (``getaddrinfo``, in the event loop's thread pool)."""

    async def resolve(self, host: str, port: int) -> list[Address]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys((family, sockaddr[0]) for family, _, _, _, sockaddr in infos))

    async def close(self) -> None:
        pass


class GuardedResolver:
    """A resolver that drops every address the policy refuses; if nothing is
    left, it raises ``RefusedAddress``."""

    def __init__(self, inner: Resolver | None = None) -> None:
        self._inner = inner if inner is not None else SystemResolver()

    async def resolve(self, host: str, port: int) -> list[Address]:
        allowed = []
        refusals = []
        for family, resolved in await self._inner.resolve(host, port):
            address = _literal_address(resolved)
            refusal = "an unreadable address" if address is None else address_refusal(address)
            if refusal:
                refusals.append(refusal)
            else:
                allowed.append((family, resolved))
        if not allowed:
            raise RefusedAddress(f"{host} resolves to no allowed address ({'; '.join(refusals) or 'no address'})")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
