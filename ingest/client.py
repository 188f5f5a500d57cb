"""Who sent a request: the client's IP address, read once at the edge."""

from __future__ import annotations

import ipaddress

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


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
        if self._trusted and forwarded_for and self.is_trusted(peer):
            return self._client_from_chain(forwarded_for.decode("latin-1"), peer)
        return peer

    def _client_from_chain(self, forwarded: str, peer: str) -> str:
        """The rightmost hop that no trusted proxy wrote, as an address without its port.

        Each proxy appends the address it saw, so we walk from the right: trusted hops
        are skipped, the first untrusted address is the client, and anything left of it
        could have been written by the client itself.

        A hop that is no address (`unknown`, an obfuscated `_hidden`, garbage) where the
        client should be ends the walk at the last trusted hop: the proxy that wrote it
        could not name its client, and every hop further left is unverifiable, so
        believing one would let any client choose its own address (and visitor id).
        All such clients then share that proxy's address: one visitor, but not a forged one.
        """
        for hop in reversed(forwarded.split(",")):
            parsed = _hop_address(hop.strip())
            if parsed is None:
                return peer
            address, ip = parsed
            if not any(ip in network for network in self._trusted):
                return address
            peer = address
        return peer

    def is_trusted(self, address: str) -> bool:
        if not self._trusted:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)


def _hop_address(hop: str) -> tuple[str, _Address] | None:
    """The address of one X-Forwarded-For hop, as written and parsed, in any form that
    proxies write: `a.b.c.d`, `a.b.c.d:port` (Azure, some HAProxy set-ups), bare IPv6
    (nginx, Caddy, AWS ALB, GCP), `[v6]` and `[v6]:port`. None for anything else. Told
    apart by the colons, without trying every parser on every hop. The text is kept as
    the proxy wrote it (IPv4-mapped IPv6 too), as the peer's is: Python's spelling of
    some addresses differs between versions."""
    try:
        if hop.startswith("["):
            address, bracket, rest = hop[1:].partition("]")
            if bracket and (not rest or (rest[0] == ":" and _is_port(rest[1:]))):
                return address, ipaddress.IPv6Address(address)
            return None
        colons = hop.count(":")
        if colons == 0:
            return hop, ipaddress.IPv4Address(hop)
        if colons == 1:  # bare IPv6 has at least two: one colon is IPv4 and a port
            address, _, port = hop.partition(":")
            return (address, ipaddress.IPv4Address(address)) if _is_port(port) else None
        return hop, ipaddress.IPv6Address(hop)
    except ValueError:
        return None


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and int(text) <= 65_535
