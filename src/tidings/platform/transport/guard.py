"""Where the platform may send requests: the guard against server-side
request forgery (SSRF) and the scheme policy.

A webhook URL is chosen by a customer, so without a guard the platform would
POST wherever it is told: to its own database port, a cloud metadata service,
a router's admin page. The guard has three parts:

- ``normalize_target``: a URL's host read once, as an HTTP client reads it
  (IDNA/UTS-46 mapping, then the WHATWG URL host parser's IPv4 forms), and
  written back in one canonical form; a URL with credentials, an IPv6 zone id
  or a host that cannot be read is refused. The API stores the normalised
  URL, so what is connected to is what was checked.
- ``check_target_url``: the early, friendly refusal when a configuration is
  saved or a tryout asked for: the scheme, ``localhost`` names, a literal
  address.
- ``connect_address``: the decision itself, made by the transport on every
  address it is about to hand to a socket, a literal target's or a resolved
  name's, so a public-looking name that resolves to ``127.0.0.1`` (or changes
  its answer after the configuration was saved) is refused too.

Refused: every range of the IANA IPv4 and IPv6 special-purpose address
registries (``SPECIAL_PURPOSE_RANGES``, each with its name), multicast, the
deprecated IPv4-compatible and site-local IPv6 ranges, IPv6 outside the
global unicast range ``2000::/3``, and whatever else is not globally
routable. An IPv6 address that embeds an IPv4 address (IPv4-mapped,
IPv4-compatible, NAT64, 6to4, Teredo) is judged on its range and on the IPv4
address it carries.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote, urlsplit

import idna

__all__ = [
    "CREDENTIALS_REFUSAL",
    "SPECIAL_PURPOSE_RANGES",
    "RefusedAddress",
    "Resolver",
    "SpecialRange",
    "SystemResolver",
    "TargetPolicy",
    "TargetRefused",
    "address_refusal",
    "address_text",
    "check_target_url",
    "connect_address",
    "embedded_ipv4",
    "normalize_target",
    "scheme_refusal",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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
    """Raised while connecting when an address may not be connected to (an
    ``OSError``: it is a failure to connect)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------- the registries


@dataclass(frozen=True, slots=True)
class SpecialRange:
    """One range the platform never connects to: the registry's name for it,
    where it is defined, and what it is in a refusal's sentence."""

    network: IPNetwork
    name: str
    source: str
    kind: str  # "a loopback address"

    def describe(self) -> str:
        return f"{self.network} {self.name}, {self.source}"


def _range(network: str, name: str, source: str, kind: str) -> SpecialRange:
    return SpecialRange(ipaddress.ip_network(network), name, source, kind)


_EMBEDS = "an address that embeds an IPv4 address"

