"""Who sent a request: the client's IP address and User-Agent, read once at the edge."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from ingest.asgi import RequestHead

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientInfo(NamedTuple):
    ip: str
    user_agent: str


class ClientResolver:
    """X-Forwarded-For is believed only when the peer is a configured trusted proxy."""

    def __init__(self, trusted_proxies: str):
        self._trusted: list[_Network] = [
            ipaddress.ip_network(item.strip(), strict=False)
            for item in trusted_proxies.split(",")
            if item.strip()
        ]

    def resolve(self, peer: str, head: RequestHead) -> ClientInfo:
        """`peer`: the address the connection came from."""
        user_agent = head.user_agent.decode("latin-1")
        if self._trusted and head.forwarded_for and self._is_trusted(peer):
            peer = self._client_from_chain(head.forwarded_for.decode("latin-1"), peer)
        return ClientInfo(peer, user_agent)

    def _client_from_chain(self, forwarded: str, peer: str) -> str:
        # Each proxy appends the address it saw: the first untrusted one from the right
        # is the client; anything left of it could have been written by the client itself.
        for hop in reversed([h.strip() for h in forwarded.split(",")]):
            if not _valid_ip(hop):
                return peer
            if not self._is_trusted(hop):
                return hop
            peer = hop
        return peer

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)


def _valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
