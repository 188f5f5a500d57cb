"""Closed months (processor/months.py): a month's figures added up once it is over, read
in place of its days (report/planner.py) with the same answers; an event of a closed
month that comes after all reopens it, and closing it again holds the event."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from common.config import Settings
from processor.months import close_months
from tests import visits_dataset
from tests.conftest import drain
from tests.rollup_answers import (
    differences,
    expected_months,
    expected_rollups,
    stored_events,
    stored_months,
    time_zones,
)

SITE = "berlin.example"
PERIOD = {"site_id": SITE, "period": "custom", "date": "2026-10-01,2026-11-30"}
QUERIES: list[tuple[str, dict[str, str]]] = [
    ("aggregate", {"metrics": "visitors,visits,pageviews,bounce_rate,visit_duration"}),
    ("aggregate", {"metrics": "visitors,pageviews", "filters": "event:page==/p/3"}),
    ("timeseries", {"interval": "month", "metrics": "visitors,pageviews,visits"}),
    ("breakdown", {"property": "event:page", "metrics": "visitors,pageviews,bounce_rate"}),
    ("breakdown", {"property": "visit:source", "metrics": "visitors,visits,visit_duration"}),
    ("breakdown", {"property": "event:props:plan", "metrics": "visitors,events"}),
]
A_DAY = 86_400


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Visits counted; events older than a day are old enough to reopen a month."""
    return dataclasses.replace(settings, count_visits=True, max_age_seconds=A_DAY)


async def answers(http: httpx.AsyncClient) -> list[Any]:
    found = []
    for endpoint, params in QUERIES:
        response = await http.get(f"/api/v1/stats/{endpoint}", params=PERIOD | params)
        assert response.status_code == 200, response.text
        found.append(response.json())
    return found


async def close_all(settings: Settings) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await close_months(conn, settings.max_age_seconds, datetime.now(UTC).date())
    finally:
        await conn.close()


async def assert_months_are_the_days_added_up(db: asyncpg.Pool) -> None:
    wanted = expected_months(expected_rollups(await stored_events(db), await time_zones(db)))
    found = await stored_months(db)
    assert not differences(wanted, found), "\n".join(differences(wanted, found))


async def test_closed_months_answer_as_their_days_and_reopen_for_a_late_event(
    http: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    await db.execute("INSERT INTO sites (site_id, time_zone) VALUES ($1, 'Europe/Berlin')", SITE)
    payloads = visits_dataset.generate(150, seed=11)  # 2026-10-31 to 2026-11-02
    async with redis_client.pipeline(transaction=False) as pipe:
        for payload in payloads:
            pipe.xadd(settings.stream_key, visits_dataset.stream_fields(payload))
        await pipe.execute()
    await drain(settings, redis_client, db)
    before = await answers(http)
    assert before[0]["results"]["visits"]["value"] > 10

    assert await close_all(settings) >= 2  # October and November of each site
    closed = {(r["site_id"], r["month"]) for r in await db.fetch("SELECT * FROM closed_months")}
    assert {(SITE, date(2026, 10, 1)), (SITE, date(2026, 11, 1))} <= closed
    await assert_months_are_the_days_added_up(db)
    # The days of closed months are not read any more: gone, the answers stay the same.
    for table in ("daily_site_path_counts", "daily_dimension_stats"):
        await db.execute(f"DELETE FROM {table} WHERE site_id = $1", SITE)
    assert await answers(http) == before
    await db.execute("TRUNCATE closed_months, monthly_site_path_counts, monthly_dimension_stats")

    # Again from the days, then an event of October comes late, after the month closed.
    await _restore_days(settings, redis_client, db, payloads)
    assert await close_all(settings) >= 2
    late = visits_dataset.generate(1, seed=5)[0] | {
        "site_id": SITE,
        "user_id": "late-user",  # a visitor of their own: one visit more
        "event_id": "0b9f8e52-5a1b-4a43-9c1f-2d3e4f5a6b7c",
        "timestamp": int(datetime(2026, 10, 15, 12, tzinfo=UTC).timestamp() * 1_000_000),
    }
    await redis_client.xadd(settings.stream_key, visits_dataset.stream_fields(late))
    await drain(settings, redis_client, db)
    reopened = {
        r["month"]
        for r in await db.fetch("SELECT month FROM closed_months WHERE site_id = $1", SITE)
    }
    assert date(2026, 10, 1) not in reopened and date(2026, 11, 1) in reopened
    assert not await db.fetchval(
        "SELECT count(*) FROM monthly_dimension_stats WHERE site_id = $1 AND month = '2026-10-01'",
        SITE,
    )
    after = await answers(http)
    assert after[0]["results"]["pageviews"]["value"] == before[0]["results"]["pageviews"][
        "value"
    ] + (late["event_type"] == "page_view")
    assert after[0]["results"]["visits"]["value"] == before[0]["results"]["visits"]["value"] + 1
    assert await close_all(settings) == 1  # October again
    await assert_months_are_the_days_added_up(db)
    assert await answers(http) == after


async def _restore_days(
    settings: Settings, redis_client: redis.Redis, db: asyncpg.Pool, payloads: list[dict[str, Any]]
) -> None:
    """Count everything again from the start (the test deleted the site's days)."""
    tables = "events, event_ids, daily_site_stats, daily_site_path_counts, daily_dimension_stats, visitor_days"
    await db.execute(f"TRUNCATE {tables}")
    async with redis_client.pipeline(transaction=False) as pipe:
        for payload in payloads:
            pipe.xadd(settings.stream_key, visits_dataset.stream_fields(payload))
        await pipe.execute()
    await drain(settings, redis_client, db)