# The IANA IPv4 and IPv6 Special-Purpose Address Registries (iana-ipv4-special-registry,
# iana-ipv6-special-registry), every entry, whether or not the registry marks it globally
# reachable; then the ranges outside those registries that are no target either.
SPECIAL_PURPOSE_RANGES: tuple[SpecialRange, ...] = (
    # IPv4 Special-Purpose Address Registry
    _range("0.0.0.0/8", '"This network"', "RFC 791", "an unspecified ('this network') address"),
    _range("0.0.0.0/32", '"This host on this network"', "RFC 1122", "the unspecified address"),
    _range("10.0.0.0/8", "Private-Use", "RFC 1918", "a private address"),
    _range("100.64.0.0/10", "Shared Address Space", "RFC 6598", "a shared (carrier-grade NAT) address"),
    _range("127.0.0.0/8", "Loopback", "RFC 1122", "a loopback address"),
    _range("169.254.0.0/16", "Link Local", "RFC 3927", "a link-local address"),
    _range("172.16.0.0/12", "Private-Use", "RFC 1918", "a private address"),
    _range("192.0.0.0/24", "IETF Protocol Assignments", "RFC 6890", "a protocol-assignment address"),
    _range("192.0.0.0/29", "IPv4 Service Continuity Prefix", "RFC 7335", "a protocol-assignment address"),
    _range("192.0.0.8/32", "IPv4 dummy address", "RFC 7600", "a protocol-assignment address"),
    _range("192.0.0.9/32", "Port Control Protocol Anycast", "RFC 7723", "an anycast service address"),
    _range("192.0.0.10/32", "Traversal Using Relays around NAT Anycast", "RFC 8155", "an anycast service address"),
    _range("192.0.0.170/32", "NAT64/DNS64 Discovery", "RFC 8880", "a protocol-assignment address"),
    _range("192.0.0.171/32", "NAT64/DNS64 Discovery", "RFC 8880", "a protocol-assignment address"),
    _range("192.0.2.0/24", "Documentation (TEST-NET-1)", "RFC 5737", "a documentation address"),
    _range("192.31.196.0/24", "AS112-v4", "RFC 7535", "an anycast service address"),
    _range("192.52.193.0/24", "AMT", "RFC 7450", "an anycast service address"),
    _range("192.88.99.0/24", "Deprecated (6to4 Relay Anycast)", "RFC 7526", "a deprecated relay address"),
    _range("192.168.0.0/16", "Private-Use", "RFC 1918", "a private address"),
    _range("192.175.48.0/24", "Direct Delegation AS112 Service", "RFC 7534", "an anycast service address"),
    _range("198.18.0.0/15", "Benchmarking", "RFC 2544", "a benchmarking address"),
    _range("198.51.100.0/24", "Documentation (TEST-NET-2)", "RFC 5737", "a documentation address"),
    _range("203.0.113.0/24", "Documentation (TEST-NET-3)", "RFC 5737", "a documentation address"),
    _range("240.0.0.0/4", "Reserved", "RFC 1112", "a reserved address"),
    _range("255.255.255.255/32", "Limited Broadcast", "RFC 919", "the broadcast address"),
    # IPv6 Special-Purpose Address Registry
    _range("::1/128", "Loopback Address", "RFC 4291", "a loopback address"),
    _range("::/128", "Unspecified Address", "RFC 4291", "the unspecified address"),
    _range("::ffff:0:0/96", "IPv4-mapped Address", "RFC 4291", "an IPv4-mapped address"),
    _range("64:ff9b::/96", "IPv4-IPv6 Translat.", "RFC 6052", "a NAT64 address"),
    _range("64:ff9b:1::/48", "IPv4-IPv6 Translat.", "RFC 8215", "a local-use NAT64 address"),
    _range("100::/64", "Discard-Only Address Block", "RFC 6666", "a discard-only address"),
    _range("100:0:0:1::/64", "Dummy IPv6 Prefix", "RFC 9780", "a dummy address"),
    _range("2001::/23", "IETF Protocol Assignments", "RFC 2928", "a protocol-assignment address"),
    _range("2001::/32", "TEREDO", "RFC 4380", "a Teredo address"),
    _range("2001:1::1/128", "Port Control Protocol Anycast", "RFC 7723", "an anycast service address"),
    _range("2001:1::2/128", "Traversal Using Relays around NAT Anycast", "RFC 8155", "an anycast service address"),
    _range("2001:1::3/128", "DNS-SD Service Registration Protocol Anycast", "RFC 9665",
           "an anycast service address"),
    _range("2001:2::/48", "Benchmarking", "RFC 5180", "a benchmarking address"),
    _range("2001:3::/32", "AMT", "RFC 7450", "an anycast service address"),
    _range("2001:4:112::/48", "AS112-v6", "RFC 7535", "an anycast service address"),
    _range("2001:10::/28", "Deprecated (previously ORCHID)", "RFC 4843", "an overlay identifier"),
    _range("2001:20::/28", "ORCHIDv2", "RFC 7343", "an overlay identifier"),
    _range("2001:30::/28", "Drone Remote ID Protocol Entity Tags (DETs) Prefix", "RFC 9374",
           "an overlay identifier"),
    _range("2001:db8::/32", "Documentation", "RFC 3849", "a documentation address"),
    _range("2002::/16", "6to4", "RFC 3056", "a 6to4 address"),
    _range("2620:4f:8000::/48", "Direct Delegation AS112 Service", "RFC 7534", "an anycast service address"),
    _range("3fff::/20", "Documentation", "RFC 9637", "a documentation address"),
    _range("5f00::/16", "Segment Routing (SRv6) SIDs", "RFC 9602", "a segment-routing identifier"),
    _range("fc00::/7", "Unique-Local", "RFC 4193", "a private (unique local) address"),
    _range("fe80::/10", "Link-Local Unicast", "RFC 4291", "a link-local address"),
    # Outside those two registries
    _range("224.0.0.0/4", "Multicast", "RFC 5771", "a multicast address"),
    _range("::/96", "IPv4-compatible IPv6 address (deprecated)", "RFC 4291", "an IPv4-compatible address"),
    _range("fec0::/10", "Site-local (deprecated)", "RFC 3879", "a site-local address"),
    _range("ff00::/8", "Multicast", "RFC 4291", "a multicast address"),
)

