"""The processor against a real Redis and PostgreSQL: idempotence, recovery, poison entries."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import asyncpg
import orjson
import redis.asyncio as redis

from common.config import Settings
from common.constants import EVENT_FIELD
from ingest.validation import parse_event
from processor.decode import decode_entries
from processor.store import EventStore
from tests import datasets
from tests.conftest import ROOT, drain, make_processor, settings_env

NOW = time.time_ns() // 1000


async def enqueue(client: redis.Redis, settings: Settings, events: list[dict[str, object]]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for event in events:
            payload = orjson.dumps(parse_event(orjson.dumps(event), NOW))
            pipe.xadd(settings.stream_key, {EVENT_FIELD: payload})
        await pipe.execute()


async def figures(db: asyncpg.Pool) -> tuple[object, ...]:
    """Everything the aggregates say, in a comparable form."""
    return (
        await db.fetchval("SELECT count(*) FROM events"),
        sorted(tuple(r) for r in await db.fetch("SELECT * FROM daily_site_stats")),
        sorted(tuple(r) for r in await db.fetch("SELECT * FROM daily_site_path_counts")),
        await db.fetchval("SELECT count(*) FROM visitor_days"),
    )


async def pending_count(client: redis.Redis, settings: Settings) -> int:
    return int((await client.xpending(settings.stream_key, settings.consumer_group))["pending"])


async def read_as(client: redis.Redis, settings: Settings, consumer: str, count: int) -> list:
    response = await client.xreadgroup(
        settings.consumer_group, consumer, {settings.stream_key: ">"}, count=count
    )
    return response[0][1]


async def test_a_committed_but_unacknowledged_batch_changes_nothing_when_redelivered(
    redis_client: redis.Redis, db: asyncpg.Pool, settings: Settings
) -> None:
    events, _ = datasets.generate(1_500, seed=3, resend_share=0)
    await enqueue(redis_client, settings, events)
    processor = make_processor(settings, redis_client, db, consumer_name="crashed")
    await processor.ensure_group()

    # The consumer stores a batch and dies between COMMIT and XACK.
    entries = await read_as(redis_client, settings, "crashed", 700)
    await EventStore(db).store(decode_entries(entries).rows)
    committed = await figures(db)
    assert committed[0] == 700

    # Restarted under the same name, it re-reads its own pending entries first...
    await make_processor(settings, redis_client, db, consumer_name="crashed").run(
        asyncio.Event(), drain=True
    )
    assert await pending_count(redis_client, settings) == 0
    everything = await figures(db)
    assert everything[0] == 1_500

    # ...and a redelivery of the whole stream (here: to a brand-new group) changes nothing.
    await redis_client.xgroup_destroy(settings.stream_key, settings.consumer_group)
    await drain(settings, redis_client, db)
    assert await figures(db) == everything


async def test_the_redelivered_batch_alone_adds_nothing(
    redis_client: redis.Redis, db: asyncpg.Pool, settings: Settings
) -> None:
    events, _ = datasets.generate(400, seed=5, resend_share=0)
    await enqueue(redis_client, settings, events)
    processor = make_processor(settings, redis_client, db, consumer_name="crashed")
    await processor.ensure_group()
    entries = await read_as(redis_client, settings, "crashed", 400)
    await EventStore(db).store(decode_entries(entries).rows)
    committed = await figures(db)

    await processor.run(asyncio.Event(), drain=True)

    assert await figures(db) == committed
    assert await pending_count(redis_client, settings) == 0


async def test_entries_left_by_a_stopped_consumer_are_claimed_and_processed(
    redis_client: redis.Redis, db: asyncpg.Pool, settings: Settings
) -> None:
    events, expected = datasets.generate(1_200, seed=11, resend_share=0)
    await enqueue(redis_client, settings, events)
    await make_processor(settings, redis_client, db).ensure_group()
    await read_as(redis_client, settings, "died", 1_200)  # delivered, never stored

    # Not yet idle long enough: the survivor leaves them alone.
    survivor = make_processor(settings, redis_client, db, consumer_name="survivor")
    assert await survivor.claim_abandoned() == 0
    assert await pending_count(redis_client, settings) == 1_200

    await asyncio.sleep(0.2)
    quick = make_processor(
        settings, redis_client, db, consumer_name="survivor", claim_min_idle_ms=100
    )
    assert await quick.claim_abandoned() == 1_200
    assert await pending_count(redis_client, settings) == 0
    assert await db.fetchval("SELECT count(*) FROM events") == 1_200
    total_views = await db.fetchval("SELECT sum(total_views) FROM daily_site_stats")
    assert total_views == sum(expected.views.values())


async def test_poison_entries_go_to_the_dead_letter_stream_and_neighbours_are_stored(
    redis_client: redis.Redis, db: asyncpg.Pool, settings: Settings
) -> None:
    await enqueue(redis_client, settings, [{"site_id": "s", "event_type": "page_view"}])
    poison_id = await redis_client.xadd(settings.stream_key, {EVENT_FIELD: b"{broken"})
    await redis_client.xadd(settings.stream_key, {b"unexpected": b"shape"})
    await enqueue(redis_client, settings, [{"site_id": "s", "event_type": "page_view"}])

    await drain(settings, redis_client, db)

    assert await db.fetchval("SELECT count(*) FROM events") == 2
    assert await db.fetchval("SELECT total_views FROM daily_site_stats") == 2
    assert await pending_count(redis_client, settings) == 0
    dead = await redis_client.xrange(settings.dead_letter_key)
    assert len(dead) == 2
    first = dead[0][1]
    assert first[EVENT_FIELD] == b"{broken"
    assert first[b"dead_letter_source_id"] == poison_id
    assert first[b"dead_letter_reason"].startswith(b"not JSON")


async def test_a_duplicate_within_one_batch_is_counted_once(
    redis_client: redis.Redis, db: asyncpg.Pool, settings: Settings
) -> None:
    event = {
        "event_id": "0190b1a0-0000-7000-8000-000000000001",
        "site_id": "s",
        "event_type": "page_view",
        "path": "/x",
        "user_id": "u",
        "timestamp": "2024-01-02T03:04:05Z",
    }
    await enqueue(redis_client, settings, [event, event, event])
    await drain(settings, redis_client, db)
    assert await db.fetchval("SELECT count(*) FROM events") == 1
    row = await db.fetchrow("SELECT total_views, unique_users FROM daily_site_stats")
    assert tuple(row) == (1, 1)
    assert await db.fetchval("SELECT views FROM daily_site_path_counts") == 1


async def test_the_group_starts_at_the_beginning_of_an_existing_stream(
    redis_client: redis.Redis, db: asyncpg.Pool, settings: Settings
) -> None:
    # Events enqueued before any processor ever ran must not be skipped.
    await enqueue(redis_client, settings, [{"site_id": "s", "event_type": "page_view"}] * 5)
    await drain(settings, redis_client, db)
    assert await db.fetchval("SELECT count(*) FROM events") == 5


async def test_unique_users_count_any_event_type_and_views_only_page_views(
    redis_client: redis.Redis, db: asyncpg.Pool, settings: Settings
) -> None:
    day = "2024-07-01T12:00:00Z"
    await enqueue(
        redis_client,
        settings,
        [
            {"site_id": "s", "event_type": "page_view", "user_id": "a", "timestamp": day},
            {"site_id": "s", "event_type": "signup", "user_id": "b", "timestamp": day},
            {"site_id": "s", "event_type": "click", "path": "/c", "timestamp": day},
            {"site_id": "s", "event_type": "page_view", "user_id": "a", "timestamp": day},
            {"site_id": "s", "event_type": "page_view", "user_id": "", "timestamp": day},
            # 23:30 at -01:00 is the next UTC day.
            {
                "site_id": "s",
                "event_type": "page_view",
                "user_id": "c",
                "timestamp": "2024-07-01T23:30:00-01:00",
            },
        ],
    )
    await drain(settings, redis_client, db)
    rows = await db.fetch(
        "SELECT date::text, total_views, unique_users FROM daily_site_stats ORDER BY date"
    )
    assert [tuple(r) for r in rows] == [("2024-07-01", 3, 2), ("2024-07-02", 1, 1)]
    assert await db.fetchval("SELECT count(*) FROM events") == 6


async def test_sigterm_finishes_the_batch_in_hand_and_exits_cleanly(
    redis_client: redis.Redis, db: asyncpg.Pool, settings: Settings
) -> None:
    events, expected = datasets.generate(20_000, seed=13, resend_share=0)
    await enqueue(redis_client, settings, events)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "processor",
        cwd=ROOT,
        env=settings_env(settings),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    # Stop it once it is under way, in the middle of the backlog.
    deadline = time.monotonic() + 20
    while await db.fetchval("SELECT count(*) FROM events") == 0:
        assert time.monotonic() < deadline, "the processor stored nothing"
        await asyncio.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), timeout=10) == 0

    # What it stored is exactly what it acknowledged: nothing pending, nothing lost.
    assert await pending_count(redis_client, settings) == 0
    stored = await db.fetchval("SELECT count(*) FROM events")
    info = await redis_client.xinfo_groups(settings.stream_key)
    delivered_and_acked = len(events) - int(info[0]["lag"])
    assert stored == delivered_and_acked < len(events)

    await drain(settings, redis_client, db)
    assert await db.fetchval("SELECT sum(total_views) FROM daily_site_stats") == sum(
        expected.views.values()
    )


async def test_times_are_stored_to_the_microsecond_in_the_partition_of_their_utc_month(
    redis_client: redis.Redis, db: asyncpg.Pool, settings: Settings
) -> None:
    stamps = {
        "2024-07-31T23:59:59.999999Z": ("2024-07-31 23:59:59.999999", "events_p202407"),
        "2024-08-01T00:00:00Z": ("2024-08-01 00:00:00", "events_p202408"),
        # 00:30 at +01:00 is still August in UTC.
        "2024-09-01T00:30:00.5+01:00": ("2024-08-31 23:30:00.5", "events_p202408"),
    }
    events = [
        {"site_id": "s", "event_type": "page_view", "path": stamp, "timestamp": stamp}
        for stamp in stamps
    ]
    await enqueue(redis_client, settings, events)
    await drain(settings, redis_client, db)
    rows = await db.fetch(
        """SELECT path, ("timestamp" AT TIME ZONE 'UTC')::text AS utc,
                  tableoid::regclass::text AS partition, received_at
           FROM events"""
    )
    assert {r["path"]: (r["utc"], r["partition"]) for r in rows} == stamps
    # The processor's connections read times back as integers of microseconds, too.
    assert {r["received_at"] for r in rows} == {NOW}
