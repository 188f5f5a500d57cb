"""SIGTERM ends `python -m ingest` and `python -m processor` with status 0, whenever it
comes: while they import, while they start, while they retry a server that is down,
while they run, and while a client holds a request open."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import socket
from pathlib import Path

import pytest
import redis.asyncio as redis

from common.config import Settings
from ingest.backlog import BacklogMonitor
from tests.conftest import free_port, settings_env
from tests.processes import Service

GRACE_S = 10
RUNS = 50
AT_ONCE = 10

# What is down while each run starts, by service (down: a port nothing listens on), and
# the line in its log that says it is past start-up: serving, or retrying what is down.
CASES = {
    ("ingest", "nothing"): "Uvicorn running on",
    ("ingest", "redis"): "Uvicorn running on",
    ("ingest", "postgres"): "opening the database for GET /stats at",
    ("processor", "nothing"): "database ready: starting",
    ("processor", "redis"): "database ready: starting",  # then retries Redis
    ("processor", "postgres"): "preparing the database at",
}
# When the signal comes, from what it waits for and how much longer at most. The moments
# are tied to each process's own progress, not to the clock: on a loaded machine a
# process may take seconds to import, and fixed delays would all land there.
PHASES = {
    "importing": (None, 0.03),  # from the moment it has a handler: its first lines
    "starting": ("starting with", 0.3),
    "running or retrying": ("", 1.0),  # "": the case's own line
}


@dataclasses.dataclass
class Run:
    module: str
    down: str
    phase: str
    delay: float
    status: int | None = None
    output: str = ""
    signalled_while_importing: bool = False


def _env(settings: Settings, number: int, down: str) -> dict[str, str]:
    own = dataclasses.replace(
        settings,
        port=free_port(),
        stream_key=f"{settings.stream_key}:{number}",  # cleaned up by redis_client
        consumer_name=f"run-{number}",
    )
    if down == "redis":
        own = dataclasses.replace(own, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    elif down == "postgres":
        own = dataclasses.replace(
            own, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/analytics"
        )
    return settings_env(own)


async def _signal_once(run: Run, settings: Settings, number: int, log_dir: Path) -> None:
    service = Service(run.module, _env(settings, number, run.down), log_dir / f"{number}.log")
    try:
        # From the moment the process has a handler (the first lines of __main__: before
        # that, no code of ours runs and the kernel's default applies).
        marker = PHASES[run.phase][0]
        if await service.wait_until_it_catches_sigterm() and (
            marker is None or await service.reaches(marker or CASES[run.module, run.down])
        ):
            await asyncio.sleep(run.delay)
            run.signalled_while_importing = "starting with" not in service.output()
        run.status = await service.stop(within=GRACE_S)  # or how it ended by itself
        run.output = service.output()
    finally:
        service.kill()


async def test_sigterm_at_random_moments_always_ends_the_services_with_status_0(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    rng = random.Random(20261203)
    cases, phases = list(CASES), list(PHASES)
    runs = []
    for number in range(RUNS):  # every case in every phase, twice or three times
        (module, down), phase = cases[number % 6], phases[number // 6 % 3]
        runs.append(Run(module, down, phase, rng.uniform(0, PHASES[phase][1])))
    limit = asyncio.Semaphore(AT_ONCE)

    async def one(number: int) -> None:
        async with limit:
            await _signal_once(runs[number], settings, number, tmp_path)

    await asyncio.gather(*(one(number) for number in range(RUNS)))

    failed = [
        f"{run.module} ({run.down} down, {run.phase}, then {run.delay:.3f} s): "
        f"status {run.status}\n{run.output[-3000:]}"
        for run in runs
        if run.status != 0 or "Traceback" in run.output
    ]
    assert not failed, f"{len(failed)} of {RUNS} runs failed:\n" + "\n".join(failed)
    early = sum(run.signalled_while_importing for run in runs)
    assert early >= 5, f"only {early} signals came while the modules loaded"


class LosesOneCancellation:
    """A real Redis client whose next XINFO loses a cancellation, as redis-py's commands
    (sent under asyncio.wait_for) do on Python 3.11 when the command completes in the
    same pass of the loop as the cancel arrives: it happens by chance, here for sure."""

    def __init__(self, client: redis.Redis):
        self._client = client
        self.reading = asyncio.Event()
        self.lost = False

    async def xinfo_groups(self, key: str) -> list[dict[str, object]]:
        if not self.lost:
            self.reading.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.lost = True  # what 3.11's wait_for does: the result wins
        return await self._client.xinfo_groups(key)

    async def xlen(self, key: str) -> int:
        return await self._client.xlen(key)


async def test_the_backlog_poll_stops_although_a_read_loses_its_cancellation(
    settings: Settings, redis_client: redis.Redis
) -> None:
    client = LosesOneCancellation(redis_client)
    monitor = BacklogMonitor(client, [settings.stream_key], settings.consumer_group, 10)  # type: ignore[arg-type]
    monitor.start()
    await client.reading.wait()
    try:
        async with asyncio.timeout(2):
            await monitor.stop()
    except TimeoutError:
        pytest.fail("BacklogMonitor.stop() did not return: the poll went on")
    assert client.lost


async def test_ingest_stops_in_its_grace_period_while_a_client_holds_a_request_open(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    own = dataclasses.replace(settings, port=free_port())
    service = Service("ingest", settings_env(own), tmp_path / "ingest.log")
    try:
        await service.wait_for_port(own.port)
        with socket.create_connection(("127.0.0.1", own.port)) as client:
            # Headers and a part of the body, then nothing: the request never completes.
            client.sendall(
                b"POST /event HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            await asyncio.sleep(0.2)
            status = await service.stop(within=GRACE_S)
        assert status == 0, service.output()
        # uvicorn cancels the request at the end of the grace period (and logs its
        # traceback as an exception in the application: the request was indeed cut).
        assert "timeout graceful shutdown exceeded" in service.output()
    finally:
        service.kill()
