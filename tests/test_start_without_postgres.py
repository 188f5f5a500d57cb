"""Starting while PostgreSQL is down: ingest takes events at once and serves GET /stats
once the database is up and migrated; the processor waits for it, then stores."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from common.config import Settings
from common.migrate import prepare_database
from tests import datasets
from tests.conftest import settings_env
from tests.processes import Service
from tests.servers import PrivatePostgres
from tests.test_processor_faults import enqueue

EVENT = {"site_id": "s", "event_type": "page_view", "path": "/a", "user_id": "u"}


@pytest.fixture
def stopped_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster made but not started: the test starts it when it chooses."""
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.close()


async def test_ingest_takes_events_while_postgres_is_down_and_stats_follow_once_it_is_up(
    settings: Settings,
    redis_client: redis.Redis,
    stopped_postgres: PrivatePostgres,
    start_server: Callable[[Settings], str],
) -> None:
    own = dataclasses.replace(settings, database_url=stopped_postgres.url)
    async with httpx.AsyncClient(base_url=start_server(own), timeout=10) as http:
        response = await http.post("/event", json=EVENT)
        assert response.status_code == 202, response.text
        assert await redis_client.xlen(settings.stream_key) == 1

        stats = {"site_id": "s", "date": "2026-01-01"}
        response = await http.get("/stats", params=stats)
        assert response.status_code == 503
        assert response.json()["error"] == "unavailable"
        assert response.headers["retry-after"] == "1"

        stopped_postgres.start()
        await stopped_postgres.wait_until_up()
        # Up, but no tables yet: still 503, never a 500 from a query on a missing table.
        await asyncio.sleep(1)
        assert (await http.get("/stats", params=stats)).status_code == 503

        await prepare_database(stopped_postgres.url)  # what the processor or make migrate do
        deadline = time.monotonic() + 15
        while (response := await http.get("/stats", params=stats)).status_code != 200:
            assert response.status_code == 503, response.text
            assert time.monotonic() < deadline, "GET /stats never recovered"
            await asyncio.sleep(0.2)
        assert response.json() == {
            "site_id": "s",
            "date": "2026-01-01",
            "total_views": 0,
            "unique_users": 0,
            "top_paths": [],
        }
        assert (await http.post("/event", json=EVENT)).status_code == 202


async def test_the_processor_started_while_postgres_is_down_stores_the_stream_once_it_is_up(
    settings: Settings,
    redis_client: redis.Redis,
    stopped_postgres: PrivatePostgres,
    tmp_path: Path,
) -> None:
    events, expected = datasets.generate(2_000, seed=5, resend_share=0)
    await enqueue(redis_client, settings.stream_key, events)
    # Trust authentication ignores the password; it is there to be kept out of the log.
    url = stopped_postgres.url.replace("postgres@", "postgres:hunter2@", 1)
    env = settings_env(dataclasses.replace(settings, database_url=url, block_ms=100))
    processor = Service("processor", env, tmp_path / "processor.log")
    try:
        for attempt in (1, 2):
            await processor.wait_for_output(f"failed (attempt {attempt}, retrying in")
        stopped_postgres.start()
        conn = await asyncpg.connect(stopped_postgres.url)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    stored = await conn.fetchval("SELECT count(*) FROM events")
                except asyncpg.UndefinedTableError:  # not migrated yet
                    stored = 0
                if stored == expected.stored_events:
                    break
                assert processor.process.poll() is None, processor.output()
                assert time.monotonic() < deadline, f"{stored} stored:\n{processor.output()}"
                await asyncio.sleep(0.2)
        finally:
            await conn.close()
        assert await processor.stop() == 0, processor.output()
    finally:
        processor.kill()
    output = processor.output()
    assert "WARNING common.migrate: preparing the database at postgresql://" in output
    assert "hunter2" not in output and "postgres:***@" in output
    assert "Traceback" not in output
