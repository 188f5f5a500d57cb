"""The delivery ledger: every accepted event accounted for once, over HTTP, through
redelivery, repeats, dead letters and their replay; and a loss named when there is one."""

from __future__ import annotations

import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import orjson
import pytest
import redis
import redis.asyncio

from common.config import Settings
from common.constants import EVENT_FIELD
from ingest import stream_writer
from ingest.redis_pipe import RedisPipe
from ingest.stream_writer import StreamWriter
from ingest.validation import parse_event
from processor import deadletters
from processor.decode import Entry, decode_entries
from processor.maintenance import LEDGER_ENTRY_KEEP_MS, forget_trimmed_entries
from processor.store import Counting, EventStore
from processor.tally import record_dead_letters, where_from
from tests.conftest import drain, run_module
from tests.ledger_check import assert_ledger_balances, totals, write_as_the_edge
from tests.test_edge_http import CHROME

NOW = time.time_ns() // 1000
BROWSER = {"user-agent": CHROME}


def _verify(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return run_module(settings, "processor.ledger", "verify", *args)


async def _ledger(http: httpx.AsyncClient, **params: str) -> dict[str, object]:
    answer = await http.get("/ledger", params={"site_id": "shop", **params})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def test_the_ledger_accounts_for_every_event_sent_over_http_and_names_a_loss(
    http: httpx.AsyncClient, redis_client: redis.asyncio.Redis, db: asyncpg.Pool, settings: Settings
) -> None:
    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)
    page = {"site_id": "shop", "event_type": "page_view"}
    resent = page | {"event_id": str(uuid.uuid4())}
    for _ in range(3):  # a client retrying: accepted three times, stored once
        assert (await http.post("/event", json=resent, headers=BROWSER)).status_code == 202
    for i in range(5):
        answer = await http.post("/event", json=page | {"path": f"/{i}"}, headers=BROWSER)
        assert answer.status_code == 202
    late = page | {"timestamp": f"{yesterday.isoformat()}T23:00:00Z"}
    assert (await http.post("/event", json=late, headers=BROWSER)).status_code == 202
    batch = await http.post("/events", json=[page, {"site_id": "shop"}], headers=BROWSER)
    assert batch.json()["accepted"] == 1
    bad_time = page | {"timestamp": "soon"}
    assert (await http.post("/event", json=bad_time, headers=BROWSER)).status_code == 400
    bot = {"user-agent": "Googlebot/2.1"}
    assert (await http.post("/event", json=page, headers=bot)).json()["status"] == "ignored"

    before = await _ledger(http)
    assert before == {
        "site_id": "shop",
        "date": today.isoformat(),
        "accepted": 9,
        "replayed": 0,
        "ignored": {"bot": 1},
        "rejected": {"event_type": 1, "timestamp": 1},
        "stored": 0,
        "duplicates": 0,
        "dropped": 0,
        "dead_lettered": 0,
        "in_stream": 9,
        "unaccounted": 0,
        "balanced": True,
    }

    await drain(settings, redis_client, db)
    after = await _ledger(http)
    assert {k: after[k] for k in ("accepted", "stored", "duplicates", "in_stream")} == {
        "accepted": 9,
        "stored": 7,
        "duplicates": 2,
        "in_stream": 0,
    }
    assert after["balanced"] is True
    earlier = await _ledger(http, date=yesterday.isoformat())
    assert (earlier["accepted"], earlier["stored"], earlier["balanced"]) == (1, 1, True)
    checked = _verify(settings)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "balanced: " in checked.stdout
    assert f"{today} shop: accepted 9 = stored 7 + duplicates 2" in checked.stdout

    # An accepted event lost before it was stored (deleted from the stream by hand).
    assert (await http.post("/event", json=page, headers=BROWSER)).status_code == 202
    [(entry_id, _)] = await redis_client.xrevrange(settings.stream_key, count=1)
    await redis_client.xdel(settings.stream_key, entry_id)
    lost = await _ledger(http)
    assert (lost["accepted"], lost["unaccounted"], lost["balanced"]) == (10, 1, False)
    checked = _verify(settings, "--site", "shop", "--date", today.isoformat())
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "DIFFERS: 1 not found" in checked.stdout


async def test_the_ledger_answers_bad_parameters_with_the_field_at_fault(
    http: httpx.AsyncClient,
) -> None:
    missing = await http.get("/ledger")
    assert missing.status_code == 400
    assert missing.json()["detail"] == [{"field": "site_id", "message": "required"}]
    bad_date = await http.get("/ledger", params={"site_id": "shop", "date": "yesterday"})
    assert bad_date.status_code == 400
    assert bad_date.json()["detail"][0]["field"] == "date"


def _entries(event: dict[str, object], *ids: bytes) -> list[Entry]:
    payload = orjson.dumps(parse_event(orjson.dumps(event), NOW))
    return [(entry_id, {EVENT_FIELD: payload}) for entry_id in ids]


async def _counters(db: asyncpg.Pool) -> dict[str, int]:
    record = await db.fetchrow(
        "SELECT sum(stored) AS stored, sum(duplicates) AS duplicates, sum(dropped) AS dropped,"
        " sum(dead_lettered) AS dead_lettered FROM delivery_ledger"
    )
    assert record is not None
    return {key: int(value or 0) for key, value in record.items()}


