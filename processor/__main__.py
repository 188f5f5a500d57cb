"""Run the processor: `python -m processor [--drain]`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
import time

import asyncpg
import redis.asyncio as redis
import uvloop

from common.config import Settings, settings_or_exit
from common.logs import configure
from common.migrate import Stopped, prepare_database, retry_until_stopped
from processor.consumer import StreamProcessor
from processor.store import prepare_connection

logger = logging.getLogger("processor")


async def run(settings: Settings, *, drain: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)  # only a flag: the loop finishes its batch
    logger.info("starting with %r", settings)
    try:
        await process(settings, drain=drain, stop=stop)
    except Stopped as exc:
        logger.info("stopped while %s", exc)


async def process(settings: Settings, *, drain: bool, stop: asyncio.Event) -> None:
    url = settings.database_url
    # PostgreSQL may be down or starting: wait for it, and let a stop end the wait.
    await retry_until_stopped("preparing the database", url, lambda: prepare_database(url), stop)
    pool = await retry_until_stopped(
        "opening the connection pool",
        url,
        lambda: asyncpg.create_pool(
            url, min_size=1, max_size=settings.writers, init=prepare_connection
        ),
        stop,
    )
    logger.info("database ready: starting %d writers", settings.writers)
    # Blocking reads must end before the socket times out.
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=settings.block_ms / 1000 + 10)
    try:
        async with pool:
            writers = [
                StreamProcessor(writer_settings(settings, number), client, pool)
                for number in range(settings.writers)
            ]
            async with asyncio.TaskGroup() as group:
                for number, writer in enumerate(writers):
                    group.create_task(writer.run(stop, drain=drain, maintain=number == 0))
            if drain:  # trim what the writers acknowledged
                await writers[0].maintain()
    finally:
        await client.aclose()
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
    configure(settings.log_level)
    uvloop.run(run(settings, drain=args.drain))
    return 0


if __name__ == "__main__":
    sys.exit(main())
