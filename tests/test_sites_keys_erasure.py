"""`python -m sites key ...` and `erase-user` end to end, and removal with data while a
processor stores: what they print, what they change, and what they refuse."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime

import asyncpg
import pytest
import redis.asyncio as redis

from common.config import Settings
from common.constants import WRITTEN_TABLES
from sites.keys import PREFIX_LENGTH, ApiKey, hash_key, new_key, prefix_of
from tests.conftest import drain, make_processor
from tests.test_processor import enqueue
from tests.test_sites import sites


def test_a_new_key_is_its_public_prefix_and_a_random_secret() -> None:
    made = {new_key() for _ in range(1_000)}
    assert len(made) == 1_000
    for key in made:
        assert len(key) == PREFIX_LENGTH + 32 and prefix_of(key) == key[:PREFIX_LENGTH]
        assert key.startswith("ak_") and key[3:PREFIX_LENGTH].isalnum()
        assert key[3:PREFIX_LENGTH] == key[3:PREFIX_LENGTH].lower()
        assert hash_key(key) == hashlib.sha256(key.encode()).digest()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ak_abcd1234",  # the prefix alone
        "ak_abcd1234" + "x" * 31,
        "ak_abcd1234" + "x" * 33,
        "bk_abcd1234" + "x" * 32,
        "ak_ABCD1234" + "x" * 32,
        "ak_abcd-234" + "x" * 32,
        "ak_abcd1234" + "x" * 31 + "=",
        "ak_abcd1234" + "x" * 31 + "é",
        "ak_abcd1234" + "x" * 31 + "\ud800",
    ],
)
def test_text_that_cannot_be_one_of_our_keys_has_no_prefix(text: str) -> None:
    assert prefix_of(text) is None


def test_a_key_reads_its_sites_or_every_site_when_it_names_none() -> None:
    now = datetime.now(UTC)
    shop = ApiKey("ak_abcd1234", "", "stats:read", ("blog", "shop"), now, None, b"h" * 32)
    every = ApiKey("ak_efgh5678", "", "sites:admin", (), now, None, b"h" * 32)
    assert shop.may_read("shop") and shop.may_read("blog") and not shop.may_read("other")
    assert every.may_read("shop") and every.may_read("other")
    assert "hhhh" not in repr(shop)


async def _stored_at_least(db: asyncpg.Pool, query: str, count: int) -> None:
    async with asyncio.timeout(60):
        while await db.fetchval(query) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


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
    # No secret at rest: neither key, nor its secret part, in any form of the rows.
    stored = "\n".join(
        [repr([dict(r) for r in rows.values()])]
        + [r[0] for r in await db.fetch("SELECT k::text FROM api_keys AS k")]
        + [r[0] for r in await db.fetch("SELECT encode(key_hash, 'escape') FROM api_keys")]
    )
    for secret in (key, key[11:], everything, everything[11:]):
        assert secret not in stored

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

    # The whole key names its key too, if it is the stored one.
    forged = everything[:11] + ("A" if everything[-1] != "A" else "B") * 32
    refused = await sites(settings, "key", "revoke", forged)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert f"not the key {everything[:11]}" in refused.stderr and forged not in refused.stderr
    whole = await sites(settings, "key", "revoke", everything)
    assert whole.returncode == 0, whole.stderr
    assert everything[11:] not in whole.stdout
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL") == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["key", "create", "--site", "missing"], "not registered: missing"),
        (["key", "create", "--site", "shop", "--site", "nope"], "not registered: nope"),
        (["key", "create", "--site", ""], "must not be empty"),
        (["key", "create", "--name", "n" * 201], "longer than 200 bytes"),
        (["key", "create", "--name", "two\nlines"], "one line of printable characters"),
        (["key", "revoke", "ak_00000000"], "no key ak_00000000"),
        (["key", "revoke", "ak_0000"], "is not a key prefix"),  # no shorter match
        (["key", "revoke", "AK_00000000"], "is not a key prefix"),
        (["key", "revoke", ""], "is not a key prefix"),
        (["erase-user", "shop", ""], "must not be empty"),
        (["erase-user", "", "alice"], "must not be empty"),
        (["erase-user", "shop", "u" * 257], "longer than 256 bytes"),
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
    assert "deleted 1 rows from visitor_days" in erased.stdout
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
            "SELECT count(*) FROM visitor_days"
            " WHERE site_id = 'shop' AND visitor = visitor_key('alice', NULL)"
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


def _event(site_id: str, user_id: str, path: str) -> dict[str, object]:
    return {"site_id": site_id, "event_type": "page_view", "path": path, "user_id": user_id}


@pytest.mark.parametrize(
    ("command", "hold", "then"),
    [
        (
            ["remove", "gone", "--delete-data"],
            "UPDATE visitor_days SET visits = visits WHERE site_id = 'gone'",
            "UPDATE daily_site_stats SET total_views = total_views WHERE site_id = 'gone'",
        ),
        (
            ["erase-user", "gone", "carol"],
            "UPDATE visitor_days SET visits = visits WHERE visitor = visitor_key('carol', NULL)",
            "UPDATE events SET path = path WHERE user_id = 'carol'",
        ),
    ],
    ids=["remove", "erase-user"],
)
async def test_a_deletion_chosen_as_a_deadlock_victim_is_run_again_whole(
    command: list[str], hold: str, then: str, settings: Settings, db: asyncpg.Pool,
    redis_client: redis.Redis,
) -> None:  # fmt: skip
    """Another transaction holds rows the command deletes last and then asks for rows it
    has deleted first: PostgreSQL cancels the command's transaction, which runs again."""
    assert (await sites(settings, "add", "gone")).returncode == 0
    await enqueue(redis_client, settings, [_event("gone", "carol", f"/{n}") for n in range(5)])
    await drain(settings, redis_client, db)
    other = await asyncpg.connect(settings.database_url)
    try:
        async with other.transaction():
            await other.execute("SET LOCAL deadlock_timeout = '30s'")  # the command detects it
            await other.execute(hold)
            deleting = asyncio.create_task(sites(settings, *command))
            await _stored_at_least(
                db,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
                " AND query LIKE 'DELETE FROM visitor_days %'",
                1,
            )
            # Granted only once the command's deletions are rolled back: they were first.
            assert await other.execute(then) in ("UPDATE 1", "UPDATE 5")
    finally:
        await other.close()
    done = await deleting
    assert (done.returncode, done.stderr) == (0, "")
    assert "deleted 5 rows from events" in done.stdout
    assert "deleted 1 rows from visitor_days" in done.stdout
    for table in ("events", "visitor_days"):
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0, table


