"""Ingest under pressure: backpressure instead of loss, and Redis going away and back."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import asyncpg
import httpx
import redis.asyncio as redis

from common.config import Settings
from tests.conftest import drain
from tests.servers import PrivateRedis

EVENT = {"site_id": "s", "event_type": "page_view", "user_id": "u"}


async def test_a_backlog_over_the_limit_gets_503_until_it_is_drained(
    settings: Settings,
    db: asyncpg.Pool,
    redis_client: redis.Redis,
    start_server: Callable[[Settings], str],
) -> None:
    limited = dataclasses.replace(settings, max_backlog=20)
    async with httpx.AsyncClient(base_url=start_server(limited), timeout=10) as http:
        accepted = 0
        deadline = time.monotonic() + 10
        while True:  # no processor runs: the backlog grows until the server pushes back
            response = await http.post("/event", json=EVENT)
            if response.status_code == 503:
                break
            assert response.status_code == 202
            accepted += 1
            assert time.monotonic() < deadline, "never pushed back"
            await asyncio.sleep(0.01)
        assert response.json()["error"] == "overloaded"
        assert response.headers["retry-after"] == "1"
        assert accepted > 20
        # Nothing was dropped or trimmed: every 202 is in the stream.
        assert await redis_client.xlen(settings.stream_key) == accepted

        await drain(settings, redis_client, db)
        assert await db.fetchval("SELECT count(*) FROM events") == accepted

        deadline = time.monotonic() + 5
        while (await http.post("/event", json=EVENT)).status_code != 202:
            assert time.monotonic() < deadline, "did not accept again after the drain"
            await asyncio.sleep(0.05)


async def test_redis_down_gives_503_quickly_and_the_server_recovers_by_itself(
    settings: Settings, private_redis: PrivateRedis, start_server: Callable[[Settings], str]
) -> None:
    private_redis.start()
    await private_redis.wait_until_up()
    own = dataclasses.replace(settings, redis_url=private_redis.url)
    async with httpx.AsyncClient(base_url=start_server(own), timeout=10) as http:
        assert (await http.post("/event", json=EVENT)).status_code == 202

        private_redis.kill()
        for _ in range(3):
            started = time.monotonic()
            response = await http.post("/event", json=EVENT)
            assert response.status_code == 503  # never a 202, never a hang
            assert response.json()["error"] == "unavailable"
            assert response.headers["retry-after"] == "1"
            assert time.monotonic() - started < 2 * settings.redis_timeout_ms / 1000 + 0.5

        private_redis.start()
        await private_redis.wait_until_up()
        deadline = time.monotonic() + 5
        while (await http.post("/event", json=EVENT)).status_code != 202:
            assert time.monotonic() < deadline, "did not recover after Redis came back"
            await asyncio.sleep(0.05)
