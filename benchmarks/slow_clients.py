"""Slow and idle clients against one ingest process, as an attacker holds them (slowloris).

Attacker processes keep CONNECTIONS connections open between them, a third each of:
idle (connect, send nothing), slow head (a request line and one header, then a byte
every few seconds, never finishing), slow body (a whole head promising 1,000 bytes, then
a byte every few seconds). A connection the server closes is opened again after a
second, as slowloris does. Meanwhile a normal client sends an event a new connection at
a time (as a browser's beacon does), paced, and every answer that is not a 202 in time
is a failure. The server's resident memory and open files are sampled throughout.

    python -m benchmarks.slow_clients [--connections 20000] [--seconds 30]

starts its own server (own stream key) and prints the figures as JSON; `make bench`
runs it as its `slow_clients` step.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.processes import cpus, free_port, pinned, wait_for_port

ATTACKER_PROCESSES = 4  # each holds at most ~19,000 files on a 20,000 limit
REOPEN_AFTER_S = 15.0  # slowloris sleeps 15 s between rounds of reopening and trickling
TRICKLE_EVERY_S = 5.0
# The normal client comes from an address of its own (all of 127/8 is loopback), as a
# real visitor would: the per-address limit then counts the attackers apart from it.
NORMAL_ADDRESS = "127.0.0.2"
ATTACKER_NICENESS = 10  # the load core is shared with the normal client: it goes first
NORMAL_RATE = 50  # requests a second
NORMAL_TIMEOUT_S = 5.0
BASELINE_S = 10.0
EVENT = b'{"site_id":"bench-slow","event_type":"page_view","path":"/"}'
BROWSER = b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0"
NORMAL_REQUEST = (
    b"POST /event HTTP/1.1\r\nHost: bench\r\nUser-Agent: %s\r\nContent-Type: application/json"
    b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (BROWSER, len(EVENT), EVENT)
)
_OPENINGS = (
    b"",
    b"POST /event HTTP/1.1\r\nHost: bench\r\n",
    b"POST /event HTTP/1.1\r\nHost: bench\r\nContent-Length: 1000\r\n\r\n{",
)


# --- one attacker process -------------------------------------------------------------


async def _hold(port: int, kind: int, stop: float, counts: dict[str, int]) -> None:
    """Keep one connection of this kind open until `stop`, reopening it when closed."""
    opening = _OPENINGS[kind]
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            counts["connect_failures"] += 1
            await asyncio.sleep(REOPEN_AFTER_S)
            continue
        counts["held"] += 1
        counts["opened"] += 1
        try:
            if opening:
                writer.write(opening)
            while time.monotonic() < stop:
                try:
                    async with asyncio.timeout(TRICKLE_EVERY_S):
                        if not await reader.read(1024):
                            counts["closed_by_server"] += 1
                            break
                        counts["answered"] += 1  # a 408 or 503, then closed
                except TimeoutError:
                    if writer.is_closing():
                        counts["closed_by_server"] += 1
                        break
                    if kind:  # trickle one more byte of the head or body
                        writer.write(b"x" if kind == 1 else b" ")
        except (OSError, RuntimeError):  # uvloop: RuntimeError on a transport closed
            counts["closed_by_server"] += 1
        finally:
            counts["held"] -= 1
            writer.close()
        await asyncio.sleep(REOPEN_AFTER_S)


async def _attack(port: int, connections: int, seconds: float, first_kind: int) -> dict[str, Any]:
    counts = dict.fromkeys(
        ("held", "opened", "closed_by_server", "answered", "connect_failures"), 0
    )
    stop = time.monotonic() + seconds
    most_held = 0
    tasks = []
    for n in range(connections):
        tasks.append(asyncio.create_task(_hold(port, (first_kind + n) % 3, stop, counts)))
        if n % 200 == 199:
            await asyncio.sleep(0.01)  # a ramp, not a SYN flood: the backlog is finite
    while time.monotonic() < stop:
        most_held = max(most_held, counts["held"])
        await asyncio.sleep(0.5)
    await asyncio.gather(*tasks)
    return {**counts, "most_held": most_held}


def _attacker_main(port: int, connections: int, seconds: float, first_kind: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.nice(ATTACKER_NICENESS)
    print(json.dumps(uvloop.run(_attack(port, connections, seconds, first_kind))))


# --- the measurement ------------------------------------------------------------------


def _normal_client(
    port: int,
    cpu: int | None,
    stop: threading.Event,
    latencies: list[float],
    failures: list[str],
) -> None:
    if cpu is not None:  # this thread only
        os.sched_setaffinity(threading.get_native_id(), {cpu})
    interval = 1 / NORMAL_RATE
    next_at = time.monotonic()
    while not stop.is_set():
        started = time.monotonic()
        try:
            with socket.create_connection(
                ("127.0.0.1", port), timeout=NORMAL_TIMEOUT_S, source_address=(NORMAL_ADDRESS, 0)
            ) as sock:
                sock.sendall(NORMAL_REQUEST)
                answer = b""
                while data := sock.recv(4096):
                    answer += data
            if not answer.startswith(b"HTTP/1.1 202 "):
                failures.append(answer[:60].decode("latin-1"))
        except OSError as exc:
            failures.append(repr(exc))
        latencies.append(time.monotonic() - started)
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))


def _normal_alone(port: int, cpu: int | None, seconds: float) -> dict[str, Any]:
    """The normal client's figures with no attacker: the reference of the same run."""
    stop = threading.Event()
    latencies: list[float] = []
    failures: list[str] = []
    normal = threading.Thread(target=_normal_client, args=(port, cpu, stop, latencies, failures))
    normal.start()
    time.sleep(seconds)
    stop.set()
    normal.join()
    p99 = statistics.quantiles(latencies, n=100)[98]
    return {"p99_ms": round(p99 * 1000, 2), "failures": len(failures)}


