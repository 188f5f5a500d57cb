"""Shard leases: one processor at a time owns a stream shard, proven by a fencing number.

A building block of the shard owners that issue 13 plans (docs/performance.md, "What the
owner's state must keep true"): an owner keeps its shard's open visits in memory, so no
other processor may write that shard's figures while it holds them, and a processor that
lost its lease without knowing (stopped for longer than the lease, then woken) must not
commit what it counted from memory that another owner has since rebuilt.

- `acquire` takes a shard whose lease is free or expired, and raises its fence by one.
- `CHECK_FENCE`, run inside each of the owner's batch transactions, renews the lease and
  locks its row until the commit. A takeover (an UPDATE of that row) therefore waits for
  a batch in flight, and every batch after it finds the fence raised: `FencedOut`.
- Time is PostgreSQL's (`now()`): the processors' clocks never meet.
"""

from __future__ import annotations

import dataclasses

import asyncpg


class FencedOut(Exception):
    """Another processor owns the shard now: this one's memory of it is stale."""


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    stream_key: str
    owner: str
    fence: int


# A free or expired lease (or none yet) becomes $2's, with the fence raised.
_ACQUIRE = """
INSERT INTO shard_leases AS l (stream_key, owner, fence, expires_at)
VALUES ($1, $2, 1, now() + make_interval(secs => $3))
ON CONFLICT (stream_key) DO UPDATE
SET owner = excluded.owner, fence = l.fence + 1, expires_at = excluded.expires_at
WHERE l.expires_at <= now()
RETURNING fence
"""

# Inside an owner's transaction: renews the lease and holds its row until the commit.
CHECK_FENCE = """
UPDATE shard_leases SET expires_at = now() + make_interval(secs => $3)
WHERE stream_key = $1 AND fence = $2
RETURNING 1
"""

# Given up (a clean stop): free at once for the next owner, unless already taken.
_RELEASE = "UPDATE shard_leases SET expires_at = now() WHERE stream_key = $1 AND fence = $2"


async def acquire(
    conn: asyncpg.Connection, stream_key: str, owner: str, ttl_s: float
) -> Lease | None:
    """The shard's lease for `owner`, or None while another holds it unexpired. A
    processor that restarts takes its own shard again only once its old lease expired
    (or was released): its memory of it is gone, so it is a new owner, with a new fence."""
    fence = await conn.fetchval(_ACQUIRE, stream_key, owner, ttl_s)
    return None if fence is None else Lease(stream_key, owner, fence)


async def check_fence(conn: asyncpg.Connection, lease: Lease, ttl_s: float) -> None:
    """Within the batch's transaction: renew, or raise FencedOut (roll the batch back)."""
    if await conn.fetchval(CHECK_FENCE, lease.stream_key, lease.fence, ttl_s) is None:
        raise FencedOut(f"{lease.stream_key}: fence {lease.fence} is no longer the owner's")


async def release(conn: asyncpg.Connection, lease: Lease) -> None:
    await conn.execute(_RELEASE, lease.stream_key, lease.fence)
