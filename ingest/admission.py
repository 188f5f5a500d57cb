"""Who may send events: per-address and per-site rate limits, and in SITES_MODE=registered
the site registry (only registered sites; browser events only from the site's domains).

Everything here reads memory: the registry is a copy kept current by sites.live.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from common.config import Settings
from common.ratelimit import TokenBuckets
from sites.live import LiveRegistry

SITE_NOT_REGISTERED = "site_not_registered"
ORIGIN_NOT_ALLOWED = "origin_not_allowed"


class RateLimited(Exception):
    """Too many requests from one address, or events for one site: retry after `seconds`."""

    def __init__(self, seconds: float, field: str):
        super().__init__(field)
        self.seconds = seconds
        self.field = field


class RegistryNotLoaded(Exception):
    """SITES_MODE=registered, and the registry has not been read yet: retry later."""


def address_key(ip: str) -> str:
    """The bucket of an address: IPv6 clients by their /64, which one host commonly holds
    whole (a single address would let it use 2^64 buckets)."""
    if ":" not in ip:
        return ip
    try:
        return str(ipaddress.IPv6Network((ip, 64), strict=False).network_address)
    except ValueError:
        return ip


class Admission:
    def __init__(self, settings: Settings, registry: LiveRegistry):
        self._registry = registry
        self._registered_only = settings.sites_mode == "registered"
        rate = settings.address_rate_limit
        self._addresses = TokenBuckets(rate, rate, "client addresses") if rate else None
        rate = settings.site_rate_limit
        self._sites = TokenBuckets(rate, rate, "sites") if rate else None

    def check_address(self, ip: str) -> None:
        """Before the body is read: RateLimited when the address is over its limit."""
        if self._addresses is not None:
            wait = self._addresses.take(address_key(ip))
            if wait:
                raise RateLimited(wait, "address")

    def sort(
        self, events: list[dict[str, Any]], origin: bytes | None
    ) -> dict[str, list[dict[str, Any]]] | None:
        """None when every event may be stored; else the events to ignore, by reason
        (the caller drops them). Raises RegistryNotLoaded."""
        if not self._registered_only:
            return None
        snapshot = self._registry.snapshot
        if snapshot is None:
            raise RegistryNotLoaded
        ignored: dict[str, list[dict[str, Any]]] | None = None
        for event in events:
            rule = snapshot.sites.get(event["site_id"])
            if rule is None:
                reason = SITE_NOT_REGISTERED
            elif origin is not None and not rule.allows_origin(origin):
                reason = ORIGIN_NOT_ALLOWED
            else:
                continue
            if ignored is None:
                ignored = {}
            ignored.setdefault(reason, []).append(event)
        return ignored

    def check_sites(self, events: list[dict[str, Any]]) -> None:
        """RateLimited when a site of these events is over its limit (then none is sent)."""
        if self._sites is None:
            return
        now = time.monotonic()
        counts: dict[str, int] = {}
        for event in events:
            counts[event["site_id"]] = counts.get(event["site_id"], 0) + 1
        for site, count in counts.items():
            wait = self._sites.take(site, count, now)
            if wait:
                raise RateLimited(wait, "site_id")
