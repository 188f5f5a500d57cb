"""redis-py clients for REDIS_URL: a plain one, or with REDIS_CLUSTER a cluster client
that sends each command to the master serving its key's slot (docs/scale-out.md).

Whatever we send together (a transaction, a script, a pipeline's reads of one shard)
names keys of one hash tag (common/shards.py), so it runs on one node either way. The
ingest server's stream writes go by connections of their own (ingest/redis_pipe.py).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from redis.exceptions import RedisClusterException, RedisError

from common.config import Settings

AsyncRedis = redis.asyncio.Redis | redis.asyncio.RedisCluster
SyncRedis = redis.Redis | redis.RedisCluster

# What a Redis call raises when Redis cannot answer: redis-py's errors, the cluster
# client's own (no node reachable, a slot not served: not RedisError's kind) and the
# socket's.
REDIS_FAILURES = (RedisError, RedisClusterException, OSError)


def async_client(settings: Settings, **options: Any) -> AsyncRedis:
    if settings.redis_cluster:
        return redis.asyncio.RedisCluster.from_url(settings.redis_url, **options)
    return redis.asyncio.Redis.from_url(settings.redis_url, **options)


def sync_client(settings: Settings, **options: Any) -> SyncRedis:
    if settings.redis_cluster:
        return redis.RedisCluster.from_url(settings.redis_url, **options)
    return redis.Redis.from_url(settings.redis_url, **options)
