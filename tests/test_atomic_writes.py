"""A request's events are written all or nothing, even when Redis fills up mid-request."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Callable

import httpx
import orjson
import pytest
import redis.asyncio as redis

from common.config import Settings
from common.constants import EVENT_FIELD
from tests.servers import PrivateRedis

BATCHES = 120
EVENTS_PER_BATCH = 200
CONCURRENT_REQUESTS = 8  # several requests' writes share one pipelined round trip
# About 50 batches fit before Redis is full: the limit falls inside the run.
ROOM_BYTES = 4 * 1024 * 1024


@pytest.fixture
async def full_soon_redis() -> AsyncIterator[PrivateRedis]:
    """A private Redis that refuses writes (never evicts) once it holds ROOM_BYTES more."""
    server = PrivateRedis()
    try:
        server.start()
        await server.wait_until_up()
        client = redis.Redis.from_url(server.url)
        used = (await client.info("memory"))["used_memory"]
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", used + ROOM_BYTES)
        await client.aclose()
        yield server
    finally:
        server.close()


def batch(number: int) -> list[dict[str, str]]:
    """Events that say which batch they came in: user_id and path name it."""
    padding = "x" * 200  # fills Redis in fewer requests
    return [
        {
            "site_id": "s",
            "event_type": "page_view",
            "user_id": f"batch-{number}",
            "path": f"/batch-{number}/{index}/{padding}",
        }
        for index in range(EVENTS_PER_BATCH)
    ]


async def test_no_partial_batch_lands_when_redis_fills_up_mid_run(
    settings: Settings,
    full_soon_redis: PrivateRedis,
    start_server: Callable[[Settings], str],
) -> None:
    own = dataclasses.replace(
        settings,
        redis_url=full_soon_redis.url,
        max_backlog=1_000_000_000,  # no processor runs: only memory may refuse
        # A write that times out may still land: none must, for the count to be exact.
        redis_timeout_ms=30_000,
    )
    statuses: dict[int, int] = {}
    numbers = iter(range(BATCHES))

    async def send_batches(http: httpx.AsyncClient) -> None:
        for number in numbers:  # one iterator shared: each batch is sent once
            response = await http.post("/events", json=batch(number))
            statuses[number] = response.status_code
            if response.status_code == 503:
                assert response.json()["error"] == "unavailable"
            else:
                assert response.json()["accepted"] == EVENTS_PER_BATCH, response.text

    async with httpx.AsyncClient(base_url=start_server(own), timeout=60) as http:
        async with asyncio.TaskGroup() as group:
            for _ in range(CONCURRENT_REQUESTS):
                group.create_task(send_batches(http))

    assert set(statuses.values()) <= {202, 503}, Counter(statuses.values())
    accepted = {number for number, status in statuses.items() if status == 202}
    assert 0 < len(accepted) < BATCHES, "Redis did not fill up during the run"
    client = redis.Redis.from_url(full_soon_redis.url)
    try:
        entries = await client.xrange(own.stream_key)
    finally:
        await client.aclose()
    stored = Counter(orjson.loads(fields[EVENT_FIELD])["user_id"] for _, fields in entries)
    # Every accepted batch whole, and nothing of any refused one.
    assert stored == {f"batch-{number}": EVENTS_PER_BATCH for number in accepted}
    assert len(entries) == len(accepted) * EVENTS_PER_BATCH
