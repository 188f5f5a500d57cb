"""REDIS_CLUSTER: the whole service on a real Redis Cluster of three masters, with the
stream in three shards, each on a master of its own. The known answer through HTTP;
processors SIGKILLed at random while a master is killed and restarted from its
append-only file; the ingest server writing through a master's restart. Exact figures,
a balanced ledger."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
import redis.asyncio as redis

from common.config import ConfigError, Settings
from common.shards import shard_number, shards_of
from ingest.validation import parse_event
from tests import datasets
from tests.conftest import run_module
from tests.ledger_check import assert_ledger_balances, totals, write_as_the_edge
from tests.rollup_answers import (
    differences,
    expected_rollups,
    stored_events,
    stored_rollups,
    time_zones,
)
from tests.servers import PrivateRedisCluster, free_port
from tests.test_edge_http import CHROME
from tests.test_end_to_end import send_all
from tests.test_processor_faults import FAULT_SETTINGS, Scenario, wait_until
from tests.test_shards import assert_exact_on_shards, waiting_on_shards, write_spread

SHARDS = 3
NOW = time.time_ns() // 1000


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateRedisCluster]:
    """One cluster for the module: each test has stream keys of its own."""
    private = PrivateRedisCluster()
    try:
        private.start()
        yield private
    finally:
        private.close()


def test_a_cluster_is_reached_by_a_node_address() -> None:
    assert Settings.from_env({"REDIS_CLUSTER": "true"}).redis_cluster is True
    with pytest.raises(ConfigError, match="REDIS_CLUSTER"):
        Settings.from_env({"REDIS_CLUSTER": "true", "REDIS_URL": "unix:///run/redis.sock"})
    # Even one shard's keys share a hash tag there: a transaction stays on one master.
    [one] = shards_of(Settings(stream_key="s", redis_cluster=True))
    assert (one.settings.stream_key, one.settings.ledger_key_prefix) == ("{s:0}", "{s:0}:ledger:")


async def test_no_cluster_to_reach_is_a_503_at_once_not_a_wait(
    settings: Settings, start_server: Callable[[Settings], str]
) -> None:
    """The cluster client's own failure to find a master is answered like a lost
    connection: 503, within the Redis timeout."""
    own = dataclasses.replace(
        settings, redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_cluster=True
    )
    async with httpx.AsyncClient(base_url=start_server(own), timeout=10) as http:
        for _ in range(2):  # the first write, and one after it failed
            started = time.monotonic()
            answer = await http.post("/event", json={"site_id": "s", "event_type": "page_view"})
            assert (answer.status_code, answer.json()["error"]) == (503, "unavailable")
            assert time.monotonic() - started < 5


@pytest.fixture
async def on_cluster(
    settings: Settings, cluster: PrivateRedisCluster
) -> AsyncIterator[tuple[Settings, redis.RedisCluster]]:
    own = dataclasses.replace(
        settings,
        redis_url=cluster.url,
        redis_cluster=True,
        stream_shards=SHARDS,
        stream_key=cluster.stream_key_spread(SHARDS),
    )
    client = redis.RedisCluster.from_url(cluster.url)
    yield own, client
    await client.aclose()


async def test_the_known_answer_through_http_with_each_shard_on_its_own_master(
    on_cluster: tuple[Settings, redis.RedisCluster],
    cluster: PrivateRedisCluster,
    db: asyncpg.Pool,
    start_server: Callable[[Settings], str],
) -> None:
    own, client = on_cluster
    events, expected = datasets.generate(3_000, seed=41)
    async with httpx.AsyncClient(base_url=start_server(own), timeout=10) as http:
        await send_all(http, events)
        # Each shard on its own master, and holding events there.
        shards = shards_of(own)
        masters = {cluster.owner_of(s.settings.stream_key).port: s for s in shards}
        assert len(masters) == SHARDS
        lengths = [await client.xlen(s.settings.stream_key) for s in shards]
        assert sum(lengths) == len(events) and min(lengths) > 0, lengths

        drained = run_module(own, "processor", "--drain")
        assert drained.returncode == 0, drained.stderr

        assert await db.fetchval("SELECT count(*) FROM events") == expected.stored_events
        stats = {
            (r["site_id"], r["date"]): (r["total_views"], r["unique_users"])
            for r in await db.fetch("SELECT * FROM daily_site_stats")
        }
        assert stats == {
            key: (expected.views[key], len(expected.users.get(key, ())))
            for key in expected.site_days()
        }
        paths = {
            (r["site_id"], r["date"], r["path"]): r["views"]
            for r in await db.fetch("SELECT * FROM daily_site_path_counts")
        }
        assert paths == dict(expected.paths)
        site_id, day = min(expected.site_days())
        answer = await http.get("/stats", params={"site_id": site_id, "date": day.isoformat()})
        assert answer.json()["total_views"] == expected.views[site_id, day]

        # The operator's view works on a cluster too.
        assert (await http.get("/readyz")).status_code == 200
        metrics = (await http.get("/metrics")).text
        assert f"analytics_ingest_events_accepted_total {float(len(events))}" in metrics
        ledger = await http.get("/ledger", params={"site_id": site_id, "date": day.isoformat()})
        assert ledger.json()["balanced"] is True
    # And the operator's commands.
    verified = run_module(own, "processor.ledger", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    listed = run_module(own, "processor.deadletters", "--shard", "2", "list")
    assert (listed.returncode, listed.stdout.startswith("0 dead letters")) == (0, True), listed
    days = totals(await assert_ledger_balances(own, client, db))
    assert (days["accepted"], days["stored"], days["in_stream"]) == (
        len(events),
        expected.stored_events,
        0,
    )


async def test_processors_killed_and_a_master_restarted_from_its_append_only_file(
    on_cluster: tuple[Settings, redis.RedisCluster],
    cluster: PrivateRedisCluster,
    db: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    sharded, client = on_cluster
    # Small batches: the work outlasts the kills, and each kill finds batches in flight.
    own = dataclasses.replace(sharded, **(FAULT_SETTINGS | {"batch_size": 100}))
    events, expected = datasets.generate(40_000, seed=43, resend_share=0.02)
    await write_spread(client, own, events)

    scenario = Scenario(own, events, expected, tmp_path)
    names = ["p0", "p1"]
    master = cluster.owner_of(shards_of(own)[0].settings.stream_key)
    try:
        for name in names:
            scenario.start(name)
        await wait_until(lambda: _stored_some(db), 30, "the processors stored a first batch")
        master.kill()  # mid-run: its shard's reads, acknowledgements and trims fail
        restart_at = time.monotonic() + 1
        rng, kills_with_work_left = random.Random(7), 0
        for kill in range(1, 7):
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            if restart_at and time.monotonic() > restart_at:
                master.start()  # from its append-only file; processors killed meanwhile
                restart_at = 0
            kills_with_work_left += await waiting_on_shards(client, own) != 0  # (None: master away)
            index = rng.randrange(len(names))
            scenario.kill(names[index])
            names[index] = f"p{index}-{kill}"
            scenario.start(names[index])
        if restart_at:
            master.start()
        await wait_until(lambda: _caught_up(client, own), 120, "the processors caught up")
        scenario.stop_all()
    finally:
        scenario.kill_all()
    assert kills_with_work_left >= 3, "the work ended before enough kills to mean anything"
    await assert_exact_on_shards(own, client, db, events, expected)
    # Visits and every dimension, as the definitions give them from the stored events.
    drained = run_module(own, "processor", "--drain")  # folds every visit still open
    assert drained.returncode == 0, drained.stderr
    wanted = expected_rollups(await stored_events(db), await time_zones(db))
    found = await stored_rollups(db)
    assert not differences(wanted, found), "\n".join(differences(wanted, found))


async def _caught_up(client: redis.RedisCluster, settings: Settings) -> bool:
    return await waiting_on_shards(client, settings) == 0


async def _stored_some(db: asyncpg.Pool) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM events"))


async def test_the_ingest_server_writes_on_through_a_master_restart(
    on_cluster: tuple[Settings, redis.RedisCluster],
    cluster: PrivateRedisCluster,
    db: asyncpg.Pool,
    start_server: Callable[[Settings], str],
) -> None:
    """Every event answered 202 is stored once; those answered 503 while their master was
    away are sent again, as a client would, until they are taken."""
    own, client = on_cluster
    sent, refused = 0, 0
    master = cluster.owner_of(shards_of(own)[1].settings.stream_key)
    headers = {"user-agent": CHROME}
    async with httpx.AsyncClient(base_url=start_server(own), headers=headers) as http:
        for i in range(300):
            if i == 100:
                master.kill()
            event = {
                "site_id": "s",
                "event_type": "page_view",
                "path": f"/{i % 9}",
                "user_id": f"user-{i % 30}",  # spread over every shard
                "event_id": str(uuid.uuid4()),  # the same event when it is sent again
            }
            deadline = time.monotonic() + 30
            while (answer := await http.post("/event", json=event)).status_code != 202:
                assert answer.status_code == 503, answer.text
                assert time.monotonic() < deadline, "the master's shard never came back"
                refused += 1
                if refused == 10:  # refused for a while: the master comes back
                    master.start()
                await asyncio.sleep(0.05)
            sent += 1
    assert refused > 0, "no write went to the stopped master: the test proved nothing"
    drained = run_module(own, "processor", "--drain")
    assert drained.returncode == 0, drained.stderr
    assert await db.fetchval("SELECT count(*) FROM events") == sent
    assert await db.fetchval("SELECT sum(total_views) FROM daily_site_stats") == sent
    ledger = totals(await assert_ledger_balances(own, client, db))
    assert (ledger["accepted"], ledger["stored"]) == (sent, sent)


async def test_a_shard_whose_slot_moves_to_another_master_is_followed_there(
    on_cluster: tuple[Settings, redis.RedisCluster],
    cluster: PrivateRedisCluster,
    db: asyncpg.Pool,
    start_server: Callable[[Settings], str],
) -> None:
    """The ingest server's connection to a shard's master is told MOVED once the slot has
    moved (resharding): the transaction it was in is discarded, and sent to the master
    named. No event is refused, none is written twice."""
    own, client = on_cluster
    shard = shards_of(own)[0].settings
    before = cluster.owner_of(shard.stream_key)
    after = next(node for node in cluster.nodes if node is not before)
    events = [
        {"site_id": "s", "event_type": "page_view", "path": "/", "user_id": f"user-{i}"}
        for i in range(120)
    ]
    async with httpx.AsyncClient(
        base_url=start_server(own), headers={"user-agent": CHROME}
    ) as http:
        for i, event in enumerate(events):
            if i == 60:
                cluster.move_slot_of(shard.stream_key, after)
            answer = await http.post("/event", json=event)
            assert answer.status_code == 202, answer.text
    assert cluster.owner_of(shard.stream_key) is after
    async with redis.Redis.from_url(after.url) as direct:  # the shard, whole, moved there
        assert await direct.xlen(shard.stream_key) == sum(
            shard_number("s", e["user_id"], SHARDS) == 0 for e in events
        )
    drained = run_module(own, "processor", "--drain")
    assert drained.returncode == 0, drained.stderr
    assert await db.fetchval("SELECT count(*) FROM events") == len(events)
    ledger = totals(await assert_ledger_balances(own, client, db))
    assert (ledger["accepted"], ledger["stored"]) == (len(events), len(events))


async def test_a_dead_letter_is_replayed_on_its_shards_master(
    on_cluster: tuple[Settings, redis.RedisCluster], db: asyncpg.Pool
) -> None:
    """The dead-letter command's WATCH/MULTI transaction, through the cluster client."""
    own, client = on_cluster
    bad = parse_event(orjson.dumps({"site_id": "s", "event_type": "page_view"}), NOW)
    bad["screen_width"] = -1  # refused by the processor
    second = shards_of(own)[1].settings
    await write_as_the_edge(client, second.stream_key, [bad])
    drained = run_module(own, "processor", "--drain")
    assert drained.returncode == 0, drained.stderr
    [(dead_id, _)] = await client.xrange(second.dead_letter_key)
    replayed = run_module(own, "processor.deadletters", "--shard", "1", "replay", dead_id.decode())
    assert replayed.returncode == 0, replayed.stderr
    assert await client.xlen(second.dead_letter_key) == 0
    ledger = totals(await assert_ledger_balances(own, client, db))
    assert (ledger["accepted"], ledger["dead_lettered"], ledger["replayed"]) == (1, 1, 1)
    assert ledger["in_stream"] == 1  # back in its stream, waiting to be stored again
