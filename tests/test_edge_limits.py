"""The edge under abuse, against real `python -m ingest` processes: slow and idle clients
are closed in time, oversized requests refused before they are kept, the connection cap
makes room for normal clients, and memory stays bounded."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import signal
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest
import redis.asyncio as redis
from prometheus_client.parser import text_string_to_metric_families

from common.config import Settings
from tests.servers import PrivateRedis
from tests.test_edge_http import CHROME

EVENT = orjson.dumps({"site_id": "edge", "event_type": "page_view", "path": "/"})


def _server_pid(port: int) -> int:
    """The pid of the process listening on `port` (ours: started by this test)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
            inode = fields[9]
    assert inode is not None, f"nothing listens on {port}"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if fd.readlink().name == f"socket:[{inode}]":
                    return int(proc.name)
        except (FileNotFoundError, PermissionError, NotADirectoryError):
            continue
    raise AssertionError(f"no process holds the socket of port {port}")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _open(
    port: int, first_bytes: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if first_bytes:
        writer.write(first_bytes)
        await writer.drain()
    return reader, writer


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the server sent before closing; fails if it is still open after `seconds`."""
    async with asyncio.timeout(seconds):
        return await reader.read()


def _quick(settings: Settings, **changes: object) -> Settings:
    """Short timeouts, so that the tests wait seconds, not tens of seconds."""
    values: dict[str, object] = {
        "header_timeout_ms": 1_000,
        "keep_alive_ms": 1_000,
        "body_timeout_ms": 1_500,
        **changes,
    }
    return dataclasses.replace(settings, **values)  # type: ignore[arg-type]


async def _post(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/event", content=EVENT, headers={"user-agent": CHROME})


async def test_idle_slow_and_unfinished_requests_are_closed_in_time(
    start_server: Callable[[Settings], str], settings: Settings, redis_client: redis.Redis
) -> None:
    settings = _quick(settings)
    start_server(settings)
    port = settings.port
    # The writers are kept: a StreamWriter collected closes its connection.
    idle, idle_writer = await _open(port)
    slow_head, slow_head_writer = await _open(port, b"POST /event HTTP/1.1\r\nHost: x\r\nUser-Ag")
    slow_body, slow_body_writer = await _open(
        port,
        b"POST /event HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n" + EVENT[:20],
    )
    keep_alive, keep_alive_writer = await _open(
        port,
        b"POST /event HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(EVENT), EVENT),
    )
    started = time.monotonic()
    assert await _closed_within(idle, 3) == b""  # nothing begun: closed without a word
    head = await _closed_within(slow_head, 3)
    assert head.startswith(b"HTTP/1.1 408 ")
    assert orjson.loads(head.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"
    assert (await _closed_within(slow_body, 3)).startswith(b"HTTP/1.1 408 ")
    answered = await _closed_within(keep_alive, 3)  # the 202, then closed when idle
    assert answered.startswith(b"HTTP/1.1 202 ") and answered.count(b"HTTP/1.1") == 1
    assert time.monotonic() - started < 3.5
    for writer in (idle_writer, slow_head_writer, slow_body_writer, keep_alive_writer):
        writer.close()
    # Only the whole request was enqueued; the cut-off body left nothing behind.
    assert await redis_client.xlen(settings.stream_key) == 1
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        closed = _connections_closed((await client.get("/metrics")).text)
    assert closed["slow"] >= 3  # the idle one, the slow head, the idle keep-alive one


async def test_a_body_cut_off_by_a_disconnect_is_not_half_used(
    start_server: Callable[[Settings], str], settings: Settings, redis_client: redis.Redis
) -> None:
    """NDJSON cut at a line end would parse as a smaller valid batch: it must not."""
    start_server(settings)
    lines = b"\n".join([EVENT] * 10)
    _, writer = await _open(
        settings.port,
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(lines) + 500, lines),
    )
    await asyncio.sleep(0.3)
    writer.close()
    await asyncio.sleep(0.5)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}") as client:
        assert (await _post(client)).status_code == 202
    assert await redis_client.xlen(settings.stream_key) == 1


@pytest.mark.parametrize(
    ("request_head", "status", "code"),
    [
        (b"GET /event.gif?" + b"a" * 8_200 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (
            b"POST /event HTTP/1.1\r\n" + b"X-Filler: " + b"f" * 17_000 + b"\r\n\r\n",
            431,
            "headers_too_large",
        ),
        (
            b"POST /event HTTP/1.1\r\n"
            + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 900) for i in range(20))
            + b"\r\n",
            431,
            "headers_too_large",
        ),
    ],
    ids=["long-url", "one-long-header", "many-headers"],
)
async def test_oversized_request_heads_are_refused(
    start_server: Callable[[Settings], str],
    settings: Settings,
    request_head: bytes,
    status: int,
    code: str,
) -> None:
    start_server(settings)
    reader, writer = await _open(settings.port, request_head)
    answer = await _closed_within(reader, 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    body = orjson.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["error"] == code and body["detail"][0]["field"] in ("url", "headers")


async def test_headers_just_within_the_limits_are_served(
    start_server: Callable[[Settings], str], settings: Settings
) -> None:
    base_url = start_server(settings)
    long_agent = CHROME + " " + "x" * (15_000 - len(CHROME))
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.post(
            "/event?" + "q" * 7_000, content=EVENT, headers={"user-agent": long_agent}
        )
    assert response.status_code == 202


def _stream_huge_header(port: int, megabytes: int) -> bytes:
    """Send one header of `megabytes` MB as fast as the server takes it; its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /event HTTP/1.1\r\nUser-Agent: ")
        chunk = b"x" * 65_536
        try:
            for _ in range(megabytes * 16):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed part way: what should happen
        answer = b""
        try:
            while data := sock.recv(65_536):
                answer += data
        except ConnectionResetError:
            pass
        return answer


async def test_memory_stays_bounded_under_huge_headers_and_many_distinct_agents(
    start_server: Callable[[Settings], str], settings: Settings
) -> None:
    base_url = start_server(settings)
    pid = _server_pid(settings.port)
    async with httpx.AsyncClient(base_url=base_url) as client:
        for _ in range(20):  # warm up: the first requests allocate what every request uses
            await _post(client)
        before = _rss_mb(pid)
        answer = await asyncio.to_thread(_stream_huge_header, settings.port, 64)
        assert answer.startswith(b"HTTP/1.1 431 ")
        # Distinct long User-Agents: a memo keyed by them would keep every one.
        filler = "y" * 14_000
        for i in range(3_000):
            agent = f"{CHROME} {i} {filler}"
            response = await client.post("/event", content=EVENT, headers={"user-agent": agent})
            assert response.status_code == 202
        grown = _rss_mb(pid) - before
    # Kept, the agents alone would be 42 MB and the header 64 MB.
    assert grown < 20, f"the server grew by {grown:.0f} MB"


async def test_at_the_connection_cap_waiting_clients_make_room_for_new_ones(
    start_server: Callable[[Settings], str], settings: Settings
) -> None:
    settings = _quick(settings, max_connections=16, header_timeout_ms=60_000)
    base_url = start_server(settings)
    idle = [await _open(settings.port) for _ in range(16)]
    await asyncio.sleep(1.0)  # past MIN_WAIT_BEFORE_EVICTION_S: they may be made to leave
    one_request_each = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=5, limits=one_request_each) as client:
        for _ in range(5):
            assert (await _post(client)).status_code == 202
    # The oldest idle connection was closed to make room (each request's own connection
    # was closed after its answer, so one was enough).
    await asyncio.sleep(0.2)
    assert [reader.at_eof() for reader, _ in idle] == [True] + [False] * 15
    # A burst of connections, all new: none may push out another that came just before
    # it (its request may be on the way), so those beyond the cap are refused.
    burst = [await _open(settings.port) for _ in range(30)]
    answers = []
    for reader, _ in burst:
        try:
            async with asyncio.timeout(0.5):
                answers.append(await reader.read())
        except TimeoutError:
            answers.append(None)
    refused = [a for a in answers if a is not None and b"too_many_connections" in a]
    assert len(refused) >= 30 - 16
    for _, writer in idle + burst:
        writer.close()
    # And an operator sees both in GET /metrics.
    await asyncio.sleep(0.3)
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        closed = _connections_closed((await client.get("/metrics")).text)
    assert closed["evicted_at_cap"] >= 1
    assert closed["refused_at_cap"] == len(refused)


