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
from processor.counting import BatchCount, VisitorDay, VisitorDayRows, count_events
from processor.days import LocalDays, VisitorKeys
from processor.decode import COLUMNS, STAGED_COLUMNS, Row
from processor.enrich import Origin
from processor.months import reopen, write_horizon
from processor.rollups import (
    APPLY,
    CREATE_CHANGE_TABLES,
    CREATE_VISITOR_DAYS,
    LOCK_VISITOR_DAYS,
    ROLLUP_CHANGES,
    VISITOR_DAY_WRITES,
    RollupChanges,
)
from processor.tally import DROPPED_CTES, RECORD_DUPLICATES, STORED_CTE, repeats_of
from processor.useragents import Client
from processor.visits import merge

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
    interactive boolean NOT NULL,
    entry_id    bytea NOT NULL
) ON COMMIT DELETE ROWS
"""

_COLUMN_LIST = ", ".join(f'"{column}"' for column in COLUMNS)
_STAGED_COLUMNS = ", ".join(f's."{column}"' for column in COLUMNS)

# The idempotency check, where both statements below start: only (site, event_id) pairs
# never stored before go on.
_NEW_IDS = f"""new_ids AS (
    -- The idempotency check: only (site, event_id) pairs never stored before go on.
    INSERT INTO event_ids (event_id, site_id, date, entry_id)
    SELECT event_id, site_id, ("timestamp" AT TIME ZONE 'UTC')::date, entry_id
    FROM {STAGING_TABLE}
    ORDER BY event_id, site_id
    ON CONFLICT (event_id, site_id) DO NOTHING
    RETURNING event_id, site_id, date
),
{STORED_CTE}"""

# The staged events whose (site, event_id) is new, into `events` (both statements below).
_INSERT_NEW = f"""INSERT INTO events ({_COLUMN_LIST})
    SELECT {_STAGED_COLUMNS}
    FROM {STAGING_TABLE} AS s JOIN new_ids USING (event_id, site_id)"""

# Stores the staged events whose (site, event_id) is new; counts them ($1: how many were
# staged, all distinct) and names the rest only when some were stored before; and gives
# the time zones of the batch's sites ($2) that have one other than UTC.
STORE_STAGED = f"""
WITH {_NEW_IDS},
inserted AS (
    {_INSERT_NEW}
    RETURNING 1
),
inserted_count AS (SELECT count(*) AS n FROM inserted),
stored_before AS (
    SELECT s.site_id, s.event_id::text FROM {STAGING_TABLE} AS s
    WHERE NOT EXISTS (
        SELECT FROM new_ids AS n WHERE n.event_id = s.event_id AND n.site_id = s.site_id
    )
),
zones AS (
    SELECT site_id, time_zone FROM sites
    WHERE site_id = ANY($2::text[]) AND time_zone <> 'UTC'
)
SELECT (SELECT n FROM inserted_count) AS inserted,
    CASE WHEN (SELECT n FROM inserted_count) < $1
        THEN (SELECT array_agg(site_id || ' ' || event_id) FROM stored_before)
    END AS stored_before,
    (SELECT array_agg(site_id) FROM zones) AS zone_sites,
    (SELECT array_agg(time_zone) FROM zones) AS zone_names
