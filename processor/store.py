"""Writing one batch: COPY into staging, then one set-based statement, in one transaction.

Only events whose (site_id, event_id) is new to `event_ids` are inserted into `events` and
reach the aggregates, so a redelivered batch (committed, then not acknowledged before a
crash) finds its keys stored already and changes nothing. Every multi-row write goes in key order, so that processors
writing at the same time take row locks in the same order and cannot deadlock.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import date

import asyncpg

from common.constants import MICROS_PER_DAY, PAGE_VIEW, STAGING_TABLE
from processor.decode import COLUMNS, Row
from processor.enrich import Origin
from processor.useragents import Client

logger = logging.getLogger(__name__)

_UNIX_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# PostgreSQL counts time in microseconds since 2000-01-01 UTC, the stream since 1970-01-01.
_PG_EPOCH_MICROS = 946_684_800_000_000

# The text columns derived from url, referrer and User-Agent (sql/007).
_DIMENSION_COLUMNS = ",\n    ".join(
    f'{column} text COLLATE "C"' for column in (*Origin._fields, *Client._fields)
)

# ON COMMIT DELETE ROWS empties it after every batch; being temporary, it writes no WAL.
CREATE_STAGING = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING_TABLE} (
    event_id    uuid NOT NULL,
    site_id     text COLLATE "C" NOT NULL,
    event_type  text COLLATE "C" NOT NULL,
    path        text COLLATE "C" NOT NULL,
    user_id     text COLLATE "C",
    "timestamp" timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    visitor_id  uuid,
    client_ip   inet,
    user_agent  text,
    {_DIMENSION_COLUMNS},
    screen_width integer,
    country     text COLLATE "C",
    props       jsonb,
    interactive boolean NOT NULL
) ON COMMIT DELETE ROWS
"""

_COLUMN_LIST = ", ".join(f'"{column}"' for column in COLUMNS)
_STAGED_COLUMNS = ", ".join(f's."{column}"' for column in COLUMNS)

STORE_STAGED = f"""
WITH new_ids AS (
    -- The idempotency check: only (site, event_id) pairs never stored before go on.
    INSERT INTO event_ids (event_id, site_id, date)
    SELECT DISTINCT ON (event_id, site_id) event_id, site_id, ("timestamp" AT TIME ZONE 'UTC')::date
    FROM {STAGING_TABLE}
    ORDER BY event_id, site_id
    ON CONFLICT (event_id, site_id) DO NOTHING
    RETURNING event_id, site_id
),
inserted AS (
    INSERT INTO events ({_COLUMN_LIST})
    -- DISTINCT ON: a batch may hold the same event twice (a client's retry).
    SELECT DISTINCT ON (s.event_id, s.site_id) {_STAGED_COLUMNS}
    FROM {STAGING_TABLE} AS s JOIN new_ids USING (event_id, site_id)
    ORDER BY s.event_id, s.site_id
    RETURNING site_id, event_type, path, user_id, visitor_id,
        ("timestamp" AT TIME ZONE 'UTC')::date AS date
),
new_users AS (
    INSERT INTO daily_site_users (site_id, date, user_id)
    SELECT DISTINCT site_id, date, user_id FROM inserted
    WHERE user_id IS NOT NULL
    ORDER BY site_id, date, user_id
    ON CONFLICT DO NOTHING
    RETURNING site_id, date
),
-- Visitors known only by their hash (no user_id) are counted beside the users.
new_visitors AS (
    INSERT INTO daily_site_visitors (site_id, date, visitor_id)
    SELECT DISTINCT site_id, date, visitor_id FROM inserted
    WHERE user_id IS NULL AND visitor_id IS NOT NULL
    ORDER BY site_id, date, visitor_id
    ON CONFLICT DO NOTHING
    RETURNING site_id, date
),
views_per_day AS (
    SELECT site_id, date, count(*) AS views FROM inserted
    WHERE event_type = '{PAGE_VIEW}'
    GROUP BY site_id, date
),
users_per_day AS (
    SELECT site_id, date, count(*) AS users
    FROM (SELECT * FROM new_users UNION ALL SELECT * FROM new_visitors) AS newcomers
    GROUP BY site_id, date
),
-- Neither stats nor paths is read by the final SELECT: PostgreSQL runs such writes after
-- it, the later-declared first (ExecPostprocessPlan), so stats, declared before paths,
-- runs last. Every batch updates the same few rows here and concurrent writers wait on
-- each other's locks of them until commit: the later they are taken, the shorter that wait.
stats AS (
    INSERT INTO daily_site_stats AS s (site_id, date, total_views, unique_users)
    SELECT site_id, date, coalesce(v.views, 0), coalesce(u.users, 0)
    FROM views_per_day AS v FULL JOIN users_per_day AS u USING (site_id, date)
    ORDER BY site_id, date
    ON CONFLICT (site_id, date) DO UPDATE
    SET total_views = s.total_views + excluded.total_views,
        unique_users = s.unique_users + excluded.unique_users
),
paths AS (
    INSERT INTO daily_site_path_counts AS p (site_id, date, path, views)
    SELECT site_id, date, path, count(*) FROM inserted
    WHERE event_type = '{PAGE_VIEW}'
    GROUP BY site_id, date, path
    ORDER BY site_id, date, path
    ON CONFLICT (site_id, date, path) DO UPDATE SET views = p.views + excluded.views
)
SELECT (SELECT count(*) FROM inserted) AS inserted,
    (SELECT count(*) FROM new_users) + (SELECT count(*) FROM new_visitors) AS new_users
"""


