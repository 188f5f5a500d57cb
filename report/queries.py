"""Reading the daily aggregates."""

from __future__ import annotations

import dataclasses
from datetime import date

import asyncpg

TOP_PATHS = 10

# One round trip: the day's totals beside its top paths (views desc, ties by path).
_DAILY_STATS = """
SELECT s.total_views, s.unique_users, p.path, p.views
FROM (SELECT) AS one
LEFT JOIN daily_site_stats AS s ON s.site_id = $1 AND s.date = $2
LEFT JOIN LATERAL (
    SELECT path, views FROM daily_site_path_counts
    WHERE site_id = $1 AND date = $2
    ORDER BY views DESC, path
    LIMIT $3
) AS p ON true
ORDER BY p.views DESC, p.path
"""


@dataclasses.dataclass(frozen=True, slots=True)
class DailyStats:
    site_id: str
    date: date
    total_views: int
    unique_users: int
    top_paths: list[tuple[str, int]]


async def daily_stats(
    conn: asyncpg.Connection | asyncpg.Pool, site_id: str, day: date
) -> DailyStats:
    rows = await conn.fetch(_DAILY_STATS, site_id, day, TOP_PATHS)
    first = rows[0]
    return DailyStats(
        site_id=site_id,
        date=day,
        total_views=first["total_views"] or 0,
        unique_users=first["unique_users"] or 0,
        top_paths=[(row["path"], row["views"]) for row in rows if row["path"] is not None],
    )