"""


# Without visits, the whole batch in one statement: the events new to `event_ids` stored,
# and counted on the day of their site's time zone: page views and events of the site and
# the page, and the visitor-days new to `visitor_days` as visitors.
STORE_AND_COUNT = f"""
WITH {_NEW_IDS},
inserted AS (
    {_INSERT_NEW}
    RETURNING site_id, event_type, path, visitor_key(user_id, visitor_id) AS visitor,
        "timestamp"
),
counted AS (
    SELECT i.site_id, i.event_type, i.path, i.visitor,
        (i."timestamp" AT TIME ZONE coalesce(z.time_zone, 'UTC'))::date AS date
    FROM inserted AS i LEFT JOIN sites AS z USING (site_id)
),
new_visitors AS (
    INSERT INTO visitor_days (site_id, date, visitor)
    SELECT DISTINCT site_id, date, visitor FROM counted
    WHERE visitor IS NOT NULL
    ORDER BY site_id, date, visitor
    ON CONFLICT DO NOTHING
    RETURNING site_id, date
),
per_day AS (
    SELECT site_id, date, count(*) FILTER (WHERE event_type = '{PAGE_VIEW}') AS views,
        count(*) AS events
    FROM counted GROUP BY site_id, date
),
visitors_per_day AS (
    SELECT site_id, date, count(*) AS visitors FROM new_visitors GROUP BY site_id, date
),
-- Neither stats nor paths is read by the final SELECT: PostgreSQL runs such writes after
-- it, the later-declared first (ExecPostprocessPlan), so stats, declared before paths,
-- runs last. Every batch updates the same few rows here and concurrent writers wait on
-- each other's locks of them until commit: the later they are taken, the shorter that wait.
stats AS (
    INSERT INTO daily_site_stats AS s (site_id, date, total_views, unique_users, events)
    SELECT site_id, date, coalesce(d.views, 0), coalesce(v.visitors, 0), coalesce(d.events, 0)
    FROM per_day AS d FULL JOIN visitors_per_day AS v USING (site_id, date)
    ORDER BY site_id, date
    ON CONFLICT (site_id, date) DO UPDATE
    SET total_views = s.total_views + excluded.total_views,
        unique_users = s.unique_users + excluded.unique_users,
        events = s.events + excluded.events
),
paths AS (
    INSERT INTO daily_site_path_counts AS p (site_id, date, path, views)
    SELECT site_id, date, path, count(*) FROM counted
    WHERE event_type = '{PAGE_VIEW}'
    GROUP BY site_id, date, path
    ORDER BY site_id, date, path
    ON CONFLICT (site_id, date, path) DO UPDATE SET views = p.views + excluded.views
)
SELECT (SELECT count(*) FROM inserted) AS inserted,
    (SELECT count(*) FROM new_visitors) AS new_users
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
, dropped AS (
    DELETE FROM {STAGING_TABLE} WHERE site_id NOT IN (SELECT site_id FROM registered)
    RETURNING entry_id, site_id, "timestamp"
),
{DROPPED_CTES}
SELECT count(*), array_agg(DISTINCT site_id) FROM dropped
"""


@dataclasses.dataclass(frozen=True, slots=True)
class StoreResult:
    inserted: int  # rows new to `events`
    new_users: int  # users and visitors new to their site and day
    # entries whose event another entry stored, counted now (not by an earlier delivery)
    duplicates: int = 0

    def __add__(self, other: StoreResult) -> StoreResult:
        return StoreResult(
            self.inserted + other.inserted,
            self.new_users + other.new_users,
            self.duplicates + other.duplicates,
        )


class PartitionUnavailable(Exception):
    """A monthly partition of `events` could not be made (a table of its name that is
    not a partition, say). Not the data's fault: the batch waits, pending, and is retried
    until an operator has fixed it."""


class EventStore:
    """Stores batches, creating the monthly partitions of `events` they need first.

    Partitions known to exist are remembered; one dropped meanwhile by retention (in any
    process) shows as a missing partition, which clears the memory and retries once.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        registered_only: bool = False,
        counting: Counting | None = None,
    ):
        self._pool = pool
        self._registered_only = registered_only
        self._months: set[date] = set()
        self._counting = counting or Counting()

    async def store(self, rows: list[Row]) -> StoreResult:
        async with self._pool.acquire() as conn:
            for attempt in (1, 2):
                await self._ensure_partitions(conn, rows)
                try:
                    return await store_rows(
                        conn, rows, registered_only=self._registered_only, counting=self._counting
                    )
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
        await self.ensure_months(conn, months_of(rows))


