"""Shard leases (processor/leases.py) on a real PostgreSQL: one owner at a time, taken over
only once expired or released, and a fenced-out owner's batch refused, even one that was
in flight when the lease changed hands."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from processor.leases import FencedOut, acquire, check_fence, release


@pytest.fixture
def shard() -> str:
    return f"{{lease-test-{uuid.uuid4().hex[:8]}:0}}"


async def test_one_owner_at_a_time_until_the_lease_expires(db: asyncpg.Pool, shard: str) -> None:
    async with db.acquire() as conn:
        first = await acquire(conn, shard, "p1", ttl_s=0.3)
        assert first is not None and first.fence == 1
        assert await acquire(conn, shard, "p2", ttl_s=0.3) is None
        await asyncio.sleep(0.4)
        second = await acquire(conn, shard, "p2", ttl_s=5)
        assert second is not None and (second.owner, second.fence) == ("p2", 2)
        async with conn.transaction():
            await check_fence(conn, second, ttl_s=5)  # the owner's batch: accepted
        with pytest.raises(FencedOut):
            async with conn.transaction():
                await check_fence(conn, first, ttl_s=5)  # the one that lost it: refused


async def test_each_batch_renews_the_lease(db: asyncpg.Pool, shard: str) -> None:
    async with db.acquire() as conn:
        lease = await acquire(conn, shard, "p1", ttl_s=0.3)
        assert lease is not None
        for _ in range(5):  # a second in all, three times the lease
            await asyncio.sleep(0.2)
            async with conn.transaction():
                await check_fence(conn, lease, ttl_s=0.3)
            assert await acquire(conn, shard, "p2", ttl_s=0.3) is None


async def test_a_takeover_waits_for_the_batch_in_flight_and_fences_the_next(
    db: asyncpg.Pool, shard: str
) -> None:
    async with db.acquire() as owner_conn, db.acquire() as other_conn:
        lease = await acquire(owner_conn, shard, "p1", ttl_s=0.1)
        assert lease is not None
        batch = owner_conn.transaction()
        await batch.start()
        await check_fence(owner_conn, lease, ttl_s=0.1)  # holds the lease's row
        await asyncio.sleep(0.2)  # expired meanwhile: the batch is slow
        takeover = asyncio.create_task(acquire(other_conn, shard, "p2", ttl_s=5))
        await asyncio.sleep(0.3)
        assert not takeover.done()  # waits for the batch's commit
        await batch.commit()
        taken = await asyncio.wait_for(takeover, 5)
        assert taken is not None and taken.fence == lease.fence + 1
        with pytest.raises(FencedOut):
            async with owner_conn.transaction():
                await check_fence(owner_conn, lease, ttl_s=0.1)


async def test_a_released_lease_is_free_at_once(db: asyncpg.Pool, shard: str) -> None:
    async with db.acquire() as conn:
        lease = await acquire(conn, shard, "p1", ttl_s=60)
        assert lease is not None
        await release(conn, lease)
        again = await acquire(conn, shard, "p2", ttl_s=60)
        assert again is not None and again.fence == 2
        await release(conn, lease)  # the old owner's late release changes nothing
        assert await acquire(conn, shard, "p3", ttl_s=60) is None