_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")


def _most_specific_range(address: IPAddress) -> SpecialRange | None:
    best = None
    for special in SPECIAL_PURPOSE_RANGES:
        if address.version == special.network.version and address in special.network:
            if best is None or special.network.prefixlen > best.network.prefixlen:
                best = special
    return best


def embedded_ipv4(address: IPAddress) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries: the last 32 bits of an
    IPv4-mapped, IPv4-compatible (but ``::`` and ``::1``) or NAT64
    (``64:ff9b::/96``) address, bits 16 to 48 of a 6to4 address, a Teredo
    address's client and server."""
    if address.version == 4:
        return ()
    if address in _MAPPED or address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):
        return (ipaddress.IPv4Address(int(address) & 0xFFFFFFFF),)
    if address in _SIX_TO_FOUR:
        return (ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF),)
    if address in _TEREDO:
        server, client = address.teredo
        return (client, server)
    return ()


def address_text(address: IPAddress) -> str:
    """An address in canonical text: dotted IPv4, or IPv6 as the WHATWG URL
    standard writes it (lowercase hexadecimal, the first longest run of at
    least two zero pieces compressed), the same under every Python version."""
    if address.version == 4:
        return str(address)
    value = int(address)
    pieces = [(value >> (112 - 16 * index)) & 0xFFFF for index in range(8)]
    start, length = -1, 1
    index = 0
    while index < 8:
        end = index
        while end < 8 and pieces[end] == 0:
            end += 1
        if end - index > length:
            start, length = index, end - index
        index = max(end, index + 1)
    if start < 0:
        return ":".join(f"{piece:x}" for piece in pieces)
    head = ":".join(f"{piece:x}" for piece in pieces[:start])
    tail = ":".join(f"{piece:x}" for piece in pieces[start + length:])
    return f"{head}::{tail}"


def _own_refusal(address: IPAddress) -> str | None:
    special = _most_specific_range(address)
    if special is not None:
        return f"{special.kind} ({special.describe()})"
    if address.version == 6 and address not in _GLOBAL_UNICAST:
        return "an address outside the global unicast range 2000::/3"
    if not address.is_global:
        return "not a globally routable address"
    return None


def address_refusal(address: IPAddress) -> str | None:
    """Why ``address`` may not be a target, or ``None`` when it may.

    Decided on the address's own range and, for an IPv6 address that embeds
    IPv4 addresses, on each of those too."""
    own = _own_refusal(address)
    carried = embedded_ipv4(address)
    verdicts = [(ipv4, _own_refusal(ipv4)) for ipv4 in carried]
    if own is None and all(refusal is None for _, refusal in verdicts):
        return None
    reason = f"{address_text(address)} is {own or 'an address that embeds a refused IPv4 address'}"
    if verdicts:
        reason += "; it carries " + " and ".join(
            f"{ipv4}, {refusal or 'a public address'}" for ipv4, refusal in verdicts)
    return reason


# ---------------------------------------------------------------- the URL, normalised

CREDENTIALS_REFUSAL = ("the URL holds credentials (user:password@), which are refused so that they are never "
                       "stored or shown; send a credential in a custom header of the configuration instead "
                       "(custom_headers, e.g. X-Authorization)")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
_DECIMAL = frozenset("0123456789")
_RADIX_DIGITS = {10: _DECIMAL, 8: frozenset("01234567"), 16: frozenset("0123456789abcdefABCDEF")}
MAX_HOST_LENGTH = 253
MAX_LABEL_LENGTH = 63


