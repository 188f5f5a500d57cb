"""Token buckets by key (a client address, a site, an API key), in memory, bounded in size.

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
