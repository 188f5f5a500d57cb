"""The processor under unusual states: ids shared across sites, entries delivered too
often after part of them was stored, a partition that cannot be made, a consumer group
deleted while it runs."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
import redis.asyncio as redis

from common.config import Settings
from processor.decode import decode_entries
from processor.health import Health, health_server
from processor.store import EventStore
from tests.conftest import free_port, make_processor, settings_env
from tests.processes import Service
from tests.test_processor import enqueue

NOW = time.time_ns() // 1000


def page_view(site_id: str, number: int, day: str = "2024-05-06") -> dict[str, object]:
    return {
        "event_id": f"0190b1a0-0000-7000-8000-{number:012d}",
        "site_id": site_id,
        "event_type": "page_view",
        "path": f"/{number}",
        "user_id": f"u{number}",
        "timestamp": f"{day}T10:00:00Z",
    }


async def wait_until_stored(db: asyncpg.Pool, count: int, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while (stored := await db.fetchval("SELECT count(*) FROM events")) < count:
        assert time.monotonic() < deadline, f"{stored} of {count} events stored in {within} s"
        await asyncio.sleep(0.05)


async def test_the_same_event_id_on_two_sites_is_two_events_each_stored_once(
    redis_client: redis.Redis, db: asyncpg.Pool, settings: Settings
) -> None:
    # The id is each client's key for its own retries: another site's use of it must
    # not make this site's event a duplicate.
    events = [page_view("shop", 1), page_view("blog", 1)]
    await enqueue(redis_client, settings, events + events)  # each sent twice
    await make_processor(settings, redis_client, db).run(asyncio.Event(), drain=True)
    await enqueue(redis_client, settings, events)  # and again, in a later batch
    await make_processor(settings, redis_client, db).run(asyncio.Event(), drain=True)

    stored = await db.fetch("SELECT site_id, event_id::text FROM events ORDER BY site_id")
    assert [tuple(r) for r in stored] == [
        ("blog", "0190b1a0-0000-7000-8000-000000000001"),
        ("shop", "0190b1a0-0000-7000-8000-000000000001"),
    ]
    views = await db.fetch("SELECT site_id, total_views FROM daily_site_stats ORDER BY site_id")
    assert [tuple(r) for r in views] == [("blog", 1), ("shop", 1)]


async def test_past_max_deliveries_only_an_entry_that_keeps_crashing_alone_is_dead_lettered(
    redis_client: redis.Redis, db: asyncpg.Pool, settings: Settings
) -> None:
    await enqueue(redis_client, settings, [page_view("s", n) for n in range(5)])
    processor = make_processor(settings, redis_client, db)
    await processor.ensure_group()
    entries = (
        await redis_client.xreadgroup(
            settings.consumer_group, settings.consumer_name, {settings.stream_key: ">"}
        )
    )[0][1]
    ids = [entry_id for entry_id, _ in entries]
    # Delivered MAX_DELIVERIES times, its consumer killed each time: the first two were
    # committed, but not acknowledged; the last had stopped its consumer three times
    # while it was being stored by itself.
    for _ in range(settings.max_deliveries - 1):
        await redis_client.xclaim(
            settings.stream_key, settings.consumer_group, settings.consumer_name, 0, ids
        )
    await EventStore(db).store(decode_entries(entries[:2]).rows)
    await redis_client.hset(settings.alone_attempts_key, ids[4], 3)

    await processor.run(asyncio.Event(), drain=True)  # its re-read is one delivery too many

    # The stored two acknowledged, the two innocent ones stored (by themselves), the
    # crasher dead-lettered with its own reason.
    assert await db.fetchval("SELECT count(*) FROM events") == 4
    [(_, fields)] = await redis_client.xrange(settings.dead_letter_key)
    assert fields[b"dead_letter_source_id"] == ids[4]
    assert fields[b"dead_letter_reason"].startswith(b"stopped its consumer 3 times while")
    pending = await redis_client.xpending(settings.stream_key, settings.consumer_group)
    assert pending["pending"] == 0
    assert await redis_client.hlen(settings.alone_attempts_key) == 0


async def test_a_partition_that_cannot_be_made_keeps_its_events_pending_and_says_why(
    redis_client: redis.Redis,
    db: asyncpg.Pool,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A table of the partition's name that is not a partition: CREATE ... IF NOT EXISTS
    # passes over it, and every row of its month finds no partition.
    await db.execute("CREATE TABLE events_p203103 (LIKE events)")
    try:
        events = [page_view("s", n, "2031-03-05") for n in range(5)]
        await enqueue(redis_client, settings, [*events, page_view("s", 9)])
        stop = asyncio.Event()
        processor = make_processor(settings, redis_client, db)
        with caplog.at_level(logging.ERROR, logger="processor.consumer"):
            running = asyncio.create_task(processor.run(stop))
            deadline = time.monotonic() + 10
            while "cannot be created" not in caplog.text:
                assert time.monotonic() < deadline, "the failure was never logged"
                await asyncio.sleep(0.05)
        assert await redis_client.xlen(settings.dead_letter_key) == 0
        pending = await redis_client.xpending(settings.stream_key, settings.consumer_group)
        assert pending["pending"] == 6
        status, body = processor.health.answer()
        [failure] = orjson.loads(body)["failing"]
        assert status == 503
        assert failure["operation"] == f"{settings.consumer_name}: storing a batch"
        assert "PartitionUnavailable" in failure["error"] and failure["attempts"] >= 1

        await db.execute("DROP TABLE events_p203103")  # the operator's fix
        await wait_until_stored(db, 6)
        assert processor.health.answer() == (200, b'{"status":"ok"}')
        stop.set()
        await asyncio.wait_for(running, 10)
    finally:
        await db.execute("DROP TABLE IF EXISTS events_p203103")
    assert await db.fetchval("SELECT sum(total_views) FROM daily_site_stats") == 6
    assert await redis_client.xlen(settings.dead_letter_key) == 0


async def test_a_consumer_group_deleted_again_and_again_while_running_loses_nothing(
    redis_client: redis.Redis, db: asyncpg.Pool, settings: Settings
) -> None:
    # Claims every few milliseconds: deletions land in reads, claims and acknowledgements.
    processor = make_processor(settings, redis_client, db, claim_interval_ms=10, block_ms=20)
    stop = asyncio.Event()
    running = asyncio.create_task(processor.run(stop))
    rng = random.Random(7)
    sent = 0
    for _ in range(15):
        await enqueue(redis_client, settings, [page_view("s", sent + n) for n in range(40)])
        sent += 40
        await asyncio.sleep(rng.uniform(0, 0.1))
        await redis_client.xgroup_destroy(settings.stream_key, settings.consumer_group)
    await wait_until_stored(db, sent)
    stop.set()
    await asyncio.wait_for(running, 10)

    assert await db.fetchval("SELECT count(DISTINCT event_id) FROM events") == sent
    assert await db.fetchval("SELECT sum(total_views) FROM daily_site_stats") == sent
    assert await db.fetchval("SELECT sum(views) FROM daily_site_path_counts") == sent
    assert await redis_client.xlen(settings.dead_letter_key) == 0


async def test_the_health_port_answers_what_fails_and_nothing_else() -> None:
    health = Health()
    port = free_port()
    async with (
        health_server(health, "127.0.0.1", port),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http,
    ):
        ok = await http.get("/health")
        assert (ok.status_code, ok.json()) == (200, {"status": "ok"})
        health.failed("p: storing a batch", ConnectionRefusedError(111, "refused"))
        health.failed("p: storing a batch", ConnectionRefusedError(111, "refused again"))
        failing = await http.get("/health")
        assert failing.status_code == 503
        [failure] = failing.json()["failing"]
        assert failure["operation"] == "p: storing a batch" and failure["attempts"] == 2
        assert "refused again" in failure["error"]
        health.recovered("p: storing a batch")
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/other")).status_code == 404
        assert (await http.post("/health")).status_code == 405
        # A client that never finishes its request is dropped, not waited on forever.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_a_processor_waiting_for_its_database_says_so_on_its_health_port(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    unreachable = "postgresql://postgres@127.0.0.1:1/analytics"  # nothing listens on 1
    env = settings_env(dataclasses.replace(settings, database_url=unreachable, health_port=port))
    processor = Service("processor", env, tmp_path / "processor.log")
    try:
        await processor.wait_for_port(port)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            deadline = time.monotonic() + 10
            while (response := await http.get("/health")).status_code == 200:
                assert time.monotonic() < deadline, "never reported the failing start"
                await asyncio.sleep(0.05)
        assert response.status_code == 503
        [failure] = response.json()["failing"]
        assert failure["operation"] == "preparing the database"
        assert await processor.stop() == 0
    finally:
        processor.kill()