def months_of(rows: list[Row]) -> set[date]:
    """The months (their first days, UTC) of the rows' events: the partitions they need."""
    days = {row[5] // MICROS_PER_DAY for row in rows}  # integer work per row, dates per day
    return {date.fromordinal(_UNIX_EPOCH_ORDINAL + day).replace(day=1) for day in days}


# Months go as ISO text: asyncpg sends date.min (0001-01-01) as -infinity, which no
# partition bound can be.
ENSURE_PARTITIONS = "SELECT ensure_events_partition(month::date) FROM unnest($1::text[]) AS month"


async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Per-connection set-up (asyncpg pool `init`): the session's staging table, and
    timestamptz sent and read as integers of microseconds since the Unix epoch, as the
    stream carries them (no datetime built per value on either side)."""
    await use_epoch_micros(conn)
    await conn.execute(CREATE_STAGING)
    await conn.execute(CREATE_CHANGE_TABLES)


async def use_epoch_micros(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        format="tuple",
        encoder=lambda micros: (micros - _PG_EPOCH_MICROS,),
        decoder=lambda value: value[0] + _PG_EPOCH_MICROS,
    )


async def store_rows(
    conn: asyncpg.Connection,
    rows: list[Row],
    *,
    registered_only: bool = False,
    counting: Counting | None = None,
) -> StoreResult:
    """Store the rows and count the new ones, in one transaction: COPY to staging, store
    the events new to `event_ids`, lock their visitor-days (returning their visits so
    far), count, and apply the changes to every rollup."""
    counting = counting or Counting()
    received = rows
    rows = unique = list({(row[1], row[0]): row for row in rows}.values())  # a client's retries
    async with conn.transaction():
        await conn.copy_records_to_table(STAGING_TABLE, records=rows, columns=STAGED_COLUMNS)
        if registered_only:
            dropped, dropped_sites = await conn.fetchrow(DROP_UNREGISTERED)
            if dropped:
                logger.info("dropped %d events of sites not registered", dropped)
                gone = set(dropped_sites)
                rows = [row for row in rows if row[1] not in gone]
        if not counting.visits:
            counted = await conn.fetchrow(STORE_AND_COUNT)
            assert counted is not None
            await _reopen_old_months(conn, rows, counting)
            duplicates = await _record_duplicates(
                conn, received, unique, counted["inserted"] < len(rows)
            )
            return StoreResult(counted["inserted"], counted["new_users"], duplicates)
        record = await conn.fetchrow(STORE_STAGED, len(rows), list({row[1] for row in rows}))
        assert record is not None
        duplicates = await _record_duplicates(
            conn, received, unique, record["inserted"] < len(rows)
        )
        if record["stored_before"]:
            before = set(record["stored_before"])
            rows = [row for row in rows if f"{row[1]} {row[0]}" not in before]
        zones = dict(zip(record["zone_sites"] or (), record["zone_names"] or (), strict=True))
        batch = count_events(
            rows,
            zones,
            counting.local_days,
            counting.visitor_keys,
            known=counting.due,
        )
        written = await _count_visitor_days(conn, batch) if batch.visitor_days else None
        await apply_changes(conn, batch.changes, written or VisitorDayRows())
        await _reopen_old_months(conn, rows, counting)
    if written is not None:
        counting.remember_due(batch.fresh, written)
    counting.newest = max(counting.newest, max((row[5] for row in rows), default=0))
    return StoreResult(record["inserted"], batch.changes.new_visitors(), duplicates)


async def _record_duplicates(
    conn: asyncpg.Connection, received: list[Row], unique: list[Row], some_not_new: bool
) -> int:
    """Count the batch's duplicates in the ledger (processor/tally.py): only needed when
    some staged entry was not new, or repeated another of the batch."""
    if not some_not_new and len(unique) == len(received):
        return 0
    return int(await conn.fetchval(RECORD_DUPLICATES, *repeats_of(received, unique)))


async def _reopen_old_months(conn: asyncpg.Connection, rows: list[Row], counting: Counting) -> None:
    """Events older than the edge accepts may be of a closed month (processor/months.py)."""
    horizon = write_horizon(counting.max_age_s)
    old = {(row[1], row[5] // MICROS_PER_DAY) for row in rows if row[5] // MICROS_PER_DAY < horizon}
    await reopen(conn, old)


# About 200 bytes each: at most some 40 MB.
MAX_REMEMBERED_DUE = 200_000


@dataclasses.dataclass(slots=True)
class Counting:
    """How a processor counts (with visits or not), and what it remembers between
    batches: time zone offsets, user_id hashes, visitor-days due to be folded."""

    visits: bool = False
    # MAX_AGE_SECONDS: older events may be of a closed month (processor/months.py).
    max_age_s: int = 7 * 86_400
    local_days: LocalDays = dataclasses.field(default_factory=LocalDays)
    visitor_keys: VisitorKeys = dataclasses.field(default_factory=VisitorKeys)
    newest: int = 0  # the latest event time stored, microseconds since 1970 (folding.py)
    # The last read of new entries took all there were: no backlog (folding.py).
    caught_up: bool = False
    # Visitor-days written since they were last folded, and when their last visit ends.
    due: dict[VisitorDay, int] = dataclasses.field(default_factory=dict)

    def remember_due(self, *written: VisitorDayRows) -> None:
        """Bounded: a processor that cannot remember them all leaves the rest to the
        sweep for them (folding.py), which finds them in the table."""
        for rows in written:
            for key, open_until in zip(rows.keys(), rows.open_until(), strict=True):
                if key in self.due or len(self.due) < MAX_REMEMBERED_DUE:
                    self.due[key] = open_until


async def _count_visitor_days(conn: asyncpg.Connection, batch: BatchCount) -> VisitorDayRows:
    """Create the batch's new visitor-days and count them; lock the others, count what
    the batch adds to them, and return them to write."""
    created: set[VisitorDay] = set()
    if batch.fresh.records:
        await copy_visitor_days(conn, batch.fresh)
        created = {
            (r["site_id"], r["day"], r["visitor"]) for r in await conn.fetch(CREATE_VISITOR_DAYS)
        }
    batch.count_created(created)
    rest = [key for key in batch.visitor_days if key not in created]
    if not rest:
        return VisitorDayRows()
    records = await conn.fetch(
        LOCK_VISITOR_DAYS, [k[0] for k in rest], [k[1] for k in rest], [k[2] for k in rest]
    )
    locked = [
        ((r["site_id"], r["day"], r["visitor"]), r["visits"], r["folded_until"]) for r in records
    ]
    written = batch.count_existing(locked)
    if len(locked) < len(rest):  # deleted meanwhile (an erasure): start them again
        gone = set(rest) - {key for key, _, _ in locked}
        for key in sorted(gone):
            visits = batch.visitor_days[key] = merge([], batch.visitor_days[key])
            written.add(key, visits)
        batch.count_created(gone)
    return written


async def apply_changes(
    conn: asyncpg.Connection, changes: RollupChanges, visitor_rows: VisitorDayRows
) -> None:
    await copy_visitor_days(conn, visitor_rows)
    table, columns = ROLLUP_CHANGES
    await conn.copy_records_to_table(table, records=changes.records(), columns=columns)
    await conn.execute(APPLY)


async def copy_visitor_days(conn: asyncpg.Connection, rows: VisitorDayRows) -> None:
    if rows.records:
        table, columns = VISITOR_DAY_WRITES
        await conn.copy_records_to_table(table, records=rows.records, columns=columns)
