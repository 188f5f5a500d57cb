"""Closing months: adding up a month's daily rollup rows into monthly ones once no event
can change them any more, so that a report over many months reads a row per value and
month rather than one per value and day (report/planner.py, sql/011).

When a month is closed: the edge accepts no event older than MAX_AGE_SECONDS, so a
month whose last day ended longer ago than that, and two days more (a local day lies
within 14 hours of its UTC day; the rest is slack), gets no new event in the normal
course. Some may come still (a dead letter replayed, a backlog older than that), and so
every write of an older day reopens its month: the batch (or fold) deletes the month's
sums and its closed_months row in its own transaction, and the month is closed again
later. An advisory lock orders the two: closing takes it exclusively, reopening shared,
so a month is never closed without a write it should hold (see `reopen`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import asyncpg

from common.constants import MICROS_PER_DAY, MONTHS_LOCK_KEY

logger = logging.getLogger(__name__)

SLACK_DAYS = 2
CLOSE_EVERY_S = 600.0
_EPOCH = date(1970, 1, 1)
_FIRST_DAY, _LAST_DAY = (d.toordinal() - _EPOCH.toordinal() for d in (date.min, date.max))

# (site, month) pairs with daily figures, before the month of $1, not closed yet.
_OPEN_MONTHS = """
SELECT DISTINCT s.site_id, date_trunc('month', s.date)::date AS month
FROM daily_site_stats AS s
WHERE s.date < date_trunc('month', $1::date)
    AND NOT EXISTS (
        SELECT FROM closed_months AS c
        WHERE c.site_id = s.site_id AND c.month = date_trunc('month', s.date)
    )
ORDER BY 1, 2
"""
# One (site, month) closed: $1 the site, $2 the month's first day.
_CLOSE = """
WITH closed AS (
    INSERT INTO closed_months (site_id, month) VALUES ($1, $2)
    ON CONFLICT DO NOTHING
    RETURNING site_id
),
paths AS (
    INSERT INTO monthly_site_path_counts (site_id, month, path, visitors, visits, views)
    SELECT $1, $2, path, sum(visitors), sum(visits), sum(views)
    FROM daily_site_path_counts
    WHERE site_id = $1 AND date >= $2 AND date < ($2 + interval '1 month')::date
        AND EXISTS (SELECT FROM closed)
    GROUP BY path
)
INSERT INTO monthly_dimension_stats
    (site_id, month, dimension, value, visitors, visits, pageviews, bounces, duration_us,
     events)
SELECT $1, $2, dimension, value, sum(visitors), sum(visits), sum(pageviews), sum(bounces),
    sum(duration_us), sum(events)
FROM daily_dimension_stats
WHERE site_id = $1 AND date >= $2 AND date < ($2 + interval '1 month')::date
    AND EXISTS (SELECT FROM closed)
GROUP BY dimension, value
"""
# These (site, month) pairs ($1, $2) open again: their sums go.
_REOPEN = """
WITH gone AS (
    DELETE FROM closed_months
    WHERE (site_id, month) IN (SELECT * FROM unnest($1::text[], $2::date[]))
    RETURNING site_id, month
),
paths AS (
    DELETE FROM monthly_site_path_counts AS m USING gone AS g
    WHERE m.site_id = g.site_id AND m.month = g.month
)
DELETE FROM monthly_dimension_stats AS m USING gone AS g
WHERE m.site_id = g.site_id AND m.month = g.month
"""


def write_horizon(max_age_s: int, now_micros: int | None = None) -> int:
    """A write of a day before this one (a day number) may touch a closed month."""
    now = time.time_ns() // 1000 if now_micros is None else now_micros
    return (now - max_age_s * 1_000_000) // MICROS_PER_DAY - 1


async def reopen(conn: asyncpg.Connection, site_days: Iterable[tuple[str, int]]) -> None:
    """Within a transaction that wrote these (site, day number) pairs' figures: reopen
    their months, if closed. The lock is taken after the writes, and held to commit:
    closing (exclusive) either ran wholly before, and its row is deleted here, or runs
    wholly after, and adds up these writes."""
    months = set()
    for site, day in site_days:
        for near in (day - 1, day + 1):  # the month of the local day, whichever it is
            if _FIRST_DAY <= near <= _LAST_DAY:  # (a day at the ends of the calendar)
                months.add((site, (_EPOCH + timedelta(days=near)).replace(day=1)))
    if not months:
        return
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", MONTHS_LOCK_KEY)
    ordered = sorted(months)
    await conn.execute(_REOPEN, [m[0] for m in ordered], [m[1] for m in ordered])


async def close_months(conn: asyncpg.Connection, max_age_s: int, today: date) -> int:
    """Close every (site, month) that has ended long enough ago; returns how many."""
    cutoff = today - timedelta(seconds=max_age_s) - timedelta(days=SLACK_DAYS)
    closed = 0
    for record in await conn.fetch(_OPEN_MONTHS, cutoff):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MONTHS_LOCK_KEY)
            await conn.execute(_CLOSE, record["site_id"], record["month"])
        closed += 1
    return closed


class MonthCloser:
    """Closes months at most every CLOSE_EVERY_S (from a processor's maintenance)."""

    def __init__(self, max_age_s: int):
        self._max_age_s = max_age_s
        self._next = 0.0

    async def maybe_close(self, conn: asyncpg.Connection) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        closed = await close_months(conn, self._max_age_s, datetime.now(UTC).date())
        self._next = now + CLOSE_EVERY_S
        if closed:
            logger.info("closed %d site-months (their figures added up by month)", closed)
