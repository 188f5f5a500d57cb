"""STREAM_SHARDS on one Redis: events spread over several streams by site and visitor,
every shard served, each event counted once, the ledger balanced across shards, through
HTTP and through processors SIGKILLed at random."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import redis.asyncio as redis

from common.config import ConfigError, Settings
from common.redis_clients import AsyncRedis
from common.shards import shard_number, shards_of
from ingest.validation import parse_event
from tests import datasets
from tests.conftest import drain, run_module
from tests.ledger_check import assert_ledger_balances, totals, write_as_the_edge
from tests.test_edge_http import CHROME
from tests.test_processor_faults import FAULT_SETTINGS, Scenario

SHARDS = 3
NOW = time.time_ns() // 1000


@pytest.fixture
async def sharded(settings: Settings, redis_client: redis.Redis) -> AsyncIterator[Settings]:
    own = dataclasses.replace(settings, stream_shards=SHARDS)
    yield own
    # The shards' keys are named "{<stream key>:<n>}...": not after the stream key.
    keys = [key async for key in redis_client.scan_iter(match=f"{{{settings.stream_key}:*")]
    if keys:
        await redis_client.delete(*keys)


def test_one_shard_is_the_stream_itself_and_several_have_hash_tags_of_their_own(
    settings: Settings,
) -> None:
    [only] = shards_of(settings)
    assert (only.settings, only.entry_prefix) == (settings, b"")
    three = shards_of(dataclasses.replace(settings, stream_shards=3, stream_key="s"))
    assert [s.settings.stream_key for s in three] == ["{s:0}", "{s:1}", "{s:2}"]
    assert [s.settings.dead_letter_key for s in three][1] == "{s:1}:dead"
    assert [s.entry_prefix for s in three] == [b"0:", b"1:", b"2:"]
    # The same in every process (not Python's hash), and spread.
    assert shard_number("site", "visitor-1", 3) == shard_number("site", "visitor-1", 3)
    spread = {shard_number("site", f"visitor-{i}", 3) for i in range(100)}
    assert spread == {0, 1, 2}


async def test_events_sent_over_http_are_spread_by_visitor_and_each_counted_once(
    sharded: Settings,
    db: asyncpg.Pool,
    redis_client: redis.Redis,
    start_server: Callable[[Settings], str],
) -> None:
    headers = {"user-agent": CHROME}
    sent: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=start_server(sharded), headers=headers) as http:
        for i in range(240):
            event = {
                "site_id": f"site-{i % 3}",
                "event_type": "page_view",
                "path": f"/{i % 7}",
                "user_id": f"user-{i % 40}",
            }
            answer = await http.post("/event", json=event)
            assert answer.status_code == 202, answer.text
            sent.append(event | {"event_id": answer.json()["event_id"]})
        resend = sent[0]  # a client's retry: its own event id again
        assert (await http.post("/event", json=resend)).status_code == 202

        # Each user's events on one shard, and every shard used.
        shard_of_user: dict[tuple[str, str], set[int]] = {}
        for shard in shards_of(sharded):
            for _, fields in await redis_client.xrange(shard.settings.stream_key):
                event = orjson.loads(fields[b"event"])
                key = (event["site_id"], event["user_id"])
                shard_of_user.setdefault(key, set()).add(shard.number)
        assert all(len(numbers) == 1 for numbers in shard_of_user.values())
        assert set().union(*shard_of_user.values()) == set(range(SHARDS))

        await drain(sharded, redis_client, db)
        assert await db.fetchval("SELECT count(*) FROM events") == len(sent)
        assert await db.fetchval("SELECT sum(total_views) FROM daily_site_stats") == len(sent)
        ledger = await http.get("/ledger", params={"site_id": sent[0]["site_id"]})
        assert (ledger.json()["duplicates"], ledger.json()["balanced"]) == (1, True)
    days = totals(await assert_ledger_balances(sharded, redis_client, db))
    assert (days["accepted"], days["stored"], days["duplicates"]) == (241, 240, 1)


async def waiting_on_shards(client: AsyncRedis, settings: Settings) -> int | None:
    """Entries waiting on every shard; None until each has its consumer group, or while
    Redis (a master of a cluster) does not answer."""
    waiting = 0
    try:
        for shard in shards_of(settings):
            groups = await client.xinfo_groups(shard.settings.stream_key)
            if not groups:
                return None
            waiting += sum(int(g["pending"]) + int(g["lag"] or 0) for g in groups)
    except (redis.RedisError, OSError):
        return None
    return waiting


async def write_spread(
    client: AsyncRedis, settings: Settings, events: list[dict[str, object]]
) -> None:
    """The events validated and written to their shards as the ingest server spreads them."""
    valid = [parse_event(orjson.dumps(event), NOW) for event in events]
    by_shard: dict[int, list[dict[str, Any]]] = {}
    for event in valid:
        number = shard_number(event["site_id"], event["user_id"], settings.stream_shards)
        by_shard.setdefault(number, []).append(event)
    for shard in shards_of(settings):
        await write_as_the_edge(client, shard.settings.stream_key, by_shard[shard.number])


async def assert_exact_on_shards(
    settings: Settings,
    client: AsyncRedis,
    db: asyncpg.Pool,
    events: list[dict[str, object]],
    expected: datasets.Expected,
) -> None:
    """Each event stored once, the site-days' page views, and a balanced ledger."""
    assert await db.fetchval("SELECT count(*) FROM events") == expected.stored_events
    stats = {
        (r["site_id"], r["date"]): r["total_views"]
        for r in await db.fetch("SELECT site_id, date, total_views FROM daily_site_stats")
    }
    assert stats == {key: expected.views[key] for key in expected.site_days()}
    ledger = totals(await assert_ledger_balances(settings, client, db))
    assert (ledger["accepted"], ledger["stored"], ledger["in_stream"]) == (
        len(events),
        expected.stored_events,
        0,
    )


