"""STREAM_SHARDS: the stream split into several keys, so that a Redis Cluster can spread
them over its masters (docs/scale-out.md).

With one shard, everything is as it always was: STREAM_KEY and the keys named after it.
With N, or on a Redis Cluster (REDIS_CLUSTER) even with one, shard i's stream is
"{STREAM_KEY:i}", and its consumer group, dead letters,
entries stored alone and delivery-ledger counts are named after that key, sharing its
hash tag: whatever is written together (a MULTI/EXEC, a script) stays on one node. A
shard is served as a stream of its own: each processor runs its consumers on every
shard, each with the shard's settings.

The ingest server sends a whole request to one shard, chosen by the site and visitor of
its first event (a hash that every process computes alike): a request stays one
transaction, and a visitor's events stay on one shard.

Entry ids repeat across shards, so the ids the ledger keeps (processor/tally.py) carry
the shard's number in front ("2:1733480000000-0"); with one shard, none.
"""

from __future__ import annotations

import dataclasses
import zlib

from common.config import Settings


@dataclasses.dataclass(frozen=True, slots=True)
class Shard:
    number: int
    settings: Settings  # STREAM_KEY is the shard's stream, and STREAM_SHARDS 1
    entry_prefix: bytes  # in front of its entry ids where the ledger keeps them


def shards_of(settings: Settings) -> list[Shard]:
    if settings.stream_shards == 1 and not settings.redis_cluster:
        return [Shard(0, settings, b"")]
    return [
        Shard(
            number,
            dataclasses.replace(
                settings,
                stream_key=f"{{{settings.stream_key}:{number}}}",
                stream_shards=1,
                serve_shards="",
            ),
            f"{number}:".encode(),
        )
        for number in range(settings.stream_shards)
    ]


def served_shards(settings: Settings) -> list[Shard]:
    """The shards a processor serves: SERVE_SHARDS, or every one."""
    shards = shards_of(settings)
    if not settings.serve_shards:
        return shards
    return [shards[int(number)] for number in settings.serve_shards.split(",")]


def shard_number(site_id: str, visitor: str | None, shards: int) -> int:
    """The shard of a site's visitor (a user_id or a visitor id): the same in every
    process (CRC-32, not Python's hash, which differs from process to process)."""
    if shards == 1:
        return 0
    return zlib.crc32(f"{site_id}\x00{visitor or ''}".encode()) % shards


def entry_millis(entry_id: bytes) -> int:
    """The milliseconds of an entry id, with or without its shard's number in front."""
    return int(entry_id.rpartition(b":")[2].split(b"-", 1)[0])
