"""The processor's half of the delivery ledger (sql/012): what became of each entry, counted
in the same transaction as its rows, per site and UTC day of the event's time.

- stored: counted by the batch statement itself, from the ids new to `event_ids`
  (STORED_CTE), so a row and its count commit together;
- duplicate: an entry whose (site, event_id) another entry stored;
- dropped: an event of a site not registered (SITES_MODE=registered);
- dead-lettered: an entry that can never be stored.

The last three are rare, and each is recorded once in `ledger_entries` by its entry id:
a second delivery of the entry (its acknowledgement lost to a crash, or two processors
holding it at once) conflicts there and counts nothing. A second delivery of an entry that
was stored finds its own id in `event_ids` and is neither stored nor a duplicate.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from common.constants import EVENT_FIELD, MAX_MICROS, MIN_MICROS, STAGING_TABLE
from common.shards import entry_millis

# A CTE over `new_ids` (the batch statement's ids new to event_ids: site_id, date).
STORED_CTE = """counted_stored AS (
    INSERT INTO delivery_ledger AS l (site_id, date, stored)
    SELECT site_id, date, count(*) FROM new_ids
    GROUP BY site_id, date
    ORDER BY site_id, date
    ON CONFLICT (site_id, date) DO UPDATE SET stored = l.stored + excluded.stored
)"""


def _record(outcome: str, source: str) -> str:
    """Statement parts recording the entries of `source` (entry_id, site_id, date) as
    `outcome`, each once, and adding those recorded now to the counters."""
    column = {"duplicate": "duplicates"}.get(outcome, outcome)
    return f"""recorded AS (
    INSERT INTO ledger_entries (entry_id, entry_ms, site_id, date, outcome)
    -- The id's milliseconds, after its shard's number where it has one (common/shards.py).
    SELECT entry_id,
        split_part(split_part(convert_from(entry_id, 'UTF8'), ':', -1), '-', 1)::bigint,
        site_id, date, '{outcome}'
    FROM {source}
    ORDER BY entry_id
    ON CONFLICT (entry_id) DO NOTHING
    RETURNING site_id, date
),
counted AS (
    INSERT INTO delivery_ledger AS l (site_id, date, {column})
    SELECT site_id, date, count(*) FROM recorded
    GROUP BY site_id, date
    ORDER BY site_id, date
    ON CONFLICT (site_id, date) DO UPDATE SET {column} = l.{column} + excluded.{column}
)"""


# After the batch statement, when not every entry was new: the staged entries, and the
# batch's repeats of a staged (site, event_id) ($1 to $4: entry ids, sites, event ids,
# times), whose key `event_ids` holds from another entry.
RECORD_DUPLICATES = f"""
WITH candidates AS (
    SELECT entry_id, site_id, event_id, "timestamp" FROM {STAGING_TABLE}
    UNION ALL
    SELECT * FROM unnest($1::bytea[], $2::text[], $3::uuid[], $4::timestamptz[])
),
duplicates AS (
    SELECT c.entry_id, c.site_id, (c."timestamp" AT TIME ZONE 'UTC')::date AS date
    FROM candidates AS c JOIN event_ids AS i USING (event_id, site_id)
    WHERE i.entry_id IS DISTINCT FROM c.entry_id
),
{_record("duplicate", "duplicates")}
SELECT count(*) FROM recorded
"""

# Dropping a batch's events of sites not registered (store.py DROP_UNREGISTERED) records
# them here, from its CTE `dropped` (entry_id, site_id, "timestamp").
DROPPED_CTES = f"""dropped_days AS (
    SELECT entry_id, site_id, ("timestamp" AT TIME ZONE 'UTC')::date AS date FROM dropped
),
{_record("dropped", "dropped_days")}"""

RECORD_DEAD_LETTERS = f"""
WITH dead AS (
    SELECT entry_id, site_id, ("timestamp" AT TIME ZONE 'UTC')::date AS date
    FROM unnest($1::bytea[], $2::text[], $3::timestamptz[]) AS d (entry_id, site_id, "timestamp")
),
{_record("dead_lettered", "dead")}
SELECT count(*) FROM recorded
"""


def repeats_of(rows: list[tuple[Any, ...]], kept: list[tuple[Any, ...]]) -> list[list[Any]]:
    """The rows left out of `kept` (a batch's repeats of one (site, event_id)), as the
    columns RECORD_DUPLICATES takes: entry ids, sites, event ids, times."""
    kept_entries = {row[-1] for row in kept}
    left_out = [row for row in rows if row[-1] not in kept_entries]
    return [
        [row[-1] for row in left_out],
        [row[1] for row in left_out],
        [row[0] for row in left_out],
        [row[5] for row in left_out],
    ]


def where_from(entry_id: bytes, fields: dict[bytes, bytes] | None) -> tuple[str, int]:
    """The site and time (microseconds) an entry that cannot be stored is counted under:
    its event's own where they can be read, else no site ("") and the time Redis took it
    (its id's milliseconds). Every entry the ingest server wrote has both."""
    return where_of(entry_id, event_of(fields))


def event_of(fields: dict[bytes, bytes] | None) -> Any:
    """An entry's event as JSON says it, or None where it cannot be read."""
    try:
        return orjson.loads((fields or {}).get(EVENT_FIELD, b""))
    except orjson.JSONDecodeError:
        return None


def where_of(entry_id: bytes, event: Any) -> tuple[str, int]:
    """where_from, of an event read already."""
    if isinstance(event, dict):
        site, micros = event.get("site_id"), event.get("timestamp")
        if isinstance(site, str) and type(micros) is int and MIN_MICROS <= micros <= MAX_MICROS:
            return site, micros
    return "", entry_millis(entry_id) * 1000


async def record_dead_letters(
    conn: asyncpg.Connection, entries: dict[bytes, tuple[str, int]]
) -> int:
    """Count entries about to be dead-lettered (entry id: site, time); returns how many
    were counted now (not by an earlier delivery)."""
    ids = sorted(entries)
    counted = await conn.fetchval(
        RECORD_DEAD_LETTERS, ids, [entries[i][0] for i in ids], [entries[i][1] for i in ids]
    )
    return int(counted)
