"""Run the processor: `python -m processor [--drain]`."""

# The signal handler goes in before the heavy imports, on purpose: a SIGTERM that comes
# while they load must end the process with status 0 (see common/signals.py).

from __future__ import annotations

from common.signals import EarlyStop, early_stop

if __name__ == "__main__":
    early_stop.install()

import argparse
import asyncio
import dataclasses
import functools
import gc
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import TypeVar

import asyncpg
import uvloop

from common.config import Settings, settings_or_exit
from common.logs import configure
from common.migrate import DatabaseUnfit, Stopped, prepare_database, retry_until_stopped
from common.redis_clients import async_client
from common.shards import served_shards
from processor import useragents
from processor.consumer import StreamProcessor
from processor.folding import ALL_DAYS, EVERYTHING, Folder
from processor.health import Health, health_server
from processor.metrics import ProcessorMetrics, metrics_server
from processor.store import Counting, prepare_connection

logger = logging.getLogger("processor")

T = TypeVar("T")


async def run(settings: Settings, *, drain: bool, signals: EarlyStop) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only a flag, set through the loop (the handler runs between any two lines of
        # Python): the writers finish their batch.
        loop.call_soon_threadsafe(stop.set)

    signals.hand_over(on_signal)
    try:
        logger.info("starting with %r", settings)
        await process(settings, drain=drain, stop=stop)
    except Stopped as exc:
        logger.info("stopped while %s", exc)
    finally:
        signals.hand_over(None)  # the loop is about to close


async def process(settings: Settings, *, drain: bool, stop: asyncio.Event) -> None:
    health = Health()  # what fails, on HEALTH_PORT from the start: start-up retries too
    metrics = ProcessorMetrics()
    with metrics_server(metrics, settings.host, settings.metrics_port):
        async with health_server(health, settings.host, settings.health_port):
            writers = await process_with(settings, health, metrics, drain=drain, stop=stop)
    started = [w.first_batch_at for w in writers if w.first_batch_at is not None]
    if started:
        processed = sum(w.entries_processed for w in writers)
        elapsed = time.perf_counter() - min(started)
        logger.info(
            "stopped: processed %d entries in %.3f s from the first batch (%.0f entries/s)",
            processed,
            elapsed,
            processed / elapsed,
        )
    else:
        logger.info("stopped: nothing to process")


async def process_with(
    settings: Settings,
    health: Health,
    metrics: ProcessorMetrics,
    *,
    drain: bool,
    stop: asyncio.Event,
) -> list[StreamProcessor]:
    url = settings.database_url

    async def until_done(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        # PostgreSQL may be down or starting: wait for it, and let a stop end the wait.
        failed = functools.partial(health.failed, what)
        result = await retry_until_stopped(what, url, attempt, stop, on_failure=failed)
        health.recovered(what)
        return result

    await until_done("preparing the database", lambda: prepare_database(url))
    pool = await until_done("opening the connection pool", lambda: create_pool(settings))
    shards = served_shards(settings)
    logger.info(
        "database ready: starting %d writers on each of %d streams", settings.writers, len(shards)
    )
    # The User-Agent parser's rules load at its first use (0.1 to 0.25 s): at start-up, so
    # that the first batch does not wait for them.
    useragents.load_rules()
    # Start-up objects (parsers' tables, memos) live as long as the process: keep them out
    # of every collection, and collect young objects less often: a batch makes thousands
    # of short-lived tuples (docs/performance.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    # Blocking reads must end before the socket times out.
    client = async_client(settings, socket_timeout=settings.block_ms / 1000 + 10)
    try:
        async with pool:
            # Shared by the writers and the folder: what is due to be folded, memos.
            counting = Counting(visits=settings.count_visits, max_age_s=settings.max_age_seconds)
            # Every shard's stream is served alike (common/shards.py); the first writer of
            # each keeps its stream trimmed.
            writers = [
                StreamProcessor(
                    writer_settings(shard.settings, number),
                    client,
                    pool,
                    health,
                    metrics,
                    counting,
                    shard.entry_prefix,
                )
                for shard in shards
                for number in range(settings.writers)
            ]
            folder = Folder(pool, counting, settings.fold_interval_ms / 1000, health)
            writers_done = asyncio.Event()
            async with asyncio.TaskGroup() as group:
                running = [
                    group.create_task(
                        writer.run(stop, drain=drain, maintain=number % settings.writers == 0)
                    )
                    for number, writer in enumerate(writers)
                ]
                if settings.count_visits:
                    group.create_task(folder.run(writers_done))
                await asyncio.wait(running)
                writers_done.set()
            if drain:  # trim what the writers acknowledged, and fold every visit
                for writer in writers[:: settings.writers]:
                    await writer.maintain()
                if settings.count_visits:
                    await folder.fold(EVERYTHING, sweep_from=ALL_DAYS)
    finally:
        await client.aclose()
    return writers


def create_pool(settings: Settings) -> Awaitable[asyncpg.Pool]:
    return asyncpg.create_pool(
        settings.database_url,
        min_size=1,
        # A connection per writer on every shard, and one to fold with.
        max_size=settings.writers * settings.stream_shards + 1,
        init=prepare_connection,
    )


def writer_settings(settings: Settings, number: int) -> Settings:
    """The first writer is CONSUMER_NAME itself, the others CONSUMER_NAME/2, /3, ...:
    fixed names, so that after a restart each re-reads what it held."""
    if number == 0:
        return settings
    return dataclasses.replace(settings, consumer_name=f"{settings.consumer_name}/{number + 1}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m processor", description=__doc__)
    parser.add_argument(
        "--drain", action="store_true", help="process everything in the stream, then exit"
    )
    args = parser.parse_args()
    settings = settings_or_exit()
    configure(settings.log_level, settings.log_format)
    try:
        uvloop.run(run(settings, drain=args.drain, signals=early_stop))
    except DatabaseUnfit as exc:  # retrying would not help: say so, without a traceback
        logger.error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
