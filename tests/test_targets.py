"""The SSRF guard: what a configuration may point at, when it is saved and
again when connecting, after the name is resolved."""

from __future__ import annotations

import ipaddress
import socket

import pytest

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
from tidings.platform.transport.lean import LeanTransport
from tidings.platform.transport.guard import (
    GuardedResolver,
    RefusedAddress,
    TargetPolicy,
    TargetRefused,
    address_refusal,
    check_target_url,
)

STRICT = TargetPolicy()
OPEN = TargetPolicy(allow_private=True, allow_http=True)


@pytest.mark.parametrize("url", [
    "https://hooks.example.com/x", "https://93.184.216.34/hook", "https://[2606:4700::1111]/x",
    "https://example.com:8443/a?b=c", "HTTPS://EXAMPLE.COM/",
])
def test_public_https_targets_pass(url):
    check_target_url(url, STRICT)


@pytest.mark.parametrize("url,why", [
    ("http://hooks.example.com/x", "http://"),
    ("ftp://hooks.example.com/x", "https://"),
    ("https:///nohost", "no host"),
    ("https://localhost/x", "loopback"),
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
    ("https://100.64.0.1/x", "not a globally routable"),
    ("https://224.0.0.1/x", "multicast"),
    ("https://example.com:99999/x", "cannot be read"),
])
def test_refused_targets_say_why(url, why):
    with pytest.raises(TargetRefused) as refused:
        check_target_url(url, STRICT)
    assert why in refused.value.reason


def test_the_switches_allow_http_and_private_targets():
    check_target_url("http://127.0.0.1:8000/x", OPEN)
    check_target_url("https://192.168.1.1/x", TargetPolicy(allow_private=True))
    with pytest.raises(TargetRefused):
        check_target_url("http://192.168.1.1/x", TargetPolicy(allow_private=True))
    with pytest.raises(TargetRefused):
        check_target_url("http://127.0.0.1/x", TargetPolicy(allow_http=True))


@pytest.mark.parametrize("address,refused", [("8.8.8.8", False), ("2001:4860:4860::8888", False),
                                             ("127.0.0.1", True), ("::ffff:10.0.0.1", True),
                                             ("169.254.1.1", True), ("192.0.2.1", True)])
def test_address_refusal(address, refused):
    assert (address_refusal(ipaddress.ip_address(address)) is not None) is refused


class FixedResolver:
    """Resolves every name to the given addresses (a DNS answer the test chooses)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(self, host, port):
        return [(socket.AF_INET, address) for address in self.addresses]

    async def close(self):
        pass


async def test_a_name_that_resolves_to_loopback_is_refused_when_resolving():
    with pytest.raises(RefusedAddress) as refused:
        await GuardedResolver(FixedResolver("127.0.0.1")).resolve("innocent.example", 443)
    assert "127.0.0.1 is a loopback address" in refused.value.reason
    # Among several addresses only the allowed ones are used; here none is left but loopback.
    with pytest.raises(RefusedAddress):
        await GuardedResolver(FixedResolver("10.0.0.1", "127.0.0.1")).resolve("innocent.example", 443)


async def test_a_resolved_public_address_is_kept():
    guarded = GuardedResolver(FixedResolver("93.184.216.34", "127.0.0.1"))
    assert [address for _, address in await guarded.resolve("example.com", 443)] == ["93.184.216.34"]


async def test_the_transport_refuses_a_private_target_without_a_request():
    async with scripted_endpoint(hook=[200]) as endpoint:
        transport = LeanTransport(TargetPolicy(allow_http=True), attempt_timeout=2)
        try:
            answer = await transport.post(endpoint.url("/hook"), b"{}", {})
        finally:
            await transport.close()
        assert answer.status_code is None and answer.error_kind == "refused_target"
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