# SITES_MODE=registered: events of sites not in the registry are dropped before they are
# stored. The batch's sites rows are locked (FOR KEY SHARE) until commit, so that
# `python -m sites remove --delete-data` runs wholly before this batch (whose events are
# then dropped) or wholly after it (and deletes them): none is left behind.
DROP_UNREGISTERED = f"""
WITH registered AS (
    SELECT site_id FROM sites WHERE site_id IN (SELECT site_id FROM {STAGING_TABLE})
    ORDER BY site_id
    FOR KEY SHARE
)
DELETE FROM {STAGING_TABLE} WHERE site_id NOT IN (SELECT site_id FROM registered)
"""


@dataclasses.dataclass(frozen=True, slots=True)
class StoreResult:
    inserted: int  # rows new to `events`; the rest were stored before (duplicates)
    new_users: int  # users and visitors new to their site and day


class PartitionUnavailable(Exception):
    """A monthly partition of `events` could not be made (a table of its name that is
    not a partition, say). Not the data's fault: the batch waits, pending, and is retried
    until an operator has fixed it."""


class EventStore:
    """Stores batches, creating the monthly partitions of `events` they need first.

    Partitions known to exist are remembered; one dropped meanwhile by retention (in any
    process) shows as a missing partition, which clears the memory and retries once.
    """

    def __init__(self, pool: asyncpg.Pool, *, registered_only: bool = False):
        self._pool = pool
        self._registered_only = registered_only
        self._months: set[date] = set()

    async def store(self, rows: list[Row]) -> StoreResult:
        async with self._pool.acquire() as conn:
            for attempt in (1, 2):
                await self._ensure_partitions(conn, rows)
                try:
                    return await store_rows(conn, rows, registered_only=self._registered_only)
                except asyncpg.CheckViolationError as exc:
                    if "no partition" not in str(exc):
                        raise
                    self._months.clear()
                    if attempt == 2:
                        raise PartitionUnavailable(
                            f"a monthly partition of events is missing and cannot be "
                            f"created (is a table of its name in the way?): {exc}"
                        ) from exc
        raise AssertionError("unreachable")

    async def stored_keys(self, rows: list[Row]) -> set[tuple[str, str]]:
        """Which of these rows' (site_id, event_id) are stored already."""
        async with self._pool.acquire() as conn:
            found = await conn.fetch(
                "SELECT site_id, event_id::text FROM event_ids"
                " WHERE (event_id, site_id) IN"
                " (SELECT * FROM unnest($1::uuid[], $2::text[]))",
                [row[0] for row in rows],
                [row[1] for row in rows],
            )
        return {(record["site_id"], record["event_id"]) for record in found}

    async def ensure_months(self, conn: asyncpg.Connection, months: set[date]) -> None:
        missing = months - self._months
        if missing:
            await conn.execute(ENSURE_PARTITIONS, [month.isoformat() for month in sorted(missing)])
            self._months |= missing

    async def _ensure_partitions(self, conn: asyncpg.Connection, rows: list[Row]) -> None:
        days = {row[5] // MICROS_PER_DAY for row in rows}  # integer work per row, dates per day
        months = {date.fromordinal(_UNIX_EPOCH_ORDINAL + day).replace(day=1) for day in days}
        await self.ensure_months(conn, months)


# Months go as ISO text: asyncpg sends date.min (0001-01-01) as -infinity, which no
# partition bound can be.
ENSURE_PARTITIONS = "SELECT ensure_events_partition(month::date) FROM unnest($1::text[]) AS month"


async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Per-connection set-up (asyncpg pool `init`): the session's staging table, and
    timestamptz sent and read as integers of microseconds since the Unix epoch, as the
    stream carries them (no datetime built per value on either side)."""
    await use_epoch_micros(conn)
    await conn.execute(CREATE_STAGING)


async def use_epoch_micros(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        format="tuple",
        encoder=lambda micros: (micros - _PG_EPOCH_MICROS,),
        decoder=lambda value: value[0] + _PG_EPOCH_MICROS,
    )


async def store_rows(
    conn: asyncpg.Connection, rows: list[Row], *, registered_only: bool = False
) -> StoreResult:
    async with conn.transaction():
        await conn.copy_records_to_table(STAGING_TABLE, records=rows, columns=COLUMNS)
        if registered_only:
            status = await conn.execute(DROP_UNREGISTERED)
            dropped = int(status.split()[-1])
            if dropped:
                logger.info("dropped %d events of sites not registered", dropped)
        record = await conn.fetchrow(STORE_STAGED)
    assert record is not None
    return StoreResult(inserted=record["inserted"], new_users=record["new_users"])
