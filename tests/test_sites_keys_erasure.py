"""`python -m sites key ...` and `erase-user` end to end, and removal with data while a
processor stores: what they print, what they change, and what they refuse."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import redis.asyncio as redis

from common.config import Settings
from sites.keys import hash_key, prefix_of
from tests.conftest import make_processor
from tests.test_processor import enqueue
from tests.test_sites import sites


async def _key(settings: Settings, *args: str) -> str:
    created = await sites(settings, "key", "create", *args)
    assert created.returncode == 0, created.stderr
    return created.stdout.splitlines()[-1]


async def test_keys_are_created_once_listed_by_prefix_and_revoked(
    settings: Settings, db: asyncpg.Pool
) -> None:
    assert (await sites(settings, "add", "shop")).returncode == 0
    key = await _key(settings, "--site", "shop", "--name", "dashboard")
    everything = await _key(settings, "--scope", "sites:admin")
    assert prefix_of(key) == key[:11] and key.startswith("ak_") and key != everything

    rows = {r["prefix"]: r for r in await db.fetch("SELECT * FROM api_keys")}
    assert set(rows) == {key[:11], everything[:11]}
    assert bytes(rows[key[:11]]["key_hash"]) == hash_key(key)
    stored = repr([dict(r) for r in rows.values()])
    assert key[11:] not in stored and everything[11:] not in stored  # no secret at rest

    listed = (await sites(settings, "key", "list")).stdout.splitlines()
    assert len(listed) == 2
    [line] = [line for line in listed if line.startswith(key[:11])]
    assert "stats:read" in line and "shop" in line and "active" in line and "dashboard" in line
    assert "(all sites)" in next(line for line in listed if line.startswith(everything[:11]))
    assert key[11:] not in "\n".join(listed)

    revoked = await sites(settings, "key", "revoke", key[:11])
    assert revoked.returncode == 0, revoked.stderr
    assert await db.fetchval(
        "SELECT revoked_at IS NOT NULL FROM api_keys WHERE prefix = $1", key[:11]
    )
    again = await sites(settings, "key", "revoke", key[:11])
    assert (again.returncode, again.stderr) == (1, f"error: key {key[:11]} is revoked already\n")
    assert "revoked 20" in next(
        line
        for line in (await sites(settings, "key", "list")).stdout.splitlines()
        if key[:11] in line
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["key", "create", "--site", "missing"], "not registered: missing"),
        (["key", "create", "--site", "shop", "--site", "nope"], "not registered: nope"),
        (["key", "create", "--site", ""], "must not be empty"),
        (["key", "create", "--name", "n" * 201], "longer than 200 bytes"),
        (["key", "revoke", "ak_00000000"], "no key"),
        (["erase-user", "shop", ""], "must not be empty"),
    ],
)
async def test_refused_key_and_erasure_commands_change_nothing(
    args: list[str], message: str, settings: Settings, db: asyncpg.Pool
) -> None:
    assert (await sites(settings, "add", "shop")).returncode == 0
    refused = await sites(settings, *args)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.startswith("error: ") and message in refused.stderr
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 0


async def test_key_usage_errors_exit_2(settings: Settings) -> None:
    for args in (["key"], ["key", "create", "--scope", "root"], ["key", "revoke"], ["erase-user"]):
        done = await sites(settings, *args)
        assert done.returncode == 2, args
        assert "usage: python -m sites" in done.stderr


async def test_removing_a_site_with_its_data_deletes_its_keys_and_keeps_others(
    settings: Settings, db: asyncpg.Pool
) -> None:
    for site in ("shop", "blog"):
        assert (await sites(settings, "add", site)).returncode == 0
    only_shop = await _key(settings, "--site", "shop")
    both = await _key(settings, "--site", "shop", "--site", "blog")
    every = await _key(settings)
    removed = await sites(settings, "remove", "shop", "--delete-data")
    assert removed.returncode == 0, removed.stderr
    assert "deleted 1 rows from api_keys" in removed.stdout
    left = dict(await db.fetch("SELECT prefix, site_ids FROM api_keys"))
    assert left == {both[:11]: ["blog"], every[:11]: []}
    assert only_shop[:11] not in left


async def test_erase_user_deletes_that_users_rows_only_while_a_processor_runs(
    settings: Settings, db: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    """The erased user's events stored before the command are gone after it; the
    processor, storing other events all along, never stops; aggregates stay."""
    first = [
        {"site_id": site, "event_type": "page_view", "path": f"/{n}", "user_id": user}
        for site in ("shop", "blog")
        for user in ("alice", "bob")
        for n in range(20)
    ]
    await enqueue(redis_client, settings, first)
    stop = asyncio.Event()
    processor = asyncio.create_task(make_processor(settings, redis_client, db).run(stop))

    async def stored(count: int) -> None:
        async with asyncio.timeout(30):
            while await db.fetchval("SELECT count(*) FROM events") < count:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

    await stored(len(first))
    stats_before = await db.fetch("SELECT * FROM daily_site_stats ORDER BY site_id, date")
    more = [
        {"site_id": "shop", "event_type": "page_view", "path": f"/more/{n}", "user_id": f"u{n}"}
        for n in range(20_000)
    ]
    writing = asyncio.create_task(enqueue(redis_client, settings, more))
    erased = await sites(settings, "erase-user", "shop", "alice")
    await writing
    assert erased.returncode == 0, erased.stderr
    assert "deleted 20 rows from events" in erased.stdout
    assert "deleted 1 rows from daily_site_users" in erased.stdout
    await stored(len(first) - 20 + len(more))
    stop.set()
    await processor

    users = {
        tuple(r)
        for r in await db.fetch(
            "SELECT DISTINCT site_id, user_id FROM events WHERE user_id IN ('alice', 'bob')"
        )
    }
    assert users == {("shop", "bob"), ("blog", "alice"), ("blog", "bob")}
    assert (
        await db.fetchval(
            "SELECT count(*) FROM daily_site_users WHERE site_id = 'shop' AND user_id = 'alice'"
        )
        == 0
    )
    stats_after = {
        (r["site_id"], r["date"]): (r["total_views"], r["unique_users"])
        for r in await db.fetch("SELECT * FROM daily_site_stats")
    }
    blog = next(r for r in stats_before if r["site_id"] == "blog")
    assert stats_after[("blog", blog["date"])] == (blog["total_views"], blog["unique_users"])
    shop = next(r for r in stats_before if r["site_id"] == "shop")
    # Aggregates kept the erased user's views and added the new ones.
    assert stats_after[("shop", shop["date"])][0] == shop["total_views"] + len(more)