def _sample(pid: int, stop: threading.Event, peaks: dict[str, float]) -> None:
    while not stop.is_set():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rss = next(
                int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")
            )
            peaks["rss_mb"] = max(peaks["rss_mb"], rss / 1024)
            peaks["fds"] = max(peaks["fds"], len(os.listdir(f"/proc/{pid}/fd")))
        except (OSError, StopIteration):
            pass
        time.sleep(0.5)


def measure(
    port: int, pid: int, connections: int, seconds: float, load_cpu: int | None = None
) -> dict[str, Any]:
    """Attack the server on `port` (process `pid`) for `seconds`: the figures. The
    attackers and the normal client run on `load_cpu` where given."""
    per_process = -(-connections // ATTACKER_PROCESSES)
    ramp_s = 5.0
    attack = [sys.executable, "-m", "benchmarks.slow_clients", "--attack", str(port)]
    baseline = _normal_alone(port, load_cpu, BASELINE_S)  # the reference: no attackers yet
    attackers = [
        subprocess.Popen(
            pinned([*attack, str(per_process), str(seconds + ramp_s), str(n)], load_cpu),
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(ATTACKER_PROCESSES)
    ]
    stop = threading.Event()
    peaks = {"rss_mb": 0.0, "fds": 0.0}
    sampler = threading.Thread(target=_sample, args=(pid, stop, peaks), daemon=True)
    sampler.start()
    time.sleep(ramp_s)  # the attackers open their connections first
    latencies: list[float] = []
    failures: list[str] = []
    normal = threading.Thread(
        target=_normal_client, args=(port, load_cpu, stop, latencies, failures)
    )
    normal.start()
    time.sleep(seconds)
    stop.set()
    normal.join()
    reports = [json.loads(a.communicate(timeout=seconds + 60)[0]) for a in attackers]
    sampler.join()
    closed = _closed_by_reason(port)
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "attacker_connections": connections,
        "attackers_held_at_most": sum(r["most_held"] for r in reports),
        "attacker_connections_opened": sum(r["opened"] for r in reports),
        "closed_by_server": sum(r["closed_by_server"] for r in reports),
        "attacker_connect_failures": sum(r["connect_failures"] for r in reports),
        "normal_requests": len(latencies),
        "normal_failures": len(failures),
        "failure_examples": failures[:3],
        "p50_ms": round(quantiles[49] * 1000, 2),
        "p99_ms": round(quantiles[98] * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
        "server_peak_rss_mb": round(peaks["rss_mb"], 1),
        "server_peak_open_files": int(peaks["fds"]),
        "reference_p99_ms": baseline["p99_ms"],
        "reference_failures": baseline["failures"],
        "server_closed_by_reason": closed,
    }


def _closed_by_reason(port: int) -> dict[str, int]:
    """The server's own count of the connections it closed or refused, by reason."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        exposition = connection.getresponse().read().decode()
    finally:
        connection.close()
    return {
        sample.labels["reason"]: int(sample.value)
        for family in text_string_to_metric_families(exposition)
        if family.name == "analytics_ingest_connections_closed"
        for sample in family.samples
    }


def run_private(
    env: dict[str, str],
    connections: int,
    seconds: float,
    service_cpu: int | None = None,
    load_cpu: int | None = None,
) -> dict[str, Any]:
    """Start `python -m ingest` (on `service_cpu`) on a free port with a stream key of its
    own and the environment `env`, measure, stop it and delete its keys."""
    port = free_port()
    stream = f"bench:{uuid.uuid4().hex[:8]}:slow_clients"
    server_env = {**env, "PORT": str(port), "HOST": "127.0.0.1", "STREAM_KEY": stream}
    server_env.setdefault("LOG_LEVEL", "WARNING")
    server = subprocess.Popen(
        pinned([sys.executable, "-m", "ingest"], service_cpu),
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, server)
        return measure(port, server.pid, connections, seconds, load_cpu)
    finally:
        server.terminate()
        server.wait(timeout=30)
        client = redis.Redis.from_url(server_env.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        for key in client.scan_iter(match=f"{stream}*"):
            client.delete(key)
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.slow_clients", description=__doc__)
    parser.add_argument("--connections", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument(
        "--attack", nargs=4, metavar=("PORT", "N", "SECONDS", "KIND"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.attack:
        port, count, seconds, kind = args.attack
        _attacker_main(int(port), int(count), float(seconds), int(kind))
        return 0
    service_cpu, load_cpu = cpus()
    figures = run_private(dict(os.environ), args.connections, args.seconds, service_cpu, load_cpu)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
