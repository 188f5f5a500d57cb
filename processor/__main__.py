"""Run the processor: `python -m processor [--drain]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time

import asyncpg
import redis.asyncio as redis
import uvloop

from common.config import Settings, settings_or_exit
from common.logs import configure
from common.migrate import prepare_database
from processor.consumer import StreamProcessor
from processor.store import prepare_connection

logger = logging.getLogger("processor")


async def run(settings: Settings, *, drain: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)  # only a flag: the loop finishes its batch
    logger.info("starting with %r", settings)

    await prepare_database(settings.database_url)
    # Blocking reads must end before the socket times out.
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=settings.block_ms / 1000 + 10)
    try:
        async with asyncpg.create_pool(
            settings.database_url, min_size=1, max_size=1, init=prepare_connection
        ) as pool:
            processor = StreamProcessor(settings, client, pool)
            await processor.run(stop, drain=drain)
    finally:
        await client.aclose()
    if processor.first_batch_at is not None:
        elapsed = time.perf_counter() - processor.first_batch_at
        logger.info(
            "stopped: processed %d entries in %.3f s from the first batch (%.0f entries/s)",
            processor.entries_processed,
            elapsed,
            processor.entries_processed / elapsed,
        )
    else:
        logger.info("stopped: nothing to process")


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
