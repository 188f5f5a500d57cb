"""The registry as a server process sees it: a copy in memory of the sites and the active
API keys, reloaded whenever the database's registry version moves (each change to `sites`
or `api_keys` bumps it, sql/006), checked every REGISTRY_REFRESH_MS. Requests read the
copy: no database round trip per request, and a change reaches every process in seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

import asyncpg

from common.migrate import database_unavailable

logger = logging.getLogger(__name__)

_FIRST_LOAD_POLL_S = 0.02


@dataclasses.dataclass(frozen=True, slots=True)
class SiteRule:
    """Where a site's browser events may come from: `hosts` exactly, or any host ending
    in one of `suffixes` (".example.com", from "*.example.com", which names the bare
    host too); no domains at all: anywhere."""

    hosts: frozenset[str]
    suffixes: tuple[str, ...]

    @classmethod
    def from_domains(cls, domains: list[str]) -> SiteRule:
        hosts = {d.removeprefix("*.") for d in domains}
        suffixes = tuple("." + d.removeprefix("*.") for d in domains if d.startswith("*."))
        return cls(frozenset(hosts), suffixes)

    def allows_origin(self, origin: bytes) -> bool:
        if not self.hosts:
            return True
        host = origin_host(origin)
        return host in self.hosts or (bool(self.suffixes) and host.endswith(self.suffixes))


def origin_host(origin: bytes) -> str:
    """The lower-case hostname of an Origin header ("https://Shop.example:8443" ->
    "shop.example"); "" for "null" and anything else without one."""
    _, separator, rest = origin.partition(b"://")
    if not separator:
        return ""
    if rest.startswith(b"["):  # an IPv6 literal: [::1]:8080
        return rest[: rest.find(b"]") + 1].decode("latin-1").lower()
    return rest.partition(b":")[0].decode("latin-1").lower()


@dataclasses.dataclass(frozen=True, slots=True)
class KeyRule:
    """An active API key: its SHA-256 and the sites it may read (None: every site)."""

    key_hash: bytes
    site_ids: frozenset[str] | None

    def may_read(self, site_id: str) -> bool:
        return self.site_ids is None or site_id in self.site_ids


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    sites: dict[str, SiteRule]
    keys: dict[str, KeyRule]  # by prefix
    umami_sites: dict[str, str]  # Umami website id (canonical UUID text): site_id
    time_zones: dict[str, str] = dataclasses.field(default_factory=dict)  # site_id: IANA name


async def load(conn: asyncpg.Connection) -> Snapshot:
    """The whole registry as of one moment (one transaction: version and rows agree)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        version = await conn.fetchval("SELECT version FROM registry_version")
        sites = await conn.fetch(
            "SELECT site_id, domains, umami_website_id::text, time_zone FROM sites"
        )
        keys = await conn.fetch(
            "SELECT prefix, key_hash, site_ids FROM api_keys WHERE revoked_at IS NULL"
        )
    return Snapshot(
        version,
        {r["site_id"]: SiteRule.from_domains(r["domains"]) for r in sites},
        {
            r["prefix"]: KeyRule(bytes(r["key_hash"]), frozenset(r["site_ids"]) or None)
            for r in keys
        },
        {r["umami_website_id"]: r["site_id"] for r in sites if r["umami_website_id"]},
        {r["site_id"]: r["time_zone"] for r in sites},
    )


class LiveRegistry:
    """`snapshot` is None until the first load; after that, the last one loaded (kept
    through database outages: a registry that cannot be read has not changed)."""

    def __init__(self, pool: Callable[[], asyncpg.Pool | None], refresh_s: float):
        self._pool = pool
        self._refresh_s = refresh_s
        self.snapshot: Snapshot | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _follow(self) -> None:
        while True:
            pool = self._pool()
            if pool is not None:
                await self.refresh(pool)
            # Until the first copy, look often: requests wait on it (503 meanwhile).
            await asyncio.sleep(self._refresh_s if self.snapshot else _FIRST_LOAD_POLL_S)

    async def refresh(self, pool: asyncpg.Pool) -> None:
        try:
            async with pool.acquire() as conn:
                if self.snapshot is not None:
                    version = await conn.fetchval("SELECT version FROM registry_version")
                    if version == self.snapshot.version:
                        return
                snapshot = await load(conn)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if not self._failing:
                level = logging.WARNING if database_unavailable(exc) else logging.ERROR
                logger.log(level, "cannot read the site registry, keeping the last copy: %r", exc)
            self._failing = True
            return
        if self._failing:
            logger.info("reading the site registry again")
            self._failing = False
        first = self.snapshot is None
        self.snapshot = snapshot
        logger.info(
            "site registry version %d: %d sites, %d active API keys",
            snapshot.version,
            len(snapshot.sites),
            len(snapshot.keys),
        )
        if first and not snapshot.keys:
            logger.warning(
                "the reporting API is open to anyone: no API key exists "
                "(create one with `python -m sites key create`)"
            )