def _connections_closed(exposition: str) -> dict[str, float]:
    """analytics_ingest_connections_closed_total by reason, from GET /metrics."""
    found = {}
    for family in text_string_to_metric_families(exposition):
        if family.name == "analytics_ingest_connections_closed":
            for sample in family.samples:
                found[sample.labels["reason"]] = sample.value
    return found


async def test_one_address_holds_at_most_its_share_of_connections(
    start_server: Callable[[Settings], str], settings: Settings
) -> None:
    """An attacker's address fills its own share, not the server: another address's
    client is served beside it (the slowloris step of make bench, in small)."""
    settings = _quick(settings, max_connections_per_address=8, header_timeout_ms=60_000)
    start_server(settings)
    held = [await _open(settings.port) for _ in range(8)]
    ninth, ninth_writer = await _open(settings.port)
    assert b"too_many_connections" in await _closed_within(ninth, 2)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{settings.port}",
        timeout=5,
        transport=httpx.AsyncHTTPTransport(local_address="127.0.0.3"),
    ) as client:
        closed = _connections_closed((await client.get("/metrics")).text)
    assert closed["refused_per_address"] == 1
    # 127.0.0.2 is another client (all of 127/8 is loopback).
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", settings.port, local_addr=("127.0.0.2", 0)
    )
    writer.write(
        b"POST /event HTTP/1.1\r\nHost: x\r\nUser-Agent: %s\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (CHROME.encode(), len(EVENT), EVENT)
    )
    assert (await _closed_within(reader, 5)).startswith(b"HTTP/1.1 202 ")
    # A place given back is a place to take again.
    held[0][1].close()
    await asyncio.sleep(0.2)
    again, again_writer = await _open(settings.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        assert (await again.readline()).startswith(b"HTTP/1.1 200 ")
    for _, other in [*held, (ninth, ninth_writer), (reader, writer), (again, again_writer)]:
        other.close()


async def test_at_the_cap_a_stalled_body_makes_room_too(
    start_server: Callable[[Settings], str], settings: Settings
) -> None:
    settings = _quick(settings, max_connections=16, body_timeout_ms=60_000)
    base_url = start_server(settings)
    stalled = [
        await _open(
            settings.port, b"POST /event HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        )
        for _ in range(16)
    ]
    await asyncio.sleep(1.5)  # past MIN_WAIT_BEFORE_EVICTION_S
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        assert (await _post(client)).status_code == 202
    # Closed at once to make room, without an answer (one would keep its place a while).
    assert await _closed_within(stalled[0][0], 5) == b""
    for _, writer in stalled:
        writer.close()


async def test_when_every_connection_is_busy_a_new_one_is_answered_503(
    start_server: Callable[[Settings], str], settings: Settings
) -> None:
    """Requests being answered are never closed to make room: with Redis stopped, every
    connection waits on its write, and the next one is refused."""
    stalled_redis = PrivateRedis()
    stalled_redis.start()
    try:
        await stalled_redis.wait_until_up()
        settings = _quick(
            settings, max_connections=16, redis_url=stalled_redis.url, redis_timeout_ms=10_000
        )
        start_server(settings)
        os.kill(stalled_redis.pid, signal.SIGSTOP)
        request = b"POST /event HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
            len(EVENT),
            EVENT,
        )
        busy = [await _open(settings.port, request) for _ in range(16)]
        await asyncio.sleep(0.3)
        reader, writer = await _open(settings.port)
        answer = await _closed_within(reader, 5)
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b"retry-after: 1" in answer and b"too_many_connections" in answer
        writer.close()
        for _, busy_writer in busy:
            busy_writer.close()
    finally:
        os.kill(stalled_redis.pid, signal.SIGCONT)
        stalled_redis.close()


async def test_many_slow_and_idle_connections_do_not_starve_a_normal_client(
    start_server: Callable[[Settings], str], settings: Settings
) -> None:
    """2,000 slow and idle connections against a cap of 1,000, each opened again one to
    three seconds after the server closes it (slowloris waits longer), while a normal client
    sends events, a new connection each as beacons come: every one is answered. (How
    fast is measured by `make bench`, step 6, on pinned cores.) All come from one address
    here: the per-address limit is off, as if they came from many (a distributed attack),
    so that the cap alone is tried."""
    settings = _quick(settings, max_connections=1_000, max_connections_per_address=0)
    base_url = start_server(settings)
    pid = _server_pid(settings.port)
    stop = asyncio.Event()
    closed_by_server = 0

    async def attacker(kind: int) -> None:
        nonlocal closed_by_server
        first = [b"", b"POST /event HTTP/1.1\r\nHost: x\r\n"][kind % 2]
        while not stop.is_set():
            try:
                reader, writer = await _open(settings.port, first)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            read = asyncio.ensure_future(reader.read())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait([read, stopping], return_when=asyncio.FIRST_COMPLETED)
            if read.done():
                closed_by_server += 1
            read.cancel()
            stopping.cancel()
            writer.close()
            await asyncio.sleep(random.uniform(1, 3))

    attackers = [asyncio.create_task(attacker(i)) for i in range(2_000)]
    latencies = []
    try:
        await asyncio.sleep(1)
        one_request_each = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=base_url, timeout=10, limits=one_request_each
        ) as client:
            for _ in range(150):
                started = time.monotonic()
                response = await _post(client)
                latencies.append(time.monotonic() - started)
                assert response.status_code == 202
                await asyncio.sleep(0.02)
        rss = _rss_mb(pid)
    finally:
        stop.set()
        await asyncio.gather(*attackers)
    assert closed_by_server >= 1_000  # evicted at the cap, or timed out
    p99 = statistics.quantiles(latencies, n=100)[98]
    # Not starved: far more generous than the benchmark's figure, since the attackers
    # share the two cores with the server and this client here.
    assert p99 < 2, f"p99 {p99 * 1000:.0f} ms"
    assert rss < 150