@functools.lru_cache(maxsize=4096)  # pure, and called for every new target
def normalize_target(url: str) -> str:
    """``url`` with its scheme in lowercase and its host in canonical form
    (an ASCII A-label name without a trailing dot, a dotted IPv4 address, or
    a bracketed IPv6 address), the default port dropped and an empty path
    made ``/``; the rest as given. Raises ``TargetRefused`` with the reason
    for a URL that is not ``http(s)://``, holds credentials, or whose host or
    port cannot be read.

    The host is read as an HTTP client reads it: percent-decoded, mapped by
    IDNA/UTS-46 (so fullwidth, circled and mathematical digits become ASCII
    digits, and the full stops ``。．｡`` become ``.``), and, when its last
    label is a number,
    parsed as the WHATWG URL standard's IPv4 forms (``2130706433``,
    ``0177.0.0.1``, ``0x7f.1``, ``127.1``)."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise TargetRefused("the URL contains whitespace or a control character")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise TargetRefused(f"the URL cannot be read: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise TargetRefused(f"the URL must use https://, not {scheme + '://' if scheme else 'no scheme'}")
    if url[len(parts.scheme):len(parts.scheme) + 3] != "://":
        raise TargetRefused(f"the URL must start with {scheme}:// and a host")
    netloc = parts.netloc
    if "\\" in netloc:
        raise TargetRefused("the URL's host holds a backslash, which URL parsers read in different ways")
    if "@" in netloc:
        raise TargetRefused(CREDENTIALS_REFUSAL)
    host_text, port_text = _split_authority(netloc)
    host = _canonical_host(host_text)
    port = _canonical_port(port_text, scheme)
    rest = url[len(parts.scheme) + 3 + len(netloc):]
    if not rest.startswith("/"):
        rest = "/" + rest  # an empty path is "/", before a query or a fragment too
    return f"{scheme}://{host}{port}{rest}"


def _split_authority(netloc: str) -> tuple[str, str | None]:
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise TargetRefused("the URL's IPv6 address has no closing ]")
        after = netloc[end + 1:]
        if after and not after.startswith(":"):
            raise TargetRefused("the URL has characters after its IPv6 address that are not a port")
        return netloc[:end + 1], after[1:] if after else None
    if "[" in netloc or "]" in netloc:
        raise TargetRefused("the URL's host holds [ or ] outside an IPv6 address")
    host, colon, port = netloc.partition(":")
    return host, port if colon else None


def _canonical_port(text: str | None, scheme: str) -> str:
    if not text:
        return ""
    if not _DECIMAL.issuperset(text):
        raise TargetRefused(f"the URL's port {text[:20]!r} is not a number")
    digits = text.lstrip("0")
    port = int(digits or "0") if len(digits) <= 5 else 65536
    if not 1 <= port <= 65535:
        raise TargetRefused("the URL's port must be between 1 and 65535")
    return "" if port == _DEFAULT_PORTS[scheme] else f":{port}"


def _canonical_host(text: str) -> str:
    if not text:
        raise TargetRefused("the URL has no host")
    if text.startswith("["):
        return f"[{address_text(_ipv6_literal(text[1:-1]))}]"
    try:
        decoded = unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise TargetRefused("the URL's host is percent-encoded but not as UTF-8") from None
    if decoded.isascii():
        name = decoded.lower()
    else:
        try:
            name = idna.encode(decoded, uts46=True, std3_rules=False, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise TargetRefused(f"the host {decoded[:80]!r} is not a valid domain name: {exc}") from None
    labels = name.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()  # one trailing dot: the same host
    if _ends_in_a_number(labels[-1]):
        ipv4 = _ipv4_value(labels)
        if ipv4 is None:
            raise TargetRefused(f"the host {decoded[:80]!r} reads as an IPv4 address but is not a valid one")
        return str(ipaddress.IPv4Address(ipv4))
    for label in labels:
        _check_label(label, decoded)
    host = ".".join(labels)
    if len(host) > MAX_HOST_LENGTH:
        raise TargetRefused(f"the host is {len(host)} characters long; at most {MAX_HOST_LENGTH}")
    return host


def _ipv6_literal(text: str) -> ipaddress.IPv6Address:
    if "%" in text:
        raise TargetRefused("an IPv6 address with a zone id (%...) is not a target")
    if not text.isascii():
        raise TargetRefused(f"the IPv6 address {text[:60]!r} holds characters other than ASCII")
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        raise TargetRefused(f"[{text[:60]}] is not a valid IPv6 address") from None


def _check_label(label: str, host: str) -> None:
    if not label:
        raise TargetRefused(f"the host {host[:80]!r} has an empty label")
    if len(label) > MAX_LABEL_LENGTH:
        raise TargetRefused(f"the host {host[:80]!r} has a label longer than {MAX_LABEL_LENGTH} characters")
    if not _LABEL_CHARACTERS.issuperset(label):
        shown = "".join(sorted(set(label) - _LABEL_CHARACTERS))
        raise TargetRefused(f"the host {host[:80]!r} holds characters not allowed in a host name: {shown[:20]!r}")
    if label.startswith("xn--"):
        try:
            idna.decode(label)
        except (idna.IDNAError, UnicodeError) as exc:
            raise TargetRefused(f"the host {host[:80]!r} has an invalid international label: {exc}") from None


def _ipv4_number(text: str) -> int | None:
    """One part of a WHATWG IPv4 host: decimal, octal (leading 0) or hexadecimal (0x)."""
    if not text:
        return None
    radix = 10
    if len(text) >= 2 and text[:2] in ("0x", "0X"):
        text, radix = text[2:], 16
    elif len(text) >= 2 and text[0] == "0":
        text, radix = text[1:], 8
    if not text:
        return 0
    if not _RADIX_DIGITS[radix].issuperset(text):
        return None
    try:
        return int(text, radix)
    except ValueError:  # more digits than Python converts
        return None


def _ends_in_a_number(label: str) -> bool:
    return bool(label) and (_DECIMAL.issuperset(label) or _ipv4_number(label) is not None)


def _ipv4_value(labels: list[str]) -> int | None:
    """The WHATWG IPv4 parser: up to four parts, each but the last at most 255,
    the last filling the remaining bytes (``127.1`` is ``127.0.0.1``)."""
    if len(labels) > 4:
        return None
    numbers = [_ipv4_number(label) for label in labels]
    if any(number is None for number in numbers):
        return None
    *leading, last = numbers
    if any(number > 255 for number in leading) or last >= 256 ** (5 - len(numbers)):
        return None
    return last + sum(number << (8 * (3 - index)) for index, number in enumerate(leading))


# ---------------------------------------------------------------- the checks


def scheme_refusal(url: str, policy: TargetPolicy) -> str | None:
    """Why the policy refuses a normalised URL's scheme, or ``None``."""
    if url.startswith("https://") or (url.startswith("http://") and policy.allow_http):
        return None
    if url.startswith("http://"):
        return "plain http:// is not allowed; use https://"
    return "the URL must use https://"


