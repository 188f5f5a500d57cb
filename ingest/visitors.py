"""Cookieless visitor ids: a keyed hash of site, IP and User-Agent, with a salt per UTC day.

The salt is chosen by the day the event happened (its timestamp), not the day it was
received: a visitor is counted on the event's day, so an event sent late or across
midnight must hash with the salt of the day it is counted on, or the same person would
be two visitors of that day.

Salts are random, shared by every ingest process through Redis (the first process to
need a day's salt creates it; SET NX makes them agree), and never stored with the
events. A day's salt expires one day after the last moment an event of that day can
still be accepted (the end of the day plus MAX_AGE_SECONDS): from then on no visitor id
of that day can be linked back to an IP address, and ids of different days never could.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

from asyncpg.pgproto.pgproto import UUID  # renders its text in C, see ingest/ids.py

from common.constants import MICROS_PER_DAY
from common.redis_clients import AsyncRedis

SECONDS_PER_DAY = 86_400


class SaltNotLoaded(LookupError):
    """The salt of an event's day is not in this process yet (VisitorHasher.load)."""


class VisitorHasher:
    def __init__(self, client: AsyncRedis, key_prefix: str, max_age_s: int):
        self._client = client
        self._key_prefix = key_prefix
        self._max_age_s = max_age_s
        # Day (since the epoch) -> BLAKE2b keyed with its salt, copied for each event:
        # cheaper than keying a new one. Only days within the accepted age window stay.
        self._keyed: dict[int, hashlib.blake2b] = {}
        self._loading: dict[int, asyncio.Task[None]] = {}

    def visitor_id(self, timestamp: int, site_id: str, ip: str, user_agent: str) -> str:
        """The visitor id of an event at `timestamp` (microseconds since the epoch);
        SaltNotLoaded when that day's salt must be loaded first."""
        keyed = self._keyed.get(timestamp // MICROS_PER_DAY)
        if keyed is None:
            raise SaltNotLoaded(timestamp // MICROS_PER_DAY)
        hasher = keyed.copy()
        hasher.update(f"{site_id}\0{ip}\0{user_agent}".encode())
        return str(UUID(hasher.digest()))

    async def load(self, timestamps: list[int]) -> None:
        """Make sure the salts of these events' days are loaded: one Redis round trip
        per process and day, shared by every request that needs it; a failed one is
        retried by the next request."""
        days = {timestamp // MICROS_PER_DAY for timestamp in timestamps} - self._keyed.keys()
        for day in days:
            task = self._loading.get(day)
            if task is None or task.done():
                self._loading[day] = asyncio.create_task(self._load(day))
        await asyncio.gather(*(asyncio.shield(self._loading[day]) for day in days))

    async def _load(self, day: int) -> None:
        key = f"{self._key_prefix}{day}"
        # Expires at the same moment whichever process creates it.
        expires_at = (day + 2) * SECONDS_PER_DAY + self._max_age_s
        await self._client.set(key, os.urandom(32), nx=True, exat=expires_at)
        salt = await self._client.get(key)
        if not isinstance(salt, bytes) or not salt:
            raise ConnectionError("the visitor salt vanished from Redis")
        self._keyed[day] = hashlib.blake2b(key=salt, digest_size=16)
        self._loading.pop(day, None)
        # Bounded memory: salts of days whose events can no longer be accepted go.
        oldest = (int(time.time()) - self._max_age_s) // SECONDS_PER_DAY
        for stale in [d for d in self._keyed if d < oldest]:
            del self._keyed[stale]