async def test_processors_killed_at_random_on_sharded_streams_leave_exact_figures(
    sharded: Settings, db: asyncpg.Pool, redis_client: redis.Redis, tmp_path: Path
) -> None:
    own = dataclasses.replace(sharded, **FAULT_SETTINGS)
    events, expected = datasets.generate(20_000, seed=31, resend_share=0.02)
    await write_spread(redis_client, own, events)

    scenario = Scenario(own, events, expected, tmp_path)
    names = ["p0", "p1"]
    try:
        for name in names:
            scenario.start(name)
        rng, kills = random.Random(5), 0
        deadline = time.monotonic() + 120
        while any(scenario.processes) and await waiting_on_shards(redis_client, own) != 0:
            assert time.monotonic() < deadline, "the processors never caught up"
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            if kills < 6:
                index = rng.randrange(len(names))
                scenario.kill(names[index])
                kills += 1
                names[index] = f"p{index}-{kills}"
                scenario.start(names[index])
        scenario.stop_all()
    finally:
        scenario.kill_all()
    assert kills >= 3, "the run ended before enough kills to mean anything"
    await assert_exact_on_shards(own, redis_client, db, events, expected)


async def test_each_shard_keeps_its_dead_letters_and_the_command_names_the_shard(
    sharded: Settings, db: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    bad = parse_event(orjson.dumps({"site_id": "s", "event_type": "page_view"}), NOW)
    bad["screen_width"] = -1  # refused by the processor
    second = shards_of(sharded)[1].settings
    await write_as_the_edge(redis_client, second.stream_key, [bad])
    await drain(sharded, redis_client, db)
    [(dead_id, _)] = await redis_client.xrange(second.dead_letter_key)
    ledger = totals(await assert_ledger_balances(sharded, redis_client, db))
    assert (ledger["accepted"], ledger["dead_lettered"]) == (1, 1)

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return run_module(sharded, "processor.deadletters", *args)

    listed = command("list")
    assert listed.returncode == 0, listed.stderr
    assert f"1 dead letter in {second.dead_letter_key}" in listed.stdout
    unnamed = command("replay", dead_id.decode())
    assert (unnamed.returncode, "--shard" in unnamed.stderr) == (2, True)
    replayed = command("--shard", "1", "replay", dead_id.decode())
    assert replayed.returncode == 0, replayed.stderr
    assert await redis_client.xlen(second.stream_key) >= 1
    ledger = totals(await assert_ledger_balances(sharded, redis_client, db))
    assert (ledger["replayed"], ledger["in_stream"]) == (1, 1)


def test_serve_shards_names_existing_shards_each_once() -> None:
    base = {"STREAM_SHARDS": "3"}
    assert Settings.from_env(base | {"SERVE_SHARDS": "2,0"}).serve_shards == "2,0"
    for wrong in ("3", "0,0", "a", "0,"):
        with pytest.raises(ConfigError, match="SERVE_SHARDS"):
            Settings.from_env(base | {"SERVE_SHARDS": wrong})


async def test_a_processor_serves_only_the_shards_it_is_given(
    sharded: Settings, db: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    event = parse_event(orjson.dumps({"site_id": "s", "event_type": "page_view"}), NOW)
    shards = shards_of(sharded)
    for shard in shards:
        await write_as_the_edge(redis_client, shard.settings.stream_key, [dict(event)] * 2)
    drained = run_module(dataclasses.replace(sharded, serve_shards="1"), "processor", "--drain")
    assert drained.returncode == 0, drained.stderr
    assert await db.fetchval("SELECT count(*) FROM events") == 1  # two copies of one event
    groups = {
        shard.number: await redis_client.xinfo_groups(shard.settings.stream_key) for shard in shards
    }
    assert [g["pending"] + (g["lag"] or 0) for g in groups[1]] == [0]
    assert groups[0] == groups[2] == []  # never read: no group made there
