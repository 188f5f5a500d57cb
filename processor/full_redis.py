"""The processor's Redis writes that must work when Redis is at maxmemory.

With `maxmemory` and the `noeviction` policy (the only safe one for a queue), Redis
refuses commands that may grow memory (XADD, XGROUP CREATE) and every command queued in
a MULTI. The processors are what frees memory there, by acknowledging and trimming, so
what they need to do that must not be refused:

- acknowledgements are plain XACKs (never inside a MULTI);
- the consumer group is created, rejected entries are dead-lettered and attempts to
  store an entry by itself are counted by Lua scripts flagged `allow-oom`, which Redis
  runs at the limit. Each takes a few bytes: a dead letter's are given back once its
  entry is trimmed from the stream, an attempt's by HDEL once the entry is handled.
  (Script flags: Redis 7.0+.)
"""

from __future__ import annotations

from typing import Any

from common.redis_clients import AsyncRedis
from processor.deadletters import REASON_FIELD, SOURCE_ID_FIELD

# KEYS[1]: the stream. ARGV[1]: the group. Returns 1 when created, 0 when it existed.
_CREATE_GROUP = """#!lua flags=allow-oom
local reply = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(reply) == 'table' and reply.err then
    if string.find(reply.err, 'BUSYGROUP', 1, true) then
        return 0
    end
    return redis.error_reply(reply.err)
end
return 1
"""

# KEYS[1]: the stream, KEYS[2]: the dead letters. ARGV[1]: the group, then for each
# entry: its id, its number of field and value items, those items. Each entry's append
# and acknowledgement run as one step: a crash can neither dead-letter it twice nor lose it.
_MOVE_TO_DEAD_LETTERS = """#!lua flags=allow-oom
local i = 2
while i <= #ARGV do
    local count = tonumber(ARGV[i + 1])
    redis.call('XADD', KEYS[2], '*', unpack(ARGV, i + 2, i + 1 + count))
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    i = i + 2 + count
end
return 0
"""


# KEYS[1]: the attempts hash. ARGV[1]: an entry id. Returns the attempts begun, this one too.
_BEGIN_ATTEMPT = """#!lua flags=allow-oom
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
"""


class AloneAttempts:
    """How often each entry has begun to be stored by itself: counted in Redis before
    each attempt, so that an attempt that stopped its consumer (a crash, a kill) is
    still counted when the entry comes again."""

    def __init__(self, client: AsyncRedis, key: str):
        self._client = client
        self._script = client.register_script(_BEGIN_ATTEMPT)
        self._key = key

    async def begin(self, entry_id: bytes) -> int:
        return int(await self._script(keys=[self._key], args=[entry_id]))

    async def forget(self, entry_ids: list[bytes]) -> None:
        """Entries handled (stored, or dead-lettered): HDEL frees memory, also at the limit."""
        if entry_ids:
            await self._client.hdel(self._key, *entry_ids)


class GroupCreator:
    def __init__(self, client: AsyncRedis, stream_key: str, group: str):
        self._script = client.register_script(_CREATE_GROUP)
        self._keys = [stream_key]
        self._group = group

    async def create(self) -> bool:
        """Create the group from the start of the stream (nothing enqueued earlier is
        skipped; entries stored already come again as duplicates). False: it existed."""
        return bool(await self._script(keys=self._keys, args=[self._group]))


class DeadLetterWriter:
    def __init__(self, client: AsyncRedis, stream_key: str, group: str, dead_letter_key: str):
        self._script = client.register_script(_MOVE_TO_DEAD_LETTERS)
        self._keys = [stream_key, dead_letter_key]
        self._group = group

    async def move(self, reasons: dict[bytes, str], fields: dict[bytes, Any]) -> None:
        """Dead-letter and acknowledge the entries `reasons` names, with their reasons;
        `fields`: the entries' fields as read (None for one deleted meanwhile)."""
        args: list[Any] = [self._group]
        for entry_id, reason in reasons.items():
            items: list[Any] = []
            for name, value in (fields.get(entry_id) or {}).items():
                items += (name, value)
            items += (SOURCE_ID_FIELD, entry_id, REASON_FIELD, reason)
            args += (entry_id, len(items), *items)
        await self._script(keys=self._keys, args=args)