@pytest.mark.parametrize("mode", ["open", "registered"])
async def test_erasure_and_removal_run_whole_while_a_processor_stores_those_sites(
    mode: str, settings: Settings, db: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    """erase-user and remove --delete-data at once, while a processor stores a stream of
    events of both sites (the erased user's among them): both succeed, the processor keeps
    storing throughout, and what was stored before them is gone."""
    for site in ("shop", "gone"):
        assert (await sites(settings, "add", site)).returncode == 0
    await _key(settings, "--site", "gone")
    both = await _key(settings, "--site", "gone", "--site", "shop")
    every = await _key(settings)
    first = [
        _event(site, user, f"/before/{n}")
        for site, user in (("shop", "alice"), ("shop", "bob"), ("gone", "carol"))
        for n in range(20)
    ]
    await enqueue(redis_client, settings, first)
    stop = asyncio.Event()
    processor = asyncio.create_task(
        make_processor(settings, redis_client, db, sites_mode=mode).run(stop)
    )
    shop_stored = "SELECT count(*) FROM event_ids WHERE site_id = 'shop'"
    await _stored_at_least(db, "SELECT count(*) FROM events", len(first))

    commands_done = asyncio.Event()
    sent = {"shop": 40, "shop_not_alice": 20}

    async def write() -> None:
        """Chunks of 500 until the commands are done, each sent once the processor has
        stored all but the last: it is storing all along, and the stream stays short."""
        chunk = 0
        while not commands_done.is_set():
            events = [
                _event(
                    "gone" if n % 4 == 0 else "shop",
                    "alice" if n % 10 == 1 else f"u{chunk}.{n}",
                    f"/during/{chunk}/{n}",
                )
                for n in range(500)
            ]
            await enqueue(redis_client, settings, events)
            shop = [e for e in events if e["site_id"] == "shop"]
            sent["shop"] += len(shop)
            sent["shop_not_alice"] += sum(e["user_id"] != "alice" for e in shop)
            await _stored_at_least(db, shop_stored, sent["shop"] - len(shop))
            chunk += 1

    writing = asyncio.create_task(write())
    await _stored_at_least(db, shop_stored, 40 + 1)
    alice_before = [
        r[0] for r in await db.fetch("SELECT event_id FROM events WHERE user_id = 'alice'")
    ]
    gone_before = [
        r[0] for r in await db.fetch("SELECT event_id FROM events WHERE site_id = 'gone'")
    ]
    progress_before = await db.fetchval(shop_stored)
    erased, removed = await asyncio.gather(
        sites(settings, "erase-user", "shop", "alice"),
        sites(settings, "remove", "gone", "--delete-data"),
    )
    progress_after = await db.fetchval(shop_stored)
    commands_done.set()
    await writing
    assert (erased.returncode, erased.stderr) == (0, "")
    assert (removed.returncode, removed.stderr) == (0, "")
    assert progress_after > progress_before  # the processor stored while they ran
    assert not processor.done()
    await _stored_at_least(db, shop_stored, sent["shop"])
    stop.set()
    await processor

    assert len(alice_before) >= 20 and len(gone_before) >= 20
    assert (
        await db.fetchval(
            "SELECT count(*) FROM events WHERE event_id = ANY($1::uuid[])",
            alice_before + gone_before,
        )
        == 0
    )
    assert (
        await db.fetchval(
            "SELECT count(*) FROM events WHERE site_id = 'shop' AND user_id <> 'alice'"
        )
        == sent["shop_not_alice"]
    )
    # Every shop view counted once, the erased user's included: aggregates stay.
    assert (
        await db.fetchval("SELECT sum(total_views) FROM daily_site_stats WHERE site_id = 'shop'")
        == sent["shop"]
    )
    assert "deleted 1 rows from api_keys" in removed.stdout
    assert dict(await db.fetch("SELECT prefix, site_ids FROM api_keys")) == {
        both[:11]: ["shop"],
        every[:11]: [],
    }
    if mode == "registered":  # events of the removed site are dropped, before and after
        ledger = ("delivery_ledger", "ledger_entries")
        for table in WRITTEN_TABLES:
            left = await db.fetchval(f"SELECT count(*) FROM {table} WHERE site_id = 'gone'")
            assert left == 0 or table in ledger, table
        # Its ledger went with its data; the drops since are counted, nothing stored.
        stored = await db.fetchval("SELECT sum(stored) FROM delivery_ledger WHERE site_id = 'gone'")
        assert stored in (None, 0)
