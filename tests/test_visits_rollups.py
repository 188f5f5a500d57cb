"""Visits and dimensions through the stream into every rollup, against the definitions
(docs/metrics.md) applied by the test to the stored events: whatever the batching, the
order, late events, a second processor at the same time, or the visits switch."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from common.config import Settings
from processor.folding import ALL_DAYS, EVERYTHING, Folder, fold_ended
from processor.store import Counting
from tests import visits_dataset
from tests.conftest import drain, make_processor
from tests.rollup_answers import (
    differences,
    expected_rollups,
    stored_events,
    stored_rollups,
    time_zones,
)

MINUTE = 60_000_000


@pytest.fixture
def visits_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, count_visits=True)


async def register_time_zones(db: asyncpg.Pool) -> None:
    for site, zone in visits_dataset.SITES.items():
        if zone is not None:
            await db.execute("INSERT INTO sites (site_id, time_zone) VALUES ($1, $2)", site, zone)


async def enqueue(client: redis.Redis, settings: Settings, payloads: list[dict[str, Any]]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for payload in payloads:
            pipe.xadd(settings.stream_key, visits_dataset.stream_fields(payload))
        await pipe.execute()


async def assert_rollups_are_the_definitions(
    db: asyncpg.Pool, stored: int, *, least_values: int = 0
) -> None:
    events = await stored_events(db)
    assert len(events) == stored
    expected = expected_rollups(events, await time_zones(db))
    actual = await stored_rollups(db)
    assert not differences(expected, actual), "\n".join(differences(expected, actual))
    assert len(expected["daily_dimension_stats"]) >= least_values  # not trivially equal


def payload(at: int, path: str = "/", **fields: Any) -> dict[str, Any]:
    return {
        "event_id": hex_uuid(f"{random.Random(f'{at}{path}{fields}').getrandbits(128):032x}"),
        "site_id": "s",
        "event_type": "page_view",
        "url": f"https://s.example{path}",
        "timestamp": at,
        "received_at": at,
        "visitor_id": "3b241101-e2bb-4255-8caf-4136c566a962",
    } | fields


def hex_uuid(text: str) -> str:
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:32]}"


async def test_a_days_visits_are_counted_as_the_definitions_say(
    visits_settings: Settings, db: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    """Worked by hand: A views /a, /b, clicks, and 40 minutes later /c; B views /a and
    scrolls (not an interaction)."""
    start = 1_796_040_000_000_000  # 2026-11-30 10:40 UTC
    b = {"visitor_id": "00000000-0000-4000-8000-00000000000b"}
    events = [
        payload(start, "/a", referrer="https://www.google.com/"),
        payload(start + 10 * MINUTE, "/b"),
        payload(start + 20 * MINUTE, "/b", event_type="click", props={"k": "v"}),
        payload(start + 60 * MINUTE, "/c"),
        payload(start, "/a", **b),
        payload(start + MINUTE, "/a", event_type="scroll", interactive=False, **b),
    ]
    for number, event in enumerate(events):
        event["event_id"] = hex_uuid(f"{number:032x}")
    await enqueue(redis_client, visits_settings, events)
    await drain(visits_settings, redis_client, db)
    day = date(2026, 11, 30)
    stats = await db.fetchrow("SELECT * FROM daily_site_stats WHERE site_id = 's'")
    assert stats["date"] == day
    assert dict(stats) | {"site_id": "s", "date": day} == {
        "site_id": "s",
        "date": day,
        "total_views": 4,
        "unique_users": 2,
        "visits": 3,
        "bounces": 2,  # A's second visit and B's
        "duration_us": 21 * MINUTE,  # 20 minutes of A's first visit, 1 of B's
        "events": 6,
    }
    paths = {
        r["path"]: (r["views"], r["visitors"], r["visits"])
        for r in await db.fetch("SELECT * FROM daily_site_path_counts")
    }
    assert paths == {"/a": (2, 2, 2), "/b": (1, 1, 1), "/c": (1, 1, 1)}
    dims = {
        (r["dimension"], r["value"]): tuple(r)[4:]
        for r in await db.fetch("SELECT * FROM daily_dimension_stats")
    }
    # visitors, visits, page views, bounces, duration, events
    assert dims[("visit:entry_page", "/a")] == (2, 2, 3, 1, 21 * MINUTE, 5)
    assert dims[("visit:entry_page", "/c")] == (1, 1, 1, 1, 0, 1)
    assert dims[("visit:exit_page", "/b")] == (1, 1, 2, 0, 20 * MINUTE, 3)
    assert dims[("visit:source", "Google")] == (1, 1, 2, 0, 20 * MINUTE, 3)
    assert dims[("visit:source", "")] == (2, 2, 2, 2, MINUTE, 3)  # Direct / None
    assert dims[("event:name", "page_view")] == (2, 3, 0, 0, 0, 4)
    assert dims[("event:name", "scroll")] == (1, 1, 0, 0, 0, 1)
    assert dims[("event:props:k", "v")] == (1, 1, 0, 0, 0, 1)


@pytest.mark.parametrize(("batch_size", "writers"), [(500, 1), (7, 2)])
async def test_every_rollup_is_the_definitions_applied_to_the_stored_events(
    batch_size: int,
    writers: int,
    visits_settings: Settings,
    db: asyncpg.Pool,
    redis_client: redis.Redis,
) -> None:
    payloads = visits_dataset.generate(600 if batch_size > 100 else 150)
    await register_time_zones(db)
    await enqueue(redis_client, visits_settings, payloads)
    own = dataclasses.replace(visits_settings, batch_size=batch_size, writers=writers)
    processors = [make_processor(own, redis_client, db, consumer_name=f"w{n}") for n in (1, 2)]
    await asyncio.gather(*(p.run(asyncio.Event(), drain=True) for p in processors))
    async with db.acquire() as conn:
        await fold_ended(conn, Counting(visits=True), EVERYTHING, sweep_from=ALL_DAYS)
    await assert_rollups_are_the_definitions(
        db, visits_dataset.distinct_events(payloads), least_values=100
    )


async def test_the_order_of_arrival_changes_no_figure(
    visits_settings: Settings, db: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    payloads = visits_dataset.generate(300, seed=5)
    await register_time_zones(db)
    shuffled = payloads[:]
    random.Random(1).shuffle(shuffled)  # late events of every kind, joining visits too
    await enqueue(redis_client, visits_settings, shuffled)
    await drain(dataclasses.replace(visits_settings, batch_size=31), redis_client, db)
    await assert_rollups_are_the_definitions(
        db, visits_dataset.distinct_events(payloads), least_values=100
    )


async def test_late_events_change_folded_visits_exactly(
    visits_settings: Settings, db: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    """Everything folded first; then events that extend a folded visit, join two, start
    one before them, and repeat one already stored."""
    start = 1_796_040_000_000_000
    first = [payload(start, "/a"), payload(start + 40 * MINUTE, "/b")]
    first += [payload(start + 90 * MINUTE, "/c", visitor_id=hex_uuid("c" * 32))]
    await enqueue(redis_client, visits_settings, first)
    await drain(visits_settings, redis_client, db)
    assert await db.fetchval("SELECT sum(visits) FROM daily_site_stats") == 3
    late = [
        payload(start + 20 * MINUTE, "/join"),  # joins /a and /b: one visit of three
        payload(start - 50 * MINUTE, "/early"),  # a visit of its own, before them
        payload(start + 95 * MINUTE, "/d", visitor_id=hex_uuid("c" * 32)),  # extends /c
        first[0],  # stored before: changes nothing
    ]
    await enqueue(redis_client, visits_settings, late)
    await drain(visits_settings, redis_client, db)
    assert await db.fetchval("SELECT sum(visits) FROM daily_site_stats") == 3
    await assert_rollups_are_the_definitions(db, 6, least_values=20)


async def test_visits_sent_through_http_are_counted_as_the_definitions_say(
    http: httpx.AsyncClient,
    visits_settings: Settings,
    db: asyncpg.Pool,
    redis_client: redis.Redis,
) -> None:
    """Through the edge: it gives anonymous visitors their daily visitor id (from address
    and User-Agent) and passes the User-Agent on for browser, OS and device."""
    first = datetime.now(UTC) - timedelta(days=3)  # all within the accepted past
    sent = visits_dataset.requests(200, seed=9, first=first)
    await register_time_zones(db)
    for body, edge in sent:
        response = await http.post("/event", json=body, headers={"user-agent": edge["ua"]})
        assert response.status_code == 202, response.text
    await drain(visits_settings, redis_client, db)
    await assert_rollups_are_the_definitions(
        db, len({(body["site_id"], body["event_id"]) for body, _ in sent}), least_values=100
    )
    browsers = await db.fetch(
        "SELECT DISTINCT value FROM daily_dimension_stats WHERE dimension = 'visit:browser'"
    )
    assert {r["value"] for r in browsers} == {"Chrome", "Safari", "Firefox"}


async def test_two_processors_counting_the_same_visitors_at_once_agree_with_one(
    visits_settings: Settings, db: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    """Few visitors, many events each, tiny batches, and a fold running all the while:
    every batch of one processor holds visitor-days the other holds too."""
    rng = random.Random(2)
    start = 1_796_040_000_000_000
    visitors = [hex_uuid(f"{n:032x}") for n in range(5)]
    events = [
        payload(start + rng.randrange(180) * MINUTE, f"/{rng.randrange(9)}", visitor_id=v)
        | {"event_id": hex_uuid(f"{rng.getrandbits(128):032x}")}
        for v in visitors
        for _ in range(200)
    ]
    events.sort(key=lambda e: e["timestamp"])
    await enqueue(redis_client, visits_settings, events)
    own = dataclasses.replace(visits_settings, batch_size=5, writers=2)
    counting = Counting(visits=True)
    processors = [make_processor(own, redis_client, db, consumer_name=f"p{n}") for n in range(2)]
    folding = asyncio.Event()

    async def fold_meanwhile() -> None:
        async with db.acquire() as conn:
            while not folding.is_set():
                for processor in processors:
                    await fold_ended(conn, processor.counting, start + 60 * MINUTE)
                await asyncio.sleep(0.01)

    folder = asyncio.create_task(fold_meanwhile())
    await asyncio.gather(*(p.run(asyncio.Event(), drain=True) for p in processors))
    folding.set()
    await folder
    async with db.acquire() as conn:
        await fold_ended(conn, counting, EVERYTHING, sweep_from=ALL_DAYS)
    await assert_rollups_are_the_definitions(db, len(events), least_values=20)


async def test_without_visits_visitors_are_counted_and_later_with_visits_not_again(
    settings: Settings, visits_settings: Settings, db: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    start = 1_796_040_000_000_000
    await enqueue(redis_client, settings, [payload(start, "/a")])
    await drain(settings, redis_client, db)  # COUNT_VISITS=false
    assert await db.fetchval("SELECT unique_users FROM daily_site_stats") == 1
    assert await db.fetchval("SELECT visits FROM visitor_days") is None
    await enqueue(redis_client, settings, [payload(start + MINUTE, "/b")])
    await drain(visits_settings, redis_client, db)
    stats = await db.fetchrow("SELECT * FROM daily_site_stats")
    # The visitor counted once; their visit counted from the events since visits are on.
    assert (stats["unique_users"], stats["total_views"], stats["visits"]) == (1, 2, 1)


async def test_a_quiet_stream_s_ended_visits_are_folded_by_the_running_processor(
    visits_settings: Settings, db: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    """Once the processor has read all there is, a visit ends 30 minutes after its last
    event by the clock: no later event has to come to fold it."""
    start = (time.time_ns() // 1000) - 40 * MINUTE
    await enqueue(redis_client, visits_settings, [payload(start, "/a"), payload(start, "/b")])
    own = dataclasses.replace(visits_settings, block_ms=50)
    processor = make_processor(own, redis_client, db)
    folder = Folder(db, processor.counting, 0.05, processor.health)
    stop = asyncio.Event()
    running = [asyncio.create_task(processor.run(stop)), asyncio.create_task(folder.run(stop))]
    try:
        deadline = time.monotonic() + 10
        while not await db.fetchval(
            "SELECT visits FROM daily_dimension_stats WHERE dimension = 'visit:entry_page'"
        ):
            assert time.monotonic() < deadline, "the ended visit was never folded"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*running)
    await assert_rollups_are_the_definitions(db, 2)
