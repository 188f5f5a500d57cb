"""Cookieless visitor ids: a keyed hash of site, IP and User-Agent, with a salt per UTC day.

The salt is random, shared by every ingest process through Redis (the first process to
need a day's salt creates it; SET NX makes them agree), expires two days later, and is
never stored with the events: once it is gone, no visitor id can be linked back to an IP
address, and ids of different days cannot be linked to each other.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import redis.asyncio as redis
from asyncpg.pgproto.pgproto import UUID  # renders its text in C, see ingest/ids.py

SALT_TTL_S = 2 * 86_400


class VisitorHasher:
    def __init__(self, client: redis.Redis, key_prefix: str):
        self._client = client
        self._key_prefix = key_prefix
        self._day = -1
        self._keyed = hashlib.blake2b(digest_size=16)  # keyed with the salt once loaded
        self._loading: asyncio.Task[None] | None = None

    def is_ready(self) -> bool:
        """Whether today's salt is loaded (then visitor_id needs no Redis round trip)."""
        return int(time.time() // 86_400) == self._day

    async def ready(self) -> None:
        """Make sure today's salt is loaded: one Redis round trip per process per day."""
        today = int(time.time() // 86_400)
        if today == self._day:
            return
        # One load shared by every request that needs it; a failed one is retried.
        if self._loading is None or self._loading.done():
            self._loading = asyncio.create_task(self._load(today))
        await asyncio.shield(self._loading)

    def visitor_id(self, site_id: str, ip: str, user_agent: str) -> str:
        hasher = self._keyed.copy()  # cheaper than keying a new one for every event
        hasher.update(f"{site_id}\0{ip}\0{user_agent}".encode())
        return str(UUID(hasher.digest()))

    async def _load(self, day: int) -> None:
        key = f"{self._key_prefix}{day}"
        await self._client.set(key, os.urandom(32), nx=True, ex=SALT_TTL_S)
        salt = await self._client.get(key)
        if not isinstance(salt, bytes) or not salt:
            raise ConnectionError("the visitor salt vanished from Redis")
        self._keyed = hashlib.blake2b(key=salt, digest_size=16)
        self._day = day
