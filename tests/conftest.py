"""Fixtures: a database of our own per run, a stream key of our own per test, real servers.

Nothing is mocked: tests talk to the Redis and PostgreSQL named by TEST_REDIS_URL and
TEST_POSTGRES_URL (defaults: the local servers), and clean up what they create.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis as sync_redis
import redis.asyncio as redis

from common.config import Settings
from common.constants import WRITTEN_TABLES
from common.migrate import prepare_database
from common.redis_clients import AsyncRedis
from common.shards import shards_of
from processor.consumer import StreamProcessor
from processor.folding import ALL_DAYS, EVERYTHING, fold_ended
from processor.store import Counting, prepare_connection
from tests.servers import PrivateRedis, free_port  # (free_port: for the tests to import)

__all__ = ["free_port"]


ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database created for this test run, migrated, and dropped at the end."""
    name = f"analytics_test_{uuid.uuid4().hex[:12]}"
    url = f"{POSTGRES_URL}/{name}"
    asyncio.run(prepare_database(url))
    yield url
    asyncio.run(_drop_database(name))


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(f"{POSTGRES_URL}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def settings(database_url: str) -> Iterator[Settings]:
    """Settings of a test: its own stream key, so that tests never share a stream. The
    stream and every key named after it are deleted afterwards, whoever made them (a
    server the test started makes its stream on connecting)."""
    stream_key = f"test:{uuid.uuid4().hex}:events_stream"
    yield Settings(
        redis_url=REDIS_URL,
        database_url=database_url,
        host="127.0.0.1",
        port=free_port(),
        stream_key=stream_key,
        consumer_name="test-consumer",
        batch_size=500,
        block_ms=100,
        claim_min_idle_ms=60_000,
        claim_interval_ms=60_000,
        max_age_seconds=10 * 365 * 86_400,  # the generated data sets lie in 2024
        # Tests read right after they write: answers are not reused (test_answer_cache.py
        # tests that).
        report_cache_ms=0,
    )
    client = sync_redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{stream_key}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


REGISTRY_TABLES = ("sites", "api_keys")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test database, whose tables start empty in every test."""
    async with asyncpg.create_pool(
        database_url, min_size=1, max_size=2, init=prepare_connection
    ) as pool:
        await pool.execute(f"TRUNCATE {', '.join(WRITTEN_TABLES + REGISTRY_TABLES)}")
        yield pool
        # A site or key left behind would change how every later test's server answers.
        await pool.execute(f"TRUNCATE {', '.join(REGISTRY_TABLES)}")


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    # The stream and every key named after it (dead letters, salts, counters).
    keys = [key async for key in client.scan_iter(match=f"{settings.stream_key}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def make_processor(
    settings: Settings, client: redis.Redis, pool: asyncpg.Pool, **changes: object
) -> StreamProcessor:
    return StreamProcessor(dataclasses.replace(settings, **changes), client, pool)


async def drain(settings: Settings, client: AsyncRedis, pool: asyncpg.Pool) -> None:
    """Process everything in the stream (every shard's); with visits, fold every one (as
    --drain does)."""
    counting = Counting(visits=settings.count_visits, max_age_s=settings.max_age_seconds)
    for shard in shards_of(settings):
        processor = StreamProcessor(
            shard.settings, client, pool, counting=counting, entry_prefix=shard.entry_prefix
        )
        await processor.run(asyncio.Event(), drain=True)
    if settings.count_visits:
        async with pool.acquire() as conn:
            await fold_ended(conn, counting, EVERYTHING, sweep_from=ALL_DAYS)


def run_module(
    settings: Settings, module: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m <module> <args>` with these settings in its environment, to its end."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for field in dataclasses.fields(settings):
        env[field.name.upper()] = str(getattr(settings, field.name))
    return env


@contextlib.contextmanager
def running_server(settings: Settings) -> Iterator[str]:
    """`python -m ingest` as a real process; yields its base URL once it accepts requests."""
    log = tempfile.TemporaryFile()  # not a pipe: a full pipe would stall the server
    process = subprocess.Popen(
        [sys.executable, "-m", "ingest"],
        cwd=ROOT,
        env=settings_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{settings.port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                log.seek(0)
                output = log.read().decode(errors="replace")
                raise RuntimeError(f"server exited with {process.returncode}:\n{output}")
            try:
                with socket.create_connection(("127.0.0.1", settings.port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("server did not start within 20 s") from None
                time.sleep(0.05)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server of the test's own, for it to start (and kill, and start again)."""
    server = PrivateRedis()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def start_server() -> Iterator[Callable[[Settings], str]]:
    with contextlib.ExitStack() as stack:
        yield lambda settings: stack.enter_context(running_server(settings))


@pytest.fixture
async def http(
    settings: Settings,
    db: asyncpg.Pool,
    redis_client: redis.Redis,
    start_server: Callable[[Settings], str],
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on a server of this test's settings (tables empty, stream our own)."""
    base_url = start_server(settings)
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield client
