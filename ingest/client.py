"""Who sent a request: the client's IP address, read once at the edge."""

from __future__ import annotations

import ipaddress

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientResolver:
    """X-Forwarded-For is believed only when the peer is a configured trusted proxy."""

    def __init__(self, trusted_proxies: str):
        self._trusted: list[_Network] = [
            ipaddress.ip_network(item.strip(), strict=False)
            for item in trusted_proxies.split(",")
            if item.strip()
        ]

    def client_ip(self, peer: str, forwarded_for: bytes | None) -> str:
        """`peer`: the address the connection came from; `forwarded_for`: the request's
        X-Forwarded-For header, if any."""
        if self._trusted and forwarded_for and self._is_trusted(peer):
            return self._client_from_chain(forwarded_for.decode("latin-1"), peer)
        return peer

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
