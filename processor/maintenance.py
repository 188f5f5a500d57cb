"""Housekeeping the processors do now and then: bounded Redis, partitions, retention.

- Trim: acknowledged entries are removed from the stream up to the oldest entry that
  any consumer group still has pending or not yet delivered (XTRIM MINID), so Redis
  holds the backlog, not the history. Never MAXLEN: that could drop unread entries.
- Partitions: the current and the next month of `events` exist before they are needed.
- Retention: with RETENTION_DAYS, whole monthly partitions older than it are dropped.
- Ledger: the entries it remembers (processor/tally.py) are forgotten once trimmed and
  a day old: an entry no longer in the stream is not delivered again, but a consumer may
  still hold it in the batch in its hands (taken over from it meanwhile: it was slow).

Any number of processors may run this at once: each step is idempotent.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

import asyncpg
from redis.exceptions import ResponseError

from common.redis_clients import AsyncRedis
from processor.store import EventStore

logger = logging.getLogger(__name__)


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    millis, _, sequence = text.partition("-")
    return int(millis), int(sequence or 0)


async def trim_floor(client: AsyncRedis, stream_key: str) -> tuple[int, int] | None:
    """The oldest entry id any consumer group still needs; None when there is no group."""
    try:
        groups = await client.xinfo_groups(stream_key)
    except ResponseError:  # no such stream
        return None
    floor: tuple[int, int] | None = None
    for group in groups:
        oldest_pending = None
        if int(group["pending"]) > 0:
            # None when another consumer acknowledged them since XINFO: then the rule for
            # a group with nothing pending holds (its last delivered id can only be older).
            oldest_pending = (await client.xpending(stream_key, group["name"]))["min"]
        if oldest_pending is not None:
            needed = parse_id(oldest_pending)
        else:  # everything up to the last delivered entry is acknowledged
            millis, sequence = parse_id(group["last-delivered-id"])
            needed = (millis, sequence + 1)
        floor = needed if floor is None else min(floor, needed)
    return floor


async def trim_stream(client: AsyncRedis, stream_key: str) -> tuple[int, int] | None:
    """Remove acknowledged entries; returns the floor trimmed to (None: no group)."""
    floor = await trim_floor(client, stream_key)
    if floor is None:
        return None
    removed = await client.xtrim(stream_key, minid=f"{floor[0]}-{floor[1]}")
    if removed:
        logger.debug("trimmed %d acknowledged entries", removed)
    return floor


# Longer than any batch takes, by far: seen in the fault suite, a consumer whose entries
# were taken over still stores them (a second time) after they were acknowledged by
# another and trimmed; forgotten by then, they would be counted twice.
LEDGER_ENTRY_KEEP_MS = 86_400_000


async def forget_trimmed_entries(
    conn: asyncpg.Connection, floor: tuple[int, int], entry_prefix: bytes = b""
) -> None:
    """Forget ledger entries trimmed from the stream (before its floor) a day ago; of
    this shard only, where there are several (common/shards.py)."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    before = min(floor[0], now_ms - LEDGER_ENTRY_KEEP_MS)
    await conn.execute(
        "DELETE FROM ledger_entries WHERE entry_ms < $1"
        " AND substring(entry_id FOR length($2::bytea)) = $2::bytea",
        before,
        entry_prefix,
    )


async def keep_partitions_ahead(conn: asyncpg.Connection, store: EventStore) -> None:
    today = datetime.now(UTC).date()
    this_month = today.replace(day=1)
    next_month = (this_month + timedelta(days=32)).replace(day=1)
    await store.ensure_months(conn, {this_month, next_month})


async def apply_retention(conn: asyncpg.Connection, retention_days: int) -> list[str]:
    cutoff: date = datetime.now(UTC).date() - timedelta(days=retention_days)
    rows = await conn.fetch("SELECT drop_events_partitions_before($1) AS name", cutoff)
    dropped = [row["name"] for row in rows]
    if dropped:
        logger.info("retention: dropped %s (events before %s)", ", ".join(dropped), cutoff)
    return dropped
