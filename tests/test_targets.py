"""The SSRF guard's pure parts: a URL normalised as an HTTP client reads it,
the early check when a configuration is saved, the special-purpose registry
table, and the decision on an address about to be connected to; then the
dispatcher refusing a loopback delivery without a request."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tests.dispatcher_support import (
    add_configuration,
    add_events,
    add_organization,
    attempt_rows,
    database,
    delivery_rows,
    fast_settings,
    new_signer,
    scripted_endpoint,
)
from tidings.platform.dispatcher import Dispatcher
from tidings.platform.transport.guard import (
    SPECIAL_PURPOSE_RANGES,
    RefusedAddress,
    TargetPolicy,
    TargetRefused,
    address_refusal,
    address_text,
    check_target_url,
    connect_address,
    embedded_ipv4,
    normalize_target,
)
from tidings.platform.transport.lean import LeanTransport

STRICT = TargetPolicy()
OPEN = TargetPolicy(allow_private=True, allow_http=True)


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize("url,canonical", [
    # names: IDNA/UTS-46, case, a trailing dot, the default port, an empty path
    ("https://hooks.example.com/x", "https://hooks.example.com/x"),
    ("HTTPS://HOOKS.Example.COM", "https://hooks.example.com/"),
    ("https://hooks.example.com.:443/x?a=1#f", "https://hooks.example.com/x?a=1#f"),
    ("https://example.com:8443?b=c", "https://example.com:8443/?b=c"),
    ("https://example.com:/", "https://example.com/"),
    ("https://Bücher.DE/x", "https://xn--bcher-kva.de/x"),
    ("https://ｅｘａｍｐｌｅ。ｃｏｍ/", "https://example.com/"),
    ("https://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/", "https://localhost/"),
    ("https://exa%2Emple.com/", "https://exa.mple.com/"),
    ("https://xn--nxasmq6b.com/", "https://xn--nxasmq6b.com/"),
    ("https://my_service.example/", "https://my_service.example/"),
    # IPv4 in every form the WHATWG host parser reads
    ("https://①②⑦.0.0.1/x", "https://127.0.0.1/x"),
    ("https://１２７.０.０.１/", "https://127.0.0.1/"),
    ("https://127。0。0。1/", "https://127.0.0.1/"),
    ("https://127．0．0．1/", "https://127.0.0.1/"),
    ("https://127｡0｡0｡1/", "https://127.0.0.1/"),
    ("https://𝟏𝟐𝟕.𝟎.𝟎.𝟏/", "https://127.0.0.1/"),
    ("https://𝟙𝟘.𝟘.𝟘.𝟙/", "https://10.0.0.1/"),
    ("http://2130706433/", "http://127.0.0.1/"),
    ("http://0177.0.0.1/", "http://127.0.0.1/"),
    ("http://0x7f.1/", "http://127.0.0.1/"),
    ("http://0X7F.0X0.0X0.0X1/", "http://127.0.0.1/"),
    ("http://127.1/", "http://127.0.0.1/"),
    ("http://10.1.65535/", "http://10.1.255.255/"),
    ("http://127.0.0.1./", "http://127.0.0.1/"),
    ("http://0/", "http://0.0.0.0/"),
    ("http://0x/", "http://0.0.0.0/"),
    ("http://127.0.0.%31/", "http://127.0.0.1/"),
    ("http://0xa9.0376.43518/", "http://169.254.169.254/"),
    # IPv6 literals, written as the WHATWG URL standard writes them
    ("https://[::FFFF:127.0.0.1]:443/", "https://[::ffff:7f00:1]/"),
    ("https://[0:0:0:0:0:0:0:1]/", "https://[::1]/"),
    ("https://[2001:db8:0:0:1:0:0:1]/", "https://[2001:db8::1:0:0:1]/"),
    ("https://[2606:4700:0:0:0:0:0:1111]:8443/x", "https://[2606:4700::1111]:8443/x"),
])
def test_a_url_is_normalised_as_an_http_client_reads_it(url, canonical):
    assert normalize_target(url) == canonical
    assert normalize_target(canonical) == canonical  # the canonical form is a fixed point


@pytest.mark.parametrize("url,why", [
    ("https://user:secret@hooks.example.com/x", "credentials"),
    ("https://token@hooks.example.com/x", "custom_headers"),
    ("https://hooks.example.com@127.0.0.1/x", "credentials"),
    ("https://[fe80::1%25eth0]/x", "zone id"),
    ("https://[fe80::1%eth0]/x", "zone id"),
    ("https://[::1/x", "cannot be read"),
    ("https://[::1]x/", "not a port"),
    ("https://[１::1]/", "cannot be read"),
    ("https://[v1.fe]/", "not a valid IPv6"),
    ("https://127.0.0.1\\@evil.example/", "backslash"),
    ("https://1.2.3.4.5/", "not a valid one"),
    ("https://256.0.0.1/", "not a valid one"),
    ("https://1.16777216/", "not a valid one"),
    ("https://09.1/", "not a valid one"),
    ("https://foo.0x10/", "not a valid one"),
    ("https://a..b/", "empty label"),
    ("https://-ü.example/", "not a valid domain name"),
    ("https://a b.example/", "whitespace"),
    ("https://a%20b.example/", "not allowed in a host name"),
    ("https://a%3Ab.example/", "not allowed in a host name"),
    ("https://%ff.example/", "UTF-8"),
    ("https://xn--.example/", "international label"),
    ("https://١٢٧.0.0.1/", "not a valid"),
    ("https://example.com:99999/x", "between 1 and 65535"),
    ("https://example.com:0/x", "between 1 and 65535"),
    ("https://example.com:８０/x", "not a number"),
    ("https:///nohost", "no host"),
    ("https:example.com", "must start with https://"),
    ("ftp://hooks.example.com/x", "https://"),
    ("hooks.example.com/x", "https://"),
])
def test_a_url_that_cannot_be_read_safely_is_refused_with_a_reason(url, why):
    with pytest.raises(TargetRefused) as refused:
        normalize_target(url)
    assert why in refused.value.reason


def test_the_credentials_refusal_points_to_custom_headers():
    with pytest.raises(TargetRefused) as refused:
        normalize_target("https://user:p%40ss@hooks.example.com/x")
    assert "custom_headers" in refused.value.reason and "p@ss" not in refused.value.reason


# ---------------------------------------------------------------- the early check


@pytest.mark.parametrize("url", [
    "https://hooks.example.com/x", "https://93.184.216.34/hook", "https://[2606:4700::1111]/x",
    "https://example.com:8443/a?b=c", "HTTPS://EXAMPLE.COM/",
])
def test_public_https_targets_pass(url):
    assert check_target_url(url, STRICT) == normalize_target(url)


@pytest.mark.parametrize("url,why", [
    ("http://hooks.example.com/x", "http://"),
    ("ftp://hooks.example.com/x", "https://"),
    ("https:///nohost", "no host"),
    ("https://localhost/x", "loopback"),
    ("https://LOCALHOST./x", "loopback"),
    ("https://api.localhost/x", "loopback"),
    ("https://127.0.0.1/x", "loopback"),
    ("https://127.1.2.3:8080/x", "loopback"),
    ("https://[::1]/x", "loopback"),
    ("https://[::ffff:127.0.0.1]/x", "loopback"),
    ("https://10.1.2.3/x", "private"),
    ("https://172.16.0.1/x", "private"),
    ("https://192.168.1.1/x", "private"),
    ("https://[fd00::1]/x", "private"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://[fe80::1]/x", "link-local"),
    ("https://0.0.0.0/x", "unspecified"),
    ("https://100.64.0.1/x", "shared"),
    ("https://224.0.0.1/x", "multicast"),
    ("https://[64:ff9b::a00:1]/x", "NAT64"),
    ("https://[2002:c0a8:101::1]/x", "6to4"),
    ("https://[::7f00:1]/x", "IPv4-compatible"),
    ("https://example.com:99999/x", "between 1 and 65535"),
])
def test_refused_targets_say_why(url, why):
    with pytest.raises(TargetRefused) as refused:
        check_target_url(url, STRICT)
    assert why in refused.value.reason


def test_the_switches_allow_http_and_private_targets():
    assert check_target_url("http://127.0.0.1:8000/x", OPEN) == "http://127.0.0.1:8000/x"
    assert check_target_url("https://192.168.1.1/x", TargetPolicy(allow_private=True)) == "https://192.168.1.1/x"
    with pytest.raises(TargetRefused):
        check_target_url("http://192.168.1.1/x", TargetPolicy(allow_private=True))
    with pytest.raises(TargetRefused):
        check_target_url("http://127.0.0.1/x", TargetPolicy(allow_http=True))
    with pytest.raises(TargetRefused, match="credentials"):  # whatever the switches
        check_target_url("http://u:p@127.0.0.1:8000/x", OPEN)


# ---------------------------------------------------------------- the registry table


def addresses_of(network) -> list:
    """The first, a middle and the last address of a range."""
    first, last = int(network.network_address), int(network.broadcast_address)
    return [ipaddress.ip_address(value) for value in sorted({first, (first + last) // 2, last})]


@pytest.mark.parametrize("special", SPECIAL_PURPOSE_RANGES, ids=lambda special: str(special.network))
def test_every_range_of_the_table_is_refused(special):
    for address in addresses_of(special.network):
        refusal = address_refusal(address)
        assert refusal is not None and refusal.startswith(address_text(address))
        with pytest.raises(RefusedAddress):
            connect_address(str(address), STRICT)


def test_the_table_holds_the_registries_ranges_that_is_global_misses():
    networks = {str(special.network) for special in SPECIAL_PURPOSE_RANGES}
    assert {"192.0.0.9/32", "192.31.196.0/24", "192.88.99.0/24", "64:ff9b::/96", "64:ff9b:1::/48",
            "2002::/16", "2001::/32", "2620:4f:8000::/48", "3fff::/20", "5f00::/16", "::/96",
            "::ffff:0:0/96", "224.0.0.0/4", "ff00::/8"} <= networks
    for address in ("192.0.0.9", "224.0.0.1", "ff0e::1"):  # what is_global alone lets through
        assert ipaddress.ip_address(address).is_global
    for address in ("192.0.0.9", "192.88.99.1", "64:ff9b::808:808", "2002:808:808::1", "3fff::1",
                    "5f00::1", "::8.8.8.8", "ff0e::1", "224.0.0.1", "2620:4f:8000::1"):
        assert address_refusal(ipaddress.ip_address(address)) is not None


def test_a_range_is_named_by_its_most_specific_entry():
    assert "TEREDO" in address_refusal(ipaddress.ip_address("2001::1"))
    assert "IETF Protocol Assignments" in address_refusal(ipaddress.ip_address("2001:1ff::1"))
    assert "this host on this network" in address_refusal(ipaddress.ip_address("0.0.0.0")).lower()
    assert "Private-Use" in address_refusal(ipaddress.ip_address("10.9.8.7"))


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "1.1.1.1", "2606:4700::1111",
                                     "2001:4860:4860::8888", "2a00:1450:4007:80e::200e"])
def test_public_addresses_are_allowed(address):
    assert address_refusal(ipaddress.ip_address(address)) is None
    assert connect_address(address, STRICT) == ipaddress.ip_address(address)


@pytest.mark.parametrize("address,carried,refused", [
    ("::ffff:7f00:1", ["127.0.0.1"], "loopback"),
    ("::ffff:808:808", ["8.8.8.8"], "public"),
    ("::a00:1", ["10.0.0.1"], "private"),
    ("64:ff9b::a9fe:a9fe", ["169.254.169.254"], "link-local"),
    ("2002:c0a8:101::1", ["192.168.1.1"], "private"),
    ("2002:7f00:1::", ["127.0.0.1"], "loopback"),
    # Teredo: the client's address is stored inverted, the server's as it is
    ("2001:0:a00:1:0:0:80ff:fffe", ["127.0.0.1", "10.0.0.1"], "loopback"),
])
def test_an_embedded_ipv4_address_is_judged_too(address, carried, refused):
    parsed = ipaddress.ip_address(address)
    assert [str(ipv4) for ipv4 in embedded_ipv4(parsed)] == carried
    refusal = address_refusal(parsed)
    assert refusal is not None and f"carries {carried[0]}" in refusal and refused in refusal


def ipv4_addresses():
    return st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)


def ipv6_addresses():
    return st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


@given(st.one_of(ipv4_addresses(), ipv6_addresses(),
                 st.sampled_from(SPECIAL_PURPOSE_RANGES).flatmap(
                     lambda special: st.integers(int(special.network.network_address),
                                                 int(special.network.broadcast_address))
                     .map(ipaddress.ip_address))))
def test_whatever_python_calls_not_global_is_refused_and_every_allowed_address_is_global(address):
    refusal = address_refusal(address)
    python_refuses = not address.is_global or address.is_multicast or address.is_reserved or (
        address.version == 6 and (address.ipv4_mapped is not None or address.sixtofour is not None
                                  or address.teredo is not None or address.is_site_local))
    event("refused" if refusal else "allowed")
    if python_refuses:
        assert refusal is not None
    if refusal is None:
        assert address.is_global and not address.is_multicast
        assert connect_address(address_text(address), STRICT) == address


# ---------------------------------------------------------------- the connect-time decision


@pytest.mark.parametrize("text", ["0177.0.0.1", "127.1", "2130706433", "0x7f.0.0.1", "１２７.０.０.１",
                                  "fe80::1%eth0", "localhost", "", "127.0.0.1 "])
def test_only_plain_addresses_are_handed_to_a_socket(text):
    with pytest.raises(RefusedAddress, match="not an IP address"):
        connect_address(text, STRICT)
    with pytest.raises(RefusedAddress, match="not an IP address"):  # whatever the policy
        connect_address(text, OPEN)


def test_the_policy_may_allow_private_addresses_at_connect_time():
    assert connect_address("127.0.0.1", OPEN) == ipaddress.ip_address("127.0.0.1")
    with pytest.raises(RefusedAddress, match="loopback"):
        connect_address("127.0.0.1", TargetPolicy(allow_http=True))


# ---------------------------------------------------------------- through the transport and the dispatcher


async def test_the_transport_refuses_a_private_target_without_a_request():
    async with scripted_endpoint(hook=[200]) as endpoint:
        transport = LeanTransport(TargetPolicy(allow_http=True), attempt_timeout=2)
        try:
            answer = await transport.post(endpoint.url("/hook"), b"{}", {})
        finally:
            await transport.close()
        assert answer.status_code is None and answer.error_kind == "refused_target"
        assert "loopback" in answer.error
        assert endpoint.received == []


async def test_a_dispatcher_without_allow_private_fails_a_loopback_delivery_at_once(sqlite_url):
    signer = new_signer()
    async with scripted_endpoint(hook=[200]) as endpoint, database(sqlite_url) as engine:
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, endpoint.url("/hook"))
        await add_events(engine, signer, org_id, 1)
        await Dispatcher(engine, signer, fast_settings(allow_private_targets=False)).run_until_idle()
        [delivery] = await delivery_rows(engine)
        [attempt] = await attempt_rows(engine)
        assert delivery.status == "failed" and attempt.error.startswith("refused_target")
        assert endpoint.received == []