@pytest.mark.parametrize("visits", [False, True])
async def test_a_redelivered_entry_counts_nothing_and_each_repeat_counts_once(
    db: asyncpg.Pool, visits: bool
) -> None:
    store = EventStore(db, counting=Counting(visits=visits))
    event = {"site_id": "shop", "event_type": "page_view", "event_id": str(uuid.uuid4())}
    first, second, third = _entries(event, b"1-0", b"2-0", b"3-0")

    def rows(*entries: Entry) -> list[tuple[object, ...]]:
        return decode_entries(list(entries)).rows

    assert (await store.store(rows(first))).inserted == 1
    assert (await store.store(rows(first))).duplicates == 0  # its acknowledgement was lost
    assert (await store.store(rows(second))).duplicates == 1  # the client's retry
    assert (await store.store(rows(second))).duplicates == 0  # ... delivered again
    # All three in one batch (a claim gathers them): only the third is new to the ledger.
    assert (await store.store(rows(first, second, third))).duplicates == 1
    assert await _counters(db) == {"stored": 1, "duplicates": 2, "dropped": 0, "dead_lettered": 0}
    assert await db.fetchval("SELECT entry_id FROM event_ids") == b"1-0"


async def test_events_of_sites_not_registered_are_counted_dropped_once(db: asyncpg.Pool) -> None:
    store = EventStore(db, registered_only=True)
    entries = _entries({"site_id": "nobody", "event_type": "page_view"}, b"5-0")
    for _ in range(2):  # the second: its acknowledgement was lost
        assert (await store.store(decode_entries(entries).rows)).inserted == 0
    assert await _counters(db) == {"stored": 0, "duplicates": 0, "dropped": 1, "dead_lettered": 0}


async def test_dead_letters_count_once_and_their_replays_balance(
    redis_client: redis.asyncio.Redis, db: asyncpg.Pool, settings: Settings
) -> None:
    good = parse_event(orjson.dumps({"site_id": "shop", "event_type": "page_view"}), NOW)
    # Valid at the edge, refused by the processor (as from an older or broken edge).
    bad = parse_event(orjson.dumps({"site_id": "shop", "event_type": "page_view"}), NOW)
    bad["screen_width"] = -1
    await write_as_the_edge(redis_client, settings.stream_key, [good, bad])
    await drain(settings, redis_client, db)
    ledger = totals(await assert_ledger_balances(settings, redis_client, db))
    assert (ledger["accepted"], ledger["stored"], ledger["dead_lettered"]) == (2, 1, 1)

    # Counted again (a crash before it moved): nothing more.
    [(_, fields)] = await redis_client.xrange(settings.dead_letter_key)
    source_id = fields[deadletters.SOURCE_ID_FIELD]
    original = deadletters.split_fields(fields)[1]
    async with db.acquire() as conn:
        assert await record_dead_letters(conn, {source_id: where_from(source_id, original)}) == 0

    sync = redis.Redis.from_url(settings.redis_url)
    try:
        outcome = deadletters.replay_all(sync, settings.dead_letter_key, settings.stream_key)
    finally:
        sync.close()
    assert outcome.done == 1
    ledger = totals(await assert_ledger_balances(settings, redis_client, db))
    assert (ledger["replayed"], ledger["in_stream"]) == (1, 1)
    await drain(settings, redis_client, db)  # refused again: dead-lettered a second time
    ledger = totals(await assert_ledger_balances(settings, redis_client, db))
    assert (ledger["accepted"] + ledger["replayed"], ledger["dead_lettered"]) == (3, 2)


async def test_ledger_entries_are_forgotten_a_day_after_they_leave_the_stream(
    db: asyncpg.Pool,
) -> None:
    now_ms = time.time_ns() // 1_000_000
    ages = {"old": LEDGER_ENTRY_KEEP_MS + 60_000, "recent": LEDGER_ENTRY_KEEP_MS - 60_000}
    for age in ages.values():
        await db.execute(
            "INSERT INTO ledger_entries (entry_id, entry_ms, site_id, date, outcome)"
            " VALUES ($1, $2, 's', '2026-01-01', 'duplicate')",
            f"{now_ms - age}-0".encode(),
            now_ms - age,
        )
    async with db.acquire() as conn:
        # Still in the stream (the floor older than both): both kept.
        await forget_trimmed_entries(conn, (now_ms - 2 * LEDGER_ENTRY_KEEP_MS, 0))
        assert await db.fetchval("SELECT count(*) FROM ledger_entries") == 2
        # Trimmed, both: only the one trimmed more than a day ago is forgotten.
        await forget_trimmed_entries(conn, (now_ms, 0))
    left = await db.fetchval("SELECT entry_ms FROM ledger_entries")
    assert left == now_ms - ages["recent"]


async def test_made_up_sites_of_ignored_events_cannot_grow_the_ledger_without_bound(
    redis_client: redis.asyncio.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_writer, "NAMED_SITES_PER_DAY", 3)
    options = redis_client.connection_pool.connection_kwargs
    pipe = RedisPipe(f"redis://{options['host']}:{options['port']}/{options.get('db', 0)}")
    writer = StreamWriter(pipe, settings.stream_key, settings.ledger_key_prefix, 5.0)
    flood = [
        parse_event(orjson.dumps({"site_id": f"fake-{i}", "event_type": "page_view"}), NOW)
        for i in range(5)
    ]
    writer.count_ignored(flood + flood[:1], "bot")
    writer.count_rejected([(f"fake-{i}", "event_type") for i in range(2, 6)])
    await writer.append([])  # the next write carries the counts
    await writer.aclose()
    today = datetime.fromtimestamp(NOW / 1e6, UTC).date().isoformat()
    counts = await redis_client.hgetall(settings.ledger_key_prefix + today)
    assert {k.decode(): int(v) for k, v in counts.items()} == {
        "ignored:bot:fake-0": 2,
        "ignored:bot:fake-1": 1,
        "ignored:bot:fake-2": 1,
        "ignored:bot:(other)": 2,
        "rejected:event_type:fake-2": 1,
        "rejected:event_type:(other)": 3,
    }