def check_target_url(url: str, policy: TargetPolicy) -> str:
    """The normalised URL (``normalize_target``); raises ``TargetRefused`` for
    one the policy does not allow.

    The early refusal, for what can be known without resolving the name: the
    scheme, ``localhost`` names, a literal address. Every address is decided
    again when connecting (``connect_address``)."""
    normalized = normalize_target(url)
    refusal = scheme_refusal(normalized, policy)
    if refusal:
        raise TargetRefused(refusal)
    if policy.allow_private:
        return normalized
    host = urlsplit(normalized).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        raise TargetRefused(f"{host} is a loopback name")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return normalized  # a name: decided when connecting, on what it resolves to
    refusal = address_refusal(address)
    if refusal:
        raise TargetRefused(refusal)
    return normalized


def connect_address(text: str, policy: TargetPolicy) -> IPAddress:
    """The address a socket may be handed for ``text`` (a literal target's
    host, or one of the addresses a name resolved to), read strictly: only
    plain IPv4 dotted quads and IPv6 text, no zone id. Raises
    ``RefusedAddress`` when it is not such an address or the policy refuses it."""
    try:
        if not text.isascii() or "%" in text:
            raise ValueError(text)
        address = ipaddress.ip_address(text)
    except ValueError:
        raise RefusedAddress(f"{text[:60]!r} is not an IP address that can be connected to") from None
    if not policy.allow_private:
        refusal = address_refusal(address)
        if refusal:
            raise RefusedAddress(refusal)
    return address


# ---------------------------------------------------------------- resolving names

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
