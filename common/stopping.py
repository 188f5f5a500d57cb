"""Waiting that a stop request cuts short."""

from __future__ import annotations

import asyncio


async def stopped_within(stop: asyncio.Event, delay: float) -> bool:
    """Wait up to `delay` seconds; True as soon as `stop` is set, False if it was not.

    asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
    that arrives as the wait ends, and then a SIGTERM would not stop the process."""
    try:
        async with asyncio.timeout(delay):
            await stop.wait()
    except TimeoutError:
        return False
    return True
