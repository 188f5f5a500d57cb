"""The whole pipeline: POST /event, the processor, GET /stats and the tables agree exactly."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import redis.asyncio as redis

from common.config import Settings
from tests import datasets
from tests.conftest import drain

CONCURRENT_REQUESTS = 32


async def send_all(http: httpx.AsyncClient, events: list[dict[str, object]]) -> None:
    queue = list(reversed(events))

    async def sender() -> None:
        while queue:
            event = dict(queue.pop())
            user_agent = event.pop(datasets.USER_AGENT_KEY, "python-httpx")
            response = await http.post("/event", json=event, headers={"user-agent": user_agent})
            assert response.status_code == 202, response.text

    await asyncio.gather(*(sender() for _ in range(CONCURRENT_REQUESTS)))


async def test_every_figure_equals_the_independently_computed_total(
    http: httpx.AsyncClient, redis_client: redis.Redis, db: asyncpg.Pool, settings: Settings
) -> None:
    events, expected = datasets.generate(10_000)
    await send_all(http, events)
    assert await redis_client.xlen(settings.stream_key) == len(events)

    await drain(settings, redis_client, db)

    # Nothing left pending: every entry was stored and acknowledged.
    pending = await redis_client.xpending(settings.stream_key, settings.consumer_group)
    assert pending["pending"] == 0

    assert await db.fetchval("SELECT count(*) FROM events") == expected.stored_events
    assert (
        await db.fetchval("SELECT count(DISTINCT event_id) FROM events") == expected.stored_events
    )

    stats = {
        (r["site_id"], r["date"]): (r["total_views"], r["unique_users"])
        for r in await db.fetch("SELECT * FROM daily_site_stats")
    }
    assert stats == {
        key: (expected.views[key], len(expected.users.get(key, ()))) for key in expected.site_days()
    }
    paths = {
        (r["site_id"], r["date"], r["path"]): r["views"]
        for r in await db.fetch("SELECT * FROM daily_site_path_counts")
    }
    assert paths == dict(expected.paths)

    for site_id, day in sorted(expected.site_days()):
        response = await http.get("/stats", params={"site_id": site_id, "date": day.isoformat()})
        assert response.json() == {
            "site_id": site_id,
            "date": day.isoformat(),
            "total_views": expected.views[(site_id, day)],
            "unique_users": len(expected.users.get((site_id, day), ())),
            "top_paths": expected.top_paths(site_id, day),
        }
