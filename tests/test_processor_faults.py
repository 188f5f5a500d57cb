"""Fault injection: processors as real processes over a data set with known answers.

Killed with SIGKILL at random moments, many times, one or several at once; PostgreSQL
restarted; Redis killed and restarted from its append-only file. After each, every
aggregate equals the known answer, `events` holds each event_id once, nothing is
pending, and the stream is trimmed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import redis.asyncio as redis

from common.config import Settings
from common.migrate import prepare_database
from ingest.validation import parse_event
from processor.folding import ALL_DAYS, EVERYTHING, fold_ended
from processor.maintenance import apply_retention, parse_id, trim_floor, trim_stream
from processor.months import close_months
from processor.store import Counting, prepare_connection
from tests import datasets, visits_dataset
from tests.conftest import ROOT, drain, make_processor, settings_env
from tests.ledger_check import assert_ledger_balances, totals, write_as_the_edge
from tests.rollup_answers import (
    differences,
    expected_months,
    expected_rollups,
    stored_events,
    stored_months,
    stored_rollups,
    time_zones,
)
from tests.servers import PrivatePostgres, PrivateRedis

NOW = time.time_ns() // 1000

# Fast takeover and housekeeping, so that a run with many kills ends in seconds.
FAULT_SETTINGS = {
    "batch_size": 500,
    "block_ms": 100,
    "claim_min_idle_ms": 500,
    "claim_interval_ms": 200,
    "maintenance_interval_ms": 200,
    # Visits and dimensions counted, and folded as they end, while processes are killed.
    "count_visits": True,
    "fold_interval_ms": 100,
}


@dataclasses.dataclass
class Scenario:
    settings: Settings
    events: list[dict[str, object]]
    expected: datasets.Expected
    log_dir: Path
    # Visits as trackers send them, in four time zones (tests/visits_dataset.py), as
    # stream payloads: their figures are checked against the definitions.
    visits: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    processes: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)
    logs: dict[str, Path] = dataclasses.field(default_factory=dict)

    def start(self, name: str) -> None:
        env = settings_env(dataclasses.replace(self.settings, consumer_name=name))
        path = self.log_dir / f"{name}-{len(list(self.log_dir.glob('*.log')))}.log"
        with path.open("wb") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "processor"], cwd=ROOT, env=env, stdout=log, stderr=log
            )
        self.logs[name] = path

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.kill()
        process.wait()

    def stop_all(self) -> None:
        # A process still importing has no signal handler yet: SIGTERM would simply kill
        # it. Wait until each one has started (it logs its settings just before).
        deadline = time.monotonic() + 20
        for name in self.processes:
            while "starting with" not in self.logs[name].read_text(errors="replace"):
                assert time.monotonic() < deadline, f"{name} never started"
                time.sleep(0.05)
        for name, process in list(self.processes.items()):
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0, f"{name} did not exit cleanly"
            del self.processes[name]

    def kill_all(self) -> None:
        for name in list(self.processes):
            self.kill(name)

    def log_text(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.log_dir.glob("*.log"))


async def enqueue(client: redis.Redis, stream_key: str, events: list[dict[str, object]]) -> None:
    """Validated as the edge does, and written with its writer (the ledger counts them)."""
    valid = [parse_event(orjson.dumps(event), NOW) for event in events]
    await write_as_the_edge(client, stream_key, valid)


async def enqueue_scenario(client: redis.Redis, stream_key: str, scenario: Scenario) -> None:
    """The scenario's events and visits, their sites' time zones registered first."""
    conn = await asyncpg.connect(scenario.settings.database_url)
    try:
        for site, zone in visits_dataset.SITES.items():
            if zone is not None:
                await conn.execute(
                    "INSERT INTO sites (site_id, time_zone) VALUES ($1, $2)"
                    " ON CONFLICT (site_id) DO NOTHING",
                    site,
                    zone,
                )
    finally:
        await conn.close()
    await enqueue(client, stream_key, scenario.events)
    await write_as_the_edge(client, stream_key, scenario.visits)


async def backlog(client: redis.Redis, settings: Settings) -> int:
    try:
        groups = await client.xinfo_groups(settings.stream_key)
    except redis.ResponseError:
        return -1
    for group in groups:
        if group["name"].decode() == settings.consumer_group:
            return int(group["pending"]) + int(group["lag"] or 0)
    return -1  # no processor has created the group yet


async def wait_until(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.1)


async def assert_exact(scenario: Scenario, client: redis.Redis, pool: asyncpg.Pool) -> None:
    """The known answer, each event once, nothing pending, and the stream trimmed."""
    settings, expected = scenario.settings, scenario.expected
    stored = expected.stored_events + visits_dataset.distinct_events(scenario.visits)
    assert await pool.fetchval("SELECT count(*) FROM events") == stored
    assert await pool.fetchval("SELECT count(DISTINCT (site_id, event_id)) FROM events") == stored
    assert await pool.fetchval("SELECT count(*) FROM event_ids") == stored
    others = list(visits_dataset.SITES)  # checked against the definitions below
    stats = {
        (r["site_id"], r["date"]): (r["total_views"], r["unique_users"])
        for r in await pool.fetch(
            "SELECT * FROM daily_site_stats WHERE site_id <> ALL($1::text[])", others
        )
    }
    # Enqueued directly, without the edge: anonymous events get no visitor id.
    assert stats == {
        key: (
            expected.views[key],
            len({u for u in expected.users.get(key, ()) if isinstance(u, str)}),
        )
        for key in expected.site_days()
    }
    paths = {
        (r["site_id"], r["date"], r["path"]): r["views"]
        for r in await pool.fetch(
            "SELECT * FROM daily_site_path_counts WHERE site_id <> ALL($1::text[])", others
        )
    }
    assert paths == dict(expected.paths)
    # Visits and every dimension: what no stopped processor folded, a sweep folds now.
    conn = await asyncpg.connect(settings.database_url)
    try:
        await prepare_connection(conn)  # the processor's own: its temporary tables
        await fold_ended(conn, Counting(visits=True), EVERYTHING, sweep_from=ALL_DAYS)
    finally:
        await conn.close()
    events = await stored_events(pool)
    wanted, found = expected_rollups(events, await time_zones(pool)), await stored_rollups(pool)
    assert not differences(wanted, found), "\n".join(differences(wanted, found))
    assert sum(v[1] for v in found["daily_site_stats"].values()) > 0  # visits were counted
    # Every month closed (as if long past): its sums are the definitions' days added up.
    conn = await asyncpg.connect(settings.database_url)
    try:
        assert await close_months(conn, settings.max_age_seconds, date(2100, 1, 1)) > 0
    finally:
        await conn.close()
    months = await stored_months(pool)
    assert not differences(expected_months(wanted), months), "\n".join(
        differences(expected_months(wanted), months)
    )
    pending = await client.xpending(settings.stream_key, settings.consumer_group)
    assert pending["pending"] == 0
    assert await client.xlen(settings.stream_key) == 0, "acknowledged entries were not trimmed"
    # The delivery ledger: each entry accounted for once, whatever was killed or redelivered.
    accepted = len(scenario.events) + len(scenario.visits)
    ledger = totals(await assert_ledger_balances(settings, client, pool))
    assert ledger == {
        "accepted": accepted,
        "replayed": 0,
        "stored": stored,
        "duplicates": accepted - stored,
        "dropped": 0,
        "dead_lettered": 0,
        "in_stream": 0,
    }


@pytest.fixture
def scenario_factory(tmp_path: Path) -> Iterator[list[Scenario]]:
    made: list[Scenario] = []
    yield made
    for scenario in made:
        scenario.kill_all()


def new_scenario(made: list[Scenario], settings: Settings, count: int, tmp_path: Path) -> Scenario:
    events, expected = datasets.generate(count, seed=len(made) + 21, resend_share=0.02)
    visits = visits_dataset.generate(count // 30, seed=len(made) + 7)
    own = dataclasses.replace(settings, **FAULT_SETTINGS)
    scenario = Scenario(own, events, expected, tmp_path, visits)
    made.append(scenario)
    return scenario


@pytest.mark.parametrize(("processors", "writers"), [(1, 1), (1, 2), (2, 2), (4, 2)])
async def test_processors_killed_at_random_moments_leave_exact_figures(
    processors: int,
    writers: int,
    settings: Settings,
    db: asyncpg.Pool,
    redis_client: redis.Redis,
    scenario_factory: list[Scenario],
    tmp_path: Path,
) -> None:
    own = dataclasses.replace(settings, writers=writers)
    scenario = new_scenario(scenario_factory, own, 50_000, tmp_path)
    await enqueue_scenario(redis_client, settings.stream_key, scenario)
    rng = random.Random(processors * 10 + writers)
    names = [f"p{i}" for i in range(processors)]
    for name in names:
        scenario.start(name)

    kills = 0
    deadline = time.monotonic() + 120
    while await backlog(redis_client, scenario.settings) != 0:
        assert time.monotonic() < deadline, "the processors never caught up"
        await asyncio.sleep(rng.uniform(0.05, 0.4))
        if kills < 12:
            index = rng.randrange(len(names))
            scenario.kill(names[index])  # SIGKILL: mid-batch, between commit and XACK, anywhere
            kills += 1
            # Half come back under the same name (re-reading what they held), half under
            # a new one (what they held is taken over by XAUTOCLAIM).
            if rng.random() < 0.5:
                names[index] = f"p{index}-{kills}"
            scenario.start(names[index])
    await wait_until(
        lambda: _trimmed(redis_client, settings.stream_key), 20, "the stream is trimmed"
    )
    scenario.stop_all()
    assert kills >= 5, "the run ended before enough kills to mean anything"
    await assert_exact(scenario, redis_client, db)
    # Each process ran WRITERS consumers, the second and later named "<name>/<number>".
    consumers = {
        c["name"].decode()
        for c in await redis_client.xinfo_consumers(settings.stream_key, settings.consumer_group)
    }
    assert any(name.endswith("/2") for name in consumers) == (writers > 1)


async def _trimmed(client: redis.Redis, stream_key: str) -> bool:
    return int(await client.xlen(stream_key)) == 0


@pytest.fixture
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.start()
        await server.wait_until_up()
        yield server
    finally:
        server.close()


async def test_a_postgres_restart_is_survived_without_loss(
    settings: Settings,
    redis_client: redis.Redis,
    private_postgres: PrivatePostgres,
    scenario_factory: list[Scenario],
    tmp_path: Path,
) -> None:
    database_url = private_postgres.url.rsplit("/", 1)[0] + "/analytics"
    await prepare_database(database_url)
    own = dataclasses.replace(settings, database_url=database_url)
    scenario = new_scenario(scenario_factory, own, 20_000, tmp_path)
    await enqueue_scenario(redis_client, settings.stream_key, scenario)
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        scenario.start("survivor")
        await wait_until(lambda: _stored_some(pool), 30, "the processor stored a first batch")
        private_postgres.restart_immediately()
        await private_postgres.wait_until_up()
        await wait_until(
            lambda: _all_done(redis_client, scenario.settings), 60, "the backlog is processed"
        )
        await wait_until(lambda: _trimmed(redis_client, settings.stream_key), 20, "trimmed")
        scenario.stop_all()
        await assert_exact(scenario, redis_client, pool)
    # Failures, if the restart caught the processor mid-batch, are logged once per
    # interval, not once per attempt or per batch.
    assert scenario.log_text().count("failed (") <= 10


async def _stored_some(pool: asyncpg.Pool) -> bool:
    return bool(await pool.fetchval("SELECT count(*) FROM events"))


async def _all_done(client: redis.Redis, settings: Settings) -> bool:
    return await backlog(client, settings) == 0


async def test_a_redis_restart_from_its_append_only_file_is_survived(
    settings: Settings,
    db: asyncpg.Pool,
    scenario_factory: list[Scenario],
    tmp_path: Path,
) -> None:
    server = PrivateRedis(durable=True)
    server.start()
    try:
        await server.wait_until_up()
        own = dataclasses.replace(settings, redis_url=server.url)
        scenario = new_scenario(scenario_factory, own, 20_000, tmp_path)
        client = redis.Redis.from_url(server.url)
        try:
            await enqueue_scenario(client, settings.stream_key, scenario)
            scenario.start("survivor")
            await wait_until(lambda: _stored_some(db), 30, "the processor stored a first batch")
            await client.aclose()
            server.kill()
            await asyncio.sleep(0.5)  # the processor sees Redis gone
            server.start()
            await server.wait_until_up()
            client = redis.Redis.from_url(server.url)
            await wait_until(lambda: _all_done(client, scenario.settings), 60, "processed")
            await wait_until(lambda: _trimmed(client, settings.stream_key), 20, "trimmed")
            scenario.stop_all()
            await assert_exact(scenario, client, db)
        finally:
            await client.aclose()
    finally:
        server.close()


async def test_poison_rejected_by_the_database_is_isolated_and_dead_lettered(
    settings: Settings, db: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    good = [{"site_id": "s", "event_type": "page_view", "path": f"/{i}"} for i in range(300)]
    # Everything the edge accepts is storable by construction (see common/text.py), so
    # the database is made to refuse one row here: the way a constraint added by an
    # operator, or a bug, would.
    await db.execute("ALTER TABLE events ADD CONSTRAINT test_poison CHECK (path <> '/poison')")
    try:
        poison = parse_event(orjson.dumps(good[0]), NOW) | {"path": "/poison"}
        await enqueue(redis_client, settings.stream_key, good[:150])
        await write_as_the_edge(redis_client, settings.stream_key, [poison])
        [(poison_id, _)] = await redis_client.xrevrange(settings.stream_key, count=1)
        await enqueue(redis_client, settings.stream_key, good[150:])

        await drain(settings, redis_client, db)
    finally:
        await db.execute("ALTER TABLE events DROP CONSTRAINT test_poison")

    assert await db.fetchval("SELECT count(*) FROM events") == 300
    assert await db.fetchval("SELECT sum(total_views) FROM daily_site_stats") == 300
    [(_, fields)] = await redis_client.xrange(settings.dead_letter_key)
    assert fields[b"dead_letter_source_id"] == poison_id
    assert b"refused by the database" in fields[b"dead_letter_reason"]
    assert b"test_poison" in fields[b"dead_letter_reason"]
    assert (await redis_client.xpending(settings.stream_key, settings.consumer_group))[
        "pending"
    ] == 0
    ledger = totals(await assert_ledger_balances(settings, redis_client, db))
    assert (ledger["accepted"], ledger["stored"], ledger["dead_lettered"]) == (301, 300, 1)


async def test_an_entry_delivered_too_often_is_dead_lettered(
    settings: Settings, db: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    await enqueue(
        redis_client, settings.stream_key, [{"site_id": "s", "event_type": "page_view"}] * 3
    )
    await make_processor(settings, redis_client, db).ensure_group()
    entries = (
        await redis_client.xreadgroup(
            settings.consumer_group, settings.consumer_name, {settings.stream_key: ">"}, count=1
        )
    )[0][1]
    [(killer_id, _)] = entries
    # As if it had killed its consumer again and again: delivered max_deliveries times
    # (the processor's own re-read is one delivery too many), three of them while it
    # was being stored by itself.
    for _ in range(settings.max_deliveries - 1):
        await redis_client.xclaim(
            settings.stream_key, settings.consumer_group, settings.consumer_name, 0, [killer_id]
        )
    await redis_client.hset(settings.alone_attempts_key, killer_id, 3)

    await drain(settings, redis_client, db)

    assert await db.fetchval("SELECT count(*) FROM events") == 2
    [(_, fields)] = await redis_client.xrange(settings.dead_letter_key)
    assert fields[b"dead_letter_source_id"] == killer_id
    assert b"stopped its consumer 3 times" in fields[b"dead_letter_reason"]
    ledger = totals(await assert_ledger_balances(settings, redis_client, db))
    assert (ledger["accepted"], ledger["stored"], ledger["dead_lettered"]) == (3, 2, 1)


async def test_the_stream_is_never_trimmed_past_a_pending_entry(
    settings: Settings, db: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    await enqueue(redis_client, settings.stream_key, [{"site_id": "s", "event_type": "e"}] * 100)
    await make_processor(settings, redis_client, db).ensure_group()
    await redis_client.xreadgroup(
        settings.consumer_group, "holder", {settings.stream_key: ">"}, count=10
    )
    await drain(settings, redis_client, db)  # stores 90, trims what it can
    # The ten still pending with "holder" are the oldest: nothing before them to trim.
    assert await redis_client.xlen(settings.stream_key) == 100

    quick = make_processor(settings, redis_client, db, claim_min_idle_ms=0)
    await quick.claim_abandoned()
    await drain(settings, redis_client, db)
    assert await redis_client.xlen(settings.stream_key) == 0
    assert await db.fetchval("SELECT count(*) FROM events") == 100


class AcknowledgingFirst(redis.Redis):
    """A real client whose XPENDING comes just after another consumer acknowledged
    everything pending: the race between trim_floor's two reads, made certain."""

    async def xpending(self, name, groupname):  # type: ignore[no-untyped-def,override]
        for entry in await super().xpending_range(name, groupname, "-", "+", 1_000):
            await super().xack(name, groupname, entry["message_id"])
        return await super().xpending(name, groupname)