async def test_bodies_being_received_together_are_bounded(
    start_server: Callable[[Settings], str], settings: Settings, redis_client: redis.Redis
) -> None:
    """Forty clients each send most of a 1 MB body and stall: past 32 MB in all, the
    server refuses bodies (503) rather than keep them; none of them is used."""
    settings = dataclasses.replace(settings, body_timeout_ms=60_000)
    start_server(settings)
    pid = _server_pid(settings.port)
    before = _rss_mb(pid)
    part = b"[" + b" " * 900_000
    connections = [
        await _open(
            settings.port,
            b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + part,
        )
        for _ in range(40)
    ]
    answers = []
    for reader, _ in connections:
        try:
            async with asyncio.timeout(0.5):
                answers.append(await reader.read())
        except TimeoutError:
            answers.append(None)  # still receiving: within the budget
    grown = _rss_mb(pid) - before
    for _, writer in connections:
        writer.close()
    refused = [a for a in answers if a is not None]
    assert refused and all(
        a.startswith(b"HTTP/1.1 503 ") and b"too_many_bodies" in a for a in refused
    )
    assert 30 <= answers.count(None) <= 37  # about 32 MB of them go on
    assert grown < 80, f"the server grew by {grown:.0f} MB"  # 36 MB sent, counted twice at most
    assert await redis_client.xlen(settings.stream_key) == 0
