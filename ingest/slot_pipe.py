"""REDIS_CLUSTER: the stream writer's raw connection (ingest/redis_pipe.py), to the master
that serves its shard's slot.

redis-py's cluster pipeline costs about five times our raw connection per event
(docs/scale-out.md), so the hot path keeps the raw one and only asks the cluster client
where to open it: at the start, and again after a connection failed (a master down, or
replaced by its replica). A write that reaches the wrong master is answered MOVED; within
MULTI, that makes Redis discard the whole transaction (EXECABORT), so the write is sent
again, whole, to the master the reply names. A slot being migrated (ASK, TRYAGAIN) fails
the write like any refusal: 503, and the client tries again.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis.asyncio

from common.redis_clients import REDIS_FAILURES
from ingest.redis_pipe import RedisPipe, RedisPipeError

# Redirects followed for one write: a slot moves once at a time; more is a cluster in flux.
MAX_REDIRECTS = 3


class SlotPipe:
    """For MULTI/EXEC transactions only: outside one, a MOVED reply to one command of
    several would leave the others applied, and resending would repeat them."""

    def __init__(
        self,
        cluster: redis.asyncio.RedisCluster,
        key: str,
        url: str,
        on_connect: list[bytes] | None = None,
    ):
        self._cluster = cluster
        self._key = key
        self._url = url
        self._on_connect = on_connect
        self._pipe: RedisPipe | None = None
        self._map_stale = False  # ask the cluster afresh which master serves the slot

    async def execute(self, commands: list[bytes]) -> list[Any]:
        replies: list[Any] = []
        for _ in range(MAX_REDIRECTS):
            pipe = self._pipe or await self._open_to_owner()
            try:
                replies = await pipe.execute(commands)
            except BaseException:
                self.close()
                self._map_stale = True
                raise
            if isinstance(replies[-1], list):  # EXEC ran it: the common case
                return replies
            moved_to = _moved_to(replies, pipe.host)
            if moved_to is None:  # refused otherwise (Redis full): the caller's to say
                return replies
            self.close()
            self._pipe = RedisPipe(self._url, self._on_connect, moved_to)
        return replies  # still redirected: the caller sees the transaction discarded

    def close(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None

    async def _open_to_owner(self) -> RedisPipe:
        # The cluster client's failures to say where (no node answers, a slot not served)
        # are raised as the connection's, which the writer answers with 503.
        try:
            if self._map_stale:
                await self._cluster.nodes_manager.initialize()
                self._map_stale = False
            else:
                await self._cluster.initialize()  # once; later calls return at once
            node = self._cluster.get_node_from_key(self._key)
        except REDIS_FAILURES as exc:
            raise RedisPipeError(f"no master found for {self._key}: {exc!r}") from exc
        assert node is not None  # (only a replica may be missing)
        self._pipe = RedisPipe(self._url, self._on_connect, (node.host, int(node.port)))
        return self._pipe


def _moved_to(replies: list[Any], own_host: str) -> tuple[str, int] | None:
    """The master named by a MOVED reply ("MOVED 7811 10.0.0.2:6379"), if any; its host
    may be empty (":6379"), which means the node's own."""
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("MOVED "):
            host, _, port = str(reply).split(" ")[2].rpartition(":")
            return host or own_host, int(port)
    return None