async def test_trimming_survives_entries_acknowledged_between_its_reads(
    settings: Settings, db: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    await enqueue(redis_client, settings.stream_key, [{"site_id": "s", "event_type": "e"}] * 10)
    await make_processor(settings, redis_client, db).ensure_group()
    [(_, delivered)] = await redis_client.xreadgroup(
        settings.consumer_group, "other", {settings.stream_key: ">"}, count=6
    )
    client = AcknowledgingFirst.from_url(settings.redis_url)
    try:
        # XINFO sees 6 pending, XPENDING none: the floor is just past the 6th entry, the
        # oldest that was never delivered.
        millis, sequence = parse_id(delivered[-1][0])
        assert await trim_floor(client, settings.stream_key) == (millis, sequence + 1)
        await trim_stream(client, settings.stream_key)
    finally:
        await client.aclose()
    assert await redis_client.xlen(settings.stream_key) >= 4  # XTRIM ~ keeps whole nodes


async def test_retention_drops_old_partitions_and_keeps_aggregates(
    settings: Settings, db: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    events = [
        {"site_id": "s", "event_type": "page_view", "timestamp": f"2024-{month}-15T10:00:00Z"}
        | {"user_id": "u"}
        for month in ("01", "02", "03")
    ]
    await enqueue(redis_client, settings.stream_key, events)
    visits = dataclasses.replace(settings, count_visits=True)
    await drain(visits, redis_client, db)
    assert await db.fetchval("SELECT count(*) FROM visitor_days") == 3
    partitions = {
        r["relname"]
        for r in await db.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'events'::regclass"
        )
    }
    assert {"events_p202401", "events_p202402", "events_p202403"} <= partitions

    async with db.acquire() as conn:
        days = (time.time() - 1_709_251_200) // 86_400  # from 2024-03-01 to now
        dropped = await apply_retention(conn, int(days))
    assert {"events_p202401", "events_p202402"} <= set(dropped)
    assert "events_p202403" not in dropped
    assert await db.fetchval("SELECT count(*) FROM events") == 1
    assert await db.fetchval("SELECT count(*) FROM event_ids") == 1
    # Aggregates are kept; the visitors' rows go with their days (but for the cutoff's eve).
    stats = await db.fetchrow("SELECT sum(total_views), sum(visits) FROM daily_site_stats")
    assert tuple(stats) == (3, 3)
    assert await db.fetchval("SELECT sum(visits) FROM daily_dimension_stats"
                             " WHERE dimension = 'visit:device'") == 3  # fmt: skip
    left = await db.fetch("SELECT date FROM visitor_days")
    assert [r["date"].isoformat() for r in left] == ["2024-03-15"]


async def test_consumer_groups_dropped_at_random_moments_leave_exact_figures(
    settings: Settings,
    db: asyncpg.Pool,
    redis_client: redis.Redis,
    scenario_factory: list[Scenario],
    tmp_path: Path,
) -> None:
    scenario = new_scenario(scenario_factory, settings, 20_000, tmp_path)
    await enqueue_scenario(redis_client, settings.stream_key, scenario)
    for name in ("p0", "p1"):
        scenario.start(name)
    rng = random.Random(11)
    await wait_until(lambda: _stored_some(db), 30, "the processors stored a first batch")
    for _ in range(5):  # in reads, claims, acknowledgements, trims: wherever it lands
        await redis_client.xgroup_destroy(settings.stream_key, settings.consumer_group)
        await asyncio.sleep(rng.uniform(0.05, 0.5))
    await wait_until(lambda: _all_done(redis_client, scenario.settings), 60, "processed")
    await wait_until(lambda: _trimmed(redis_client, settings.stream_key), 20, "trimmed")
    scenario.stop_all()
    await assert_exact(scenario, redis_client, db)
    assert await redis_client.xlen(settings.dead_letter_key) == 0


async def test_a_redis_at_maxmemory_is_drained_and_ingest_accepts_again(
    settings: Settings,
    db: asyncpg.Pool,
    start_server: Callable[[Settings], str],
    scenario_factory: list[Scenario],
    tmp_path: Path,
) -> None:
    server = PrivateRedis()
    server.start()
    client = redis.Redis.from_url(server.url)
    try:
        await server.wait_until_up()
        # The settings a deployer should use for a queue: never evict, refuse instead.
        used = int((await client.info("memory"))["used_memory"])
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", used + 6 * 1024 * 1024)
        own = dataclasses.replace(
            settings, redis_url=server.url, max_backlog=1_000_000_000, **FAULT_SETTINGS
        )
        accepted: list[int] = []  # the batch numbers answered 202

        async def post_batch(http: httpx.AsyncClient, number: int) -> int:
            events = [
                {"site_id": "full", "event_type": "page_view", "path": f"/{number}/{i}",
                 "user_id": f"u{i}"}
                for i in range(200)
            ]  # fmt: skip
            response = await http.post("/events", json=events)
            assert response.status_code in (202, 503), response.text
            if response.status_code == 202:
                accepted.append(number)
            return response.status_code

        async with httpx.AsyncClient(base_url=start_server(own), timeout=10) as http:
            number, refused = 0, 0
            while refused < 3:  # until Redis is full and ingest says so
                number += 1
                refused = refused + 1 if await post_batch(http, number) == 503 else 0
                assert number < 2_000, "Redis never filled up"
            memory = await client.info("memory")
            assert int(memory["used_memory"]) > 0.9 * int(memory["maxmemory"])

            scenario = Scenario(own, [], datasets.Expected(Counter(), {}, Counter(), 0), tmp_path)
            scenario_factory.append(scenario)
            scenario.start("drainer")
            deadline = time.monotonic() + 60
            while True:  # room again once the processor acknowledged and trimmed
                number += 1
                if await post_batch(http, number) == 202:
                    break
                assert time.monotonic() < deadline, "ingest never accepted again"
                await asyncio.sleep(0.2)
            await wait_until(lambda: _all_done(client, own), 60, "processed")
            scenario.stop_all()

        stored = await db.fetchval("SELECT count(DISTINCT event_id) FROM events")
        assert stored == await db.fetchval("SELECT count(*) FROM events")
        assert stored == 200 * len(accepted)
        paths = {r["path"].split("/")[1] for r in await db.fetch("SELECT path FROM events")}
        assert paths == {str(n) for n in accepted}
        assert await db.fetchval("SELECT sum(total_views) FROM daily_site_stats") == stored
        assert await client.xlen(settings.dead_letter_key) == 0
        # A write Redis refused (503) counted nothing: the ledger is exactly the 202s.
        ledger = totals(await assert_ledger_balances(own, client, db))
        assert (ledger["accepted"], ledger["stored"]) == (stored, stored)
    finally:
        await client.aclose()
        server.close()


async def test_entries_delivered_too_often_are_stored_alone_through_more_kills(
    settings: Settings,
    db: asyncpg.Pool,
    redis_client: redis.Redis,
    scenario_factory: list[Scenario],
    tmp_path: Path,
) -> None:
    # The first 3,000 entries come with MAX_DELIVERIES deliveries already, as kills of
    # their batches would leave them: every later kill finds them being stored one at a
    # time. Kills are no evidence against an entry: none may be dead-lettered.
    scenario = new_scenario(scenario_factory, settings, 10_000, tmp_path)
    await enqueue_scenario(redis_client, settings.stream_key, scenario)
    await make_processor(scenario.settings, redis_client, db).ensure_group()
    [(_, delivered)] = await redis_client.xreadgroup(
        settings.consumer_group, "p0", {settings.stream_key: ">"}, count=3_000
    )
    ids = [entry_id for entry_id, _ in delivered]
    for _ in range(scenario.settings.max_deliveries - 1):
        await redis_client.xclaim(settings.stream_key, settings.consumer_group, "p0", 0, ids)
    rng = random.Random(5)
    scenario.start("p0")
    kills = 0
    # Up to six kills while it stores them one at a time; it may finish them first.
    while kills < 6 and await _pending_among(redis_client, settings, ids):
        await wait_until(
            lambda: _alone_or_finished(scenario, redis_client, settings, ids),
            30,
            "it stores entries one at a time",
        )
        await asyncio.sleep(rng.uniform(0, 0.3))
        scenario.kill("p0")
        kills += 1
        scenario.start("p0")  # the same name: it re-reads what it held
    assert kills >= 3, "too few kills found entries being stored one at a time"
    await wait_until(lambda: _all_done(redis_client, scenario.settings), 60, "processed")
    await wait_until(lambda: _trimmed(redis_client, settings.stream_key), 20, "trimmed")
    scenario.stop_all()
    await assert_exact(scenario, redis_client, db)
    assert await redis_client.xlen(settings.dead_letter_key) == 0


async def _alone(scenario: Scenario) -> bool:
    return "one at a time" in scenario.logs["p0"].read_text(errors="replace")


async def _pending_among(client: redis.Redis, settings: Settings, ids: list[bytes]) -> bool:
    """Whether any of these (consecutive) entries is still pending."""
    return bool(
        await client.xpending_range(
            settings.stream_key, settings.consumer_group, min=ids[0], max=ids[-1], count=1
        )
    )


async def _alone_or_finished(
    scenario: Scenario, client: redis.Redis, settings: Settings, ids: list[bytes]
) -> bool:
    return await _alone(scenario) or not await _pending_among(client, settings, ids)
