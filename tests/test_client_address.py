"""The client's address behind trusted proxies, in every form proxies write hops in."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import httpx
import pytest
import redis.asyncio as redis

from common.config import Settings
from ingest.client import ClientResolver
from tests.test_ingest_http import stream_events

PROXIES = "10.0.0.0/8, fd00::/8"
PROXY = "10.1.2.3"


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [
        # Ports, as Azure and some HAProxy or load-balancer set-ups append them.
        ("203.0.113.7:51234", "203.0.113.7"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),  # bare IPv6: colons, but no port
        ("2001:DB8::1", "2001:DB8::1"),  # as the proxy wrote it
        ("2001:db8::1:443", "2001:db8::1:443"),  # a bare IPv6 is never cut at a colon
        ("::ffff:203.0.113.7", "::ffff:203.0.113.7"),
        ("[::ffff:203.0.113.7]:8080", "::ffff:203.0.113.7"),
        ("[fe80::1%eth0]:443", "fe80::1%eth0"),
        # Trusted hops with ports are skipped like those without.
        ("203.0.113.7:51234, 10.0.0.9:443", "203.0.113.7"),
        ("198.51.100.1, [2001:db8::2]:1, [fd00::9]:443, 10.0.0.9", "2001:db8::2"),
        (" 203.0.113.7:51234 ,10.0.0.9 ", "203.0.113.7"),
        # Not an address where the client should be: the last trusted hop (see the docstring).
        ("unknown", PROXY),
        ("_hidden", PROXY),
        ("203.0.113.7, unknown", PROXY),
        ("203.0.113.7, _hidden, 10.0.0.9:443", "10.0.0.9"),
        ("unknown, 203.0.113.7:1", "203.0.113.7"),  # left of the client: never read
        # Ports that are not ports, brackets that do not close, IPv4 in brackets.
        ("203.0.113.7:", PROXY),
        ("203.0.113.7:http", PROXY),
        ("203.0.113.7:65536", PROXY),
        ("203.0.113.7:\u0665", PROXY),  # a digit, but not an ASCII one
        ("[2001:db8::1]443", PROXY),
        ("[2001:db8::1]:", PROXY),
        ("[2001:db8::1", PROXY),
        ("[203.0.113.7]:80", PROXY),
        ("203.0.113.7, ", PROXY),
    ],
)
def test_forwarded_hops_with_ports_brackets_or_no_address(forwarded: str, client: str) -> None:
    resolver = ClientResolver(PROXIES)
    assert resolver.client_ip(PROXY, forwarded.encode("latin-1", "replace")) == client


def test_an_untrusted_peer_is_the_client_whatever_it_forwards() -> None:
    assert ClientResolver(PROXIES).client_ip("198.51.100.1", b"203.0.113.7:1") == "198.51.100.1"


async def test_clients_behind_a_trusted_proxy_sending_ports_are_different_visitors(
    settings: Settings, redis_client: redis.Redis, start_server: Callable[[Settings], str]
) -> None:
    """Two clients behind a proxy that writes `ip:port` hops: two visitors, not the proxy's
    one; the same client from another port is still the same visitor."""
    configured = dataclasses.replace(settings, trusted_proxies="127.0.0.1")
    hops = ["203.0.113.7:51234", "198.51.100.9:51234", "203.0.113.7:60001", "[2001:db8::1]:443"]
    async with httpx.AsyncClient(base_url=start_server(configured), timeout=10) as http:
        for hop in hops:
            response = await http.post(
                "/event",
                json={"site_id": "s", "event_type": "page_view"},
                headers={"user-agent": "Firefox", "x-forwarded-for": hop},
            )
            assert response.status_code == 202
    visitors = [event["visitor_id"] for event in await stream_events(redis_client, settings)]
    assert len(visitors) == 4
    assert visitors[0] == visitors[2]  # the port is not part of the client
    assert len({visitors[0], visitors[1], visitors[3]}) == 3


async def test_each_event_gets_its_clients_country_and_never_its_address(
    settings: Settings, redis_client: redis.Redis, start_server: Callable[[Settings], str]
) -> None:
    """The country comes from the client's address (behind the proxy, not the proxy's);
    private addresses have none; the address itself stays at the edge."""
    configured = dataclasses.replace(settings, trusted_proxies="127.0.0.1")
    # Google's and Deutsche Telekom's public resolvers, a private address, and IPv6.
    hops = ["8.8.8.8", "194.25.0.60", "10.1.2.3", "2001:4860:4860::8888"]
    async with httpx.AsyncClient(base_url=start_server(configured), timeout=10) as http:
        for hop in hops:
            response = await http.post(
                "/event",
                json={"site_id": "s", "event_type": "page_view"},
                headers={"user-agent": "Firefox", "x-forwarded-for": hop},
            )
            assert response.status_code == 202
    events = await stream_events(redis_client, settings)
    assert [event.get("country") for event in events] == ["US", "DE", None, "US"]
    assert not any(hop in str(event) for event in events for hop in hops)
