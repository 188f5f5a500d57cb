"""Who may send events: per-address and per-site rate limits (counted per second), and in
SITES_MODE=registered the site registry (only registered sites; browser events only from
the site's domains).

Everything here reads memory: the registry is a copy kept current by sites.live.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from common.config import Settings
from common.ratelimit import SecondCounts
from sites.live import LiveRegistry

SITE_NOT_REGISTERED = "site_not_registered"
ORIGIN_NOT_ALLOWED = "origin_not_allowed"


class RateLimited(Exception):
    """Too many requests from one address, or events for one site, in this second."""

    def __init__(self, field: str):
        super().__init__(field)
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
    """The checks of every request, cheap where they are on: per-second counts (one timer
    starts them afresh), and a registry lookup per event in registered mode."""

    def __init__(self, settings: Settings, registry: LiveRegistry):
        self._registry = registry
        self._registered_only = settings.sites_mode == "registered"
        limit = settings.address_rate_limit
        # Counted by the endpoint itself, before it reads a body (see address_key).
        self.addresses = SecondCounts(limit, "client addresses") if limit else None
        limit = settings.site_rate_limit
        self._sites = SecondCounts(limit, "sites") if limit else None
        # Whether submitted events need looking at (else the intake skips both calls).
        self.checks_events = self._registered_only or self._sites is not None
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start the counts afresh every second, from now on (in the server's loop)."""
        loop = asyncio.get_running_loop()

        def next_second() -> None:
            for counts in (self.addresses, self._sites):
                if counts is not None:
                    counts.reset()
            self._timer = loop.call_later(1.0, next_second)

        self._timer = loop.call_later(1.0, next_second)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def umami_site(self, website_id: str) -> str:
        """The site that an Umami website id names (`python -m sites add
        --umami-website`); the id itself where none does."""
        snapshot = self._registry.snapshot
        if snapshot is None:
            return website_id
        return snapshot.umami_sites.get(website_id, website_id)

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
        """RateLimited when a site of these events is over its limit (then none is sent;
        sites counted before it in this request keep their count)."""
        if self._sites is None:
            return
        counts: dict[str, int] = {}
        for event in events:
            counts[event["site_id"]] = counts.get(event["site_id"], 0) + 1
        for site, count in counts.items():
            if self._sites.over(site, count):
                raise RateLimited("site_id")
