"""Rate limits by key (a client address, a site, an API key), in memory, bounded in size:
counts per whole second for the ingest hot path, token buckets for the reporting keys.

Token buckets:
Each key may spend `burst` units at once and earns `rate` units a second back. Buckets
that have filled up again are the same as no bucket, so when the table is full they are
dropped first; if it is full of busy buckets (a flood from more addresses than it holds),
it starts again empty: for a moment the limit is lifted, and memory stays bounded.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)

DEFAULT_MAX_KEYS = 65_536  # about 10 MB at most


class TokenBuckets:
    __slots__ = ("_buckets", "_max_keys", "_what", "burst", "rate")

    def __init__(self, rate: float, burst: float, what: str, max_keys: int = DEFAULT_MAX_KEYS):
        self.rate = rate
        self.burst = burst
        self._what = what
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, as of)

    def take(self, key: str, cost: float = 1.0, now: float | None = None) -> float:
        """Spend `cost` units of `key`'s bucket: 0.0 if it had them, else the seconds
        until it will (nothing is spent then). A cost above the burst costs the burst:
        one large batch is let through a full bucket rather than never."""
        cost = min(cost, self.burst)
        if now is None:
            now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._make_room(now)
            tokens = self.burst
        else:
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            return (cost - tokens) / self.rate
        self._buckets[key] = (tokens - cost, now)
        return 0.0

    def _make_room(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {
            key: bucket
            for key, bucket in self._buckets.items()
            if now - bucket[1] < full_after - bucket[0] / self.rate
        }
        if len(self._buckets) >= self._max_keys:
            logger.warning(
                "more than %d %s over their rate limit at once: limits start afresh",
                self._max_keys,
                self._what,
            )
            self._buckets = {}


def retry_after(seconds: float) -> bytes:
    """A Retry-After value: whole seconds, at least 1."""
    return b"%d" % max(1, -int(-seconds // 1))


class SecondCounts:
    """At most `limit` units per key in each whole second: a count per key, all started
    afresh every second by one timer (`reset`), so that a request costs a dict lookup
    and store, no clock. A client may thus send up to twice the limit across the turn
    of a second. At most `max_keys` keys are counted in a second; past that, new keys
    go uncounted until the next (memory stays bounded; the flood is logged)."""

    __slots__ = ("_counts", "_max_keys", "_warned", "_what", "limit")

    def __init__(self, limit: int, what: str, max_keys: int = DEFAULT_MAX_KEYS):
        self.limit = limit
        self._what = what
        self._max_keys = max_keys
        self._counts: dict[str, int] = {}
        self._warned = False

    def over(self, key: str, cost: int = 1) -> bool:
        """Count `cost` units for `key`; True (and nothing counted) when that would pass
        the limit. A cost above the limit counts as the limit: one large batch goes
        through in a second of its own rather than never."""
        counts = self._counts
        previous = counts.get(key)
        if previous is None:
            if len(counts) >= self._max_keys:
                if not self._warned:
                    logger.warning(
                        "more than %d %s in one second: the rest go uncounted",
                        self._max_keys,
                        self._what,
                    )
                    self._warned = True
                return False
            previous = 0
        count = previous + (cost if cost < self.limit else self.limit)
        if count > self.limit:
            return True
        counts[key] = count
        return False

    def reset(self) -> None:
        self._counts = {}
        self._warned = False
