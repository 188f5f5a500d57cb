"""The sites table: reads and writes of the registry, each in one statement or transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from common.constants import WRITTEN_TABLES
from sites.model import Site, SiteError

_COLUMNS = "site_id, domains, time_zone, created_at, updated_at, umami_website_id::text"
# A deletion may deadlock with a processor's writes to the same rows (the processor
# retries too): the loser's transaction is rolled back whole and run again.
_ATTEMPTS = 5
T = TypeVar("T")


async def _retrying(work: Callable[[], Awaitable[T]]) -> T:
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return await work()
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == _ATTEMPTS:
                raise
            await asyncio.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


def _site(record: asyncpg.Record) -> Site:
    return Site(
        record["site_id"],
        tuple(record["domains"]),
        record["time_zone"],
        record["created_at"],
        record["updated_at"],
        record["umami_website_id"],
    )


async def add(
    conn: asyncpg.Connection,
    site_id: str,
    domains: list[str],
    time_zone: str,
    umami_website_id: str | None = None,
) -> Site:
    try:
        record = await conn.fetchrow(
            f"INSERT INTO sites (site_id, domains, time_zone, umami_website_id)"
            f" VALUES ($1, $2, $3, $4::uuid)"
            f" ON CONFLICT (site_id) DO NOTHING RETURNING {_COLUMNS}",
            site_id,
            sorted(set(domains)),
            time_zone,
            umami_website_id,
        )
    except asyncpg.UniqueViolationError:
        raise _website_taken(umami_website_id) from None
    if record is None:
        raise SiteError(f"site {site_id!r} is registered already")
    return _site(record)


def _website_taken(umami_website_id: str | None) -> SiteError:
    return SiteError(f"Umami website id {umami_website_id} belongs to another site already")


async def all_sites(conn: asyncpg.Connection) -> list[Site]:
    return [_site(r) for r in await conn.fetch(f"SELECT {_COLUMNS} FROM sites ORDER BY site_id")]


async def get(conn: asyncpg.Connection, site_id: str) -> Site:
    record = await conn.fetchrow(f"SELECT {_COLUMNS} FROM sites WHERE site_id = $1", site_id)
    if record is None:
        raise SiteError(f"site {site_id!r} is not registered")
    return _site(record)


async def update(
    conn: asyncpg.Connection,
    site_id: str,
    *,
    add_domains: list[str],
    remove_domains: list[str],
    time_zone: str | None,
    umami_website_id: str | None = None,
    drop_umami_website_id: bool = False,
) -> Site:
    """One statement: the domains, the time zone and the Umami website id change together
    or not at all."""
    try:
        record = await conn.fetchrow(
            f"""UPDATE sites SET
                domains = ARRAY(
                    SELECT DISTINCT d FROM unnest(domains || $2::text[]) AS d
                    WHERE d <> ALL($3::text[]) ORDER BY d
                ),
                time_zone = coalesce($4, time_zone),
                umami_website_id = CASE WHEN $6 THEN NULL
                    ELSE coalesce($5::uuid, umami_website_id) END,
                updated_at = now()
            WHERE site_id = $1
            RETURNING {_COLUMNS}""",
            site_id,
            add_domains,
            remove_domains,
            time_zone,
            umami_website_id,
            drop_umami_website_id,
        )
    except asyncpg.UniqueViolationError:
        raise _website_taken(umami_website_id) from None
    if record is None:
        raise SiteError(f"site {site_id!r} is not registered")
    return _site(record)


async def remove(conn: asyncpg.Connection, site_id: str, *, delete_data: bool) -> dict[str, int]:
    """Unregister the site; with `delete_data`, also delete its rows in every table the
    processor writes and its API keys (a key for several sites loses this one), in the
    same transaction. Returns the rows deleted per table.

    The sites row goes first: processors in SITES_MODE=registered hold it (FOR KEY SHARE)
    while they store its events, so this waits for them, and they drop its events after."""

    async def attempt() -> dict[str, int]:
        deleted: dict[str, int] = {}
        async with conn.transaction():
            status = await conn.execute("DELETE FROM sites WHERE site_id = $1", site_id)
            if status == "DELETE 0":
                raise SiteError(f"site {site_id!r} is not registered")
            if delete_data:
                for table in WRITTEN_TABLES:
                    status = await conn.execute(f"DELETE FROM {table} WHERE site_id = $1", site_id)
                    deleted[table] = _count(status)
                status = await conn.execute(
                    "DELETE FROM api_keys WHERE site_ids = ARRAY[$1::text]", site_id
                )
                deleted["api_keys"] = _count(status)
                await conn.execute(
                    "UPDATE api_keys SET site_ids = array_remove(site_ids, $1)"
                    " WHERE $1 = ANY(site_ids)",
                    site_id,
                )
        return deleted

    return await _retrying(attempt)


async def erase_user(conn: asyncpg.Connection, site_id: str, user_id: str) -> dict[str, int]:
    """Delete one user's raw events and visits (visitor_days) of a site, in one transaction.
    Aggregate counts stay as they are: they identify no one. (`events` has no index on
    user_id: this reads every partition, which suits a rare request.)"""

    async def attempt() -> dict[str, int]:
        deleted: dict[str, int] = {}
        async with conn.transaction():
            status = await conn.execute(
                "DELETE FROM events WHERE site_id = $1 AND user_id = $2", site_id, user_id
            )
            deleted["events"] = _count(status)
            # The user's visits, by their visitor key (sql/009).
            status = await conn.execute(
                "DELETE FROM visitor_days WHERE site_id = $1 AND visitor = visitor_key($2, NULL)",
                site_id,
                user_id,
            )
            deleted["visitor_days"] = _count(status)
        return deleted

    return await _retrying(attempt)


def _count(status: str) -> int:
    return int(status.split()[-1])
