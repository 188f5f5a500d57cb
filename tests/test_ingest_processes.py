"""INGEST_PROCESSES=N: N server processes on one port, stopped together by one SIGTERM
with nothing they acknowledged lost."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import orjson
import redis
from prometheus_client.parser import text_string_to_metric_families

from common.config import Settings
from common.constants import EVENT_FIELD, METRICS_SUFFIX
from tests.conftest import settings_env
from tests.processes import Service
from tests.test_edge_http import CHROME


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _cpu_ticks(pid: int) -> int:
    """User and system time of a process, in clock ticks (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def _two_servers(settings: Settings, tmp_path: Path) -> Service:
    settings = dataclasses.replace(settings, ingest_processes=2)
    return Service("ingest", settings_env(settings), tmp_path / "ingest.log")


def _stop(service: Service) -> None:
    """SIGTERM, which the supervisor hands on to its servers; SIGKILL if that fails."""
    if service.process.poll() is None:
        service.process.terminate()
        try:
            service.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()


def test_n_processes_share_the_port_and_stop_together_losing_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    service = _two_servers(settings, tmp_path)
    supervisor = service.process
    try:
        _wait_for_workers(supervisor, settings.port)
        before = {pid: _cpu_ticks(pid) for pid in _children(supervisor.pid)}
        accepted = asyncio.run(_send_events_until_stopped(settings, supervisor, before))
        assert supervisor.wait(timeout=30) == 0
    finally:
        _stop(service)
    assert "started 2 server processes" in service.output()
    client = redis.Redis.from_url(settings.redis_url)
    try:
        entries = client.xrange(settings.stream_key)
    finally:
        client.close()
    stored = [orjson.loads(fields[EVENT_FIELD])["event_id"] for _, fields in entries]
    assert len(accepted) > 100
    assert set(accepted) <= set(stored), "an acknowledged event is missing"
    assert len(stored) == len(set(stored))


def _wait_for_workers(supervisor: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 20
    while len(_children(supervisor.pid)) < 2 or not _answers(port):
        assert supervisor.poll() is None, "the supervisor exited"
        assert time.monotonic() < deadline, "the servers did not start"
        time.sleep(0.05)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


async def _send_events_until_stopped(
    settings: Settings, supervisor: subprocess.Popen[bytes], before: dict[int, int]
) -> list[str]:
    """Events from 32 clients, a new connection for each (as beacons come), until both
    processes have worked; then SIGTERM to the supervisor while they keep coming. The
    ids of those answered 202."""
    accepted: list[str] = []
    stop = asyncio.Event()
    one_request_each = httpx.Limits(max_keepalive_connections=0)

    async def client() -> None:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{settings.port}", timeout=10, limits=one_request_each
        ) as http:
            while not stop.is_set():
                try:
                    answer = await http.post(
                        "/event",
                        json={"site_id": "multi", "event_type": "page_view"},
                        headers={"user-agent": CHROME},
                    )
                except httpx.TransportError:
                    await asyncio.sleep(0.01)  # stopping: the port closes
                    continue
                if answer.status_code == 202:
                    accepted.append(answer.json()["event_id"])

    clients = [asyncio.create_task(client()) for _ in range(32)]
    deadline = time.monotonic() + 30
    while not all(_cpu_ticks(pid) - ticks >= 20 for pid, ticks in before.items()):
        assert time.monotonic() < deadline, "not every process served"
        await asyncio.sleep(0.1)
    supervisor.send_signal(signal.SIGTERM)
    await asyncio.to_thread(supervisor.wait, 30)
    stop.set()
    await asyncio.gather(*clients)
    return accepted


def test_one_process_exiting_on_its_own_stops_the_others(
    settings: Settings, tmp_path: Path
) -> None:
    service = _two_servers(settings, tmp_path)
    supervisor = service.process
    try:
        _wait_for_workers(supervisor, settings.port)
        first, second = _children(supervisor.pid)
        os.kill(first, signal.SIGKILL)
        assert supervisor.wait(timeout=30) == 1
        assert not Path(f"/proc/{second}").exists() or "Z" in _state(second)
    finally:
        _stop(service)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_metrics_of_any_process_count_what_all_of_them_did(
    settings: Settings, tmp_path: Path
) -> None:
    """A scrape reaches one process of N: it answers with the sum over all of them."""
    service = _two_servers(settings, tmp_path)
    try:
        _wait_for_workers(service.process, settings.port)
        one_request_each = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{settings.port}", timeout=10, limits=one_request_each
        ) as http:
            for _ in range(200):  # new connections: the kernel spreads them over both
                answer = http.post(
                    "/event",
                    json={"site_id": "multi", "event_type": "page_view"},
                    headers={"user-agent": CHROME},
                )
                assert answer.status_code == 202
            deadline = time.monotonic() + 10
            while _accepted(http.get("/metrics").text) != 200:  # each publishes every second
                assert time.monotonic() < deadline, "the processes' counts do not add up"
                time.sleep(0.2)
        # Both served, each published its own part.
        client = redis.Redis.from_url(settings.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{settings.stream_key}{METRICS_SUFFIX}*"))
            parts = [orjson.loads(client.get(key))["events_accepted"] for key in keys]
        finally:
            client.close()
        assert len(parts) == 2 and all(parts) and sum(parts) == 200, parts
    finally:
        _stop(service)


def _accepted(text: str) -> float:
    return next(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "analytics_ingest_events_accepted_total"
    )
