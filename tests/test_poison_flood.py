"""A flood of entries that PostgreSQL could not store, mixed into clean ones and written
straight to the stream (past the edge, as an older edge or any client of Redis could):
the processor rejects each one as it decodes it, with no database work and no splitting
of batches, and stores every clean event exactly once."""

from __future__ import annotations

import random
import time

import asyncpg
import orjson
import pytest
import redis.asyncio as redis

from common.config import Settings
from common.constants import EVENT_FIELD, PAGE_VIEW
from ingest.validation import validate_event
from tests import datasets
from tests.conftest import drain

NOW = time.time_ns() // 1000
CLEAN = 4_000


def cjk(count: int, rng: random.Random) -> str:
    """Random CJK characters, 3 bytes each: PostgreSQL cannot compress them much."""
    return "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(count))


# Each is longer than the limits the processor checks again: a page view's path would make
# an index entry of more than PostgreSQL's 2,704 bytes in daily_site_path_counts.
LONG_PATH = "/" + cjk(2046, random.Random(1))  # 6,141 bytes, 2,047 characters
LONG_USER_ID = cjk(1000, random.Random(2))  # 3,000 bytes
REASONS = {
    "path": b"path: longer than 2048 bytes (UTF-8)",
    "user_id": b"user_id: longer than 256 bytes (UTF-8)",
}


def poison(rng: random.Random, field: str) -> dict[str, object]:
    event = validate_event(
        {"site_id": "site-0", "event_type": PAGE_VIEW, "path": "/p", "user_id": "u"}, NOW
    )
    event[field] = LONG_PATH if field == "path" else LONG_USER_ID
    event["timestamp"] = NOW - rng.randrange(86_400_000_000)
    return event


@pytest.mark.parametrize("poison_share", [0.005, 0.05])
async def test_a_poison_flood_is_dead_lettered_at_decode_and_clean_events_stored_once(
    redis_client: redis.Redis, db: asyncpg.Pool, settings: Settings, poison_share: float
) -> None:
    events, expected = datasets.generate(CLEAN, seed=11, resend_share=0)
    rng = random.Random(5)
    # Shares of all entries: 20 among 4,020 (0.5%), 211 among 4,211 (5%).
    poisons = round(CLEAN * poison_share / (1 - poison_share))
    entries: list[tuple[str | None, dict[str, object]]] = [
        (None, validate_event(event, NOW)) for event in events
    ]
    for n in range(poisons):
        field = "path" if n % 2 else "user_id"
        entries.insert(rng.randrange(len(entries) + 1), (field, poison(rng, field)))
    async with redis_client.pipeline(transaction=False) as pipe:
        for _, event in entries:
            pipe.xadd(settings.stream_key, {EVENT_FIELD: orjson.dumps(event)})
        ids = await pipe.execute()
    poisoned = {entry_id: field for entry_id, (field, _) in zip(ids, entries, strict=True) if field}

    await drain(settings, redis_client, db)

    # Every clean event stored once, and counted once.
    assert await db.fetchval("SELECT count(*) FROM events") == CLEAN
    assert await db.fetchval("SELECT sum(total_views) FROM daily_site_stats") == sum(
        expected.views.values()
    )
    paths = await db.fetch("SELECT site_id, date, path, views FROM daily_site_path_counts")
    assert {(r["site_id"], r["date"], r["path"]): r["views"] for r in paths} == expected.paths
    users = sum(isinstance(u, str) for day in expected.users.values() for u in day)
    assert await db.fetchval("SELECT count(*) FROM visitor_days") == users
    # Every poison entry dead-lettered once, as it was, with the reason its decoding gave.
    dead = await redis_client.xrange(settings.dead_letter_key)
    assert len(dead) == poisons
    by_source = {fields[b"dead_letter_source_id"]: fields for _, fields in dead}
    assert by_source.keys() == poisoned.keys()
    for source_id, fields in by_source.items():
        assert fields[b"dead_letter_reason"] == REASONS[poisoned[source_id]]
        assert orjson.loads(fields[EVENT_FIELD])[poisoned[source_id]] in (LONG_PATH, LONG_USER_ID)
    # Nothing left pending.
    summary = await redis_client.xpending(settings.stream_key, settings.consumer_group)
    assert summary["pending"] == 0
