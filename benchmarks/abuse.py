"""Slow and idle clients ("slowloris") against one running ingest process.

Attacker processes (at most PER_PROCESS connections each: a process may hold 20,000
files) try to keep `connections` open between them, a third each idle (connect, send
nothing), stuck in a request head (a request line and a Host header, then one more byte
of a header every few seconds) and stuck in a body (a whole head promising 1,000 bytes,
then one byte every few seconds). One that the server closes is opened again after a
pause, as an attacker would, and never more than `reopens_per_s` a second in all: faster
than that it is a connection flood, another attack. The attackers run at nice 10, so
that on a shared core the normal client goes first.

Meanwhile a normal client, from an address of its own (127.0.0.2, as a real visitor's
differs from the attacker's), sends events paced as a browser does: most on a new
connection each (a beacon), a share on one keep-alive connection. Anything but a 202
within `timeout_s`, or any connection error, is a failure; every request's latency counts
in the percentiles, a failed one's until it failed. Before the attack the same client
runs alone for `reference_s`: its reference p99. The server's RSS (VmRSS) and open files
are sampled every 0.5 s.

    python -m benchmarks.abuse --port P --pid PID [--connections N] [--seconds S]
    python -m benchmarks.abuse --start [--connections N] [--seconds S]

print the figures as JSON. `--start` runs a private `python -m ingest` (a free port and
a stream key of its own, deleted afterwards, pinned to a core of its own where the
machine has two); with `--port`, the events go to that server's stream.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import errno
import json
import logging
import math
import os
import random
import re
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
import uvloop

from benchmarks.processes import ROOT, cpus, free_port, http_server, pinned
from common.config import Settings

if TYPE_CHECKING:
    from benchmarks.context import BenchContext

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
NORMAL_ADDRESS = "127.0.0.2"  # all of 127/8 is loopback
PER_PROCESS = 5_000  # attacker connections per process, well within 20,000 files
ATTACKER_NICENESS = 10
SAMPLE_EVERY_S = 0.5
SETTLE_S = 2.0  # after the attackers' first connects, before the normal client starts
CONNECT_TIMEOUT_S = 5.0  # an attacker's connect (a full accept queue drops SYNs)

EVENT = b'{"site_id":"bench-abuse","event_type":"page_view","path":"/"}'
BROWSER = (
    b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/120.0 Safari/537.36"
)
_REQUEST = (
    b"POST /event HTTP/1.1\r\nHost: bench\r\nUser-Agent: %s\r\nContent-Type: text/plain"
    b"\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s"
)
BEACON = _REQUEST % (BROWSER, len(EVENT), b"close", EVENT)
KEPT_ALIVE = _REQUEST % (BROWSER, len(EVENT), b"keep-alive", EVENT)
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CONNECTION_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)

KINDS = ("idle", "slow_head", "slow_body")
_OPENINGS = (
    b"",
    b"POST /event HTTP/1.1\r\nHost: x\r\n",
    b"POST /event HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n",
)
_TRICKLES = (b"", b"a", b" ")  # a header name that never ends; JSON whitespace


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one measurement does; the defaults are the product's judged case."""

    connections: int = 20_000  # the attackers try to hold this many, in all
    seconds: float = 30.0  # the normal client's run under attack
    normal_rate: float = 50.0  # the normal client's requests a second
    keep_alive_share: float = 0.2  # of those, on one keep-alive connection
    timeout_s: float = 5.0  # a normal request not answered within this fails
    reference_s: float = 5.0  # the normal client alone first (0: not)
    opens_per_s: float = 5_000.0  # the attackers' first connects, in all
    reopens_per_s: float = 1_000.0  # their connects again once the server closed one
    reopen_after_s: float = 1.0  # pause before a reopen (jittered by half)
    trickle_every_s: float = 3.0  # a slow connection's next byte (jittered by a fifth)

    @property
    def ramp_s(self) -> float:
        return self.connections / self.opens_per_s + SETTLE_S


# --- one attacker process ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Orders:
    """One attacker process's share of the plan, passed to it as JSON."""

    port: int
    connections: int
    first_kind: int
    opens_per_s: float
    reopens_per_s: float
    reopen_after_s: float
    trickle_every_s: float
    deadline_s: float  # stop by then even if nobody says so


@dataclasses.dataclass
class _Tally:
    held: int = 0
    opened: int = 0
    closed_by_server: int = 0
    answered: int = 0  # of those closed, the ones that had an answer first (408, 503)
    connect_errors: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )

    def line(self) -> str:
        # Not dataclasses.asdict: it rebuilds a Counter from (key, count) pairs as keys.
        counts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return json.dumps({**counts, "connect_errors": dict(self.connect_errors)}) + "\n"


class _Pacer:
    """Hands out moments `1/rate` apart: each caller waits for the next free one."""

    def __init__(self, rate: float):
        self._interval = 1 / rate
        self._next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        self._next = max(self._next + self._interval, now)
        await asyncio.sleep(self._next - now)


class _Held(asyncio.Protocol):
    def __init__(self) -> None:
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.answered = False

    def data_received(self, data: bytes) -> None:
        self.answered = True

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _reason(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


class _Attacker:
    def __init__(self, orders: _Orders):
        self.orders = orders
        self.tally = _Tally()
        self.stop = asyncio.Event()
        self._live: set[asyncio.Transport] = set()
        self._first = _Pacer(orders.opens_per_s)
        self._again = _Pacer(orders.reopens_per_s)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(sys.stdin.fileno(), self._on_stdin)  # EOF: the parent says stop
        loop.call_later(self.orders.deadline_s, self.stop.set)
        tasks = [
            asyncio.create_task(self._hold((self.orders.first_kind + n) % len(KINDS)))
            for n in range(self.orders.connections)
        ]
        report = asyncio.create_task(self._report())
        stop = asyncio.create_task(self.stop.wait())
        await asyncio.wait([stop, report], return_when=asyncio.FIRST_COMPLETED)
        if report.done():
            report.result()  # it failed: say why rather than report stale figures
        loop.remove_reader(sys.stdin.fileno())
        for transport in list(self._live):
            transport.close()
        for task in [*tasks, report]:
            task.cancel()
        await asyncio.gather(*tasks, report, return_exceptions=True)
        sys.stdout.write(self.tally.line())
        sys.stdout.flush()

    def _on_stdin(self) -> None:
        if not os.read(sys.stdin.fileno(), 512):
            self.stop.set()

    async def _report(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            sys.stdout.write(self.tally.line())
            sys.stdout.flush()
            next_at += SAMPLE_EVERY_S
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def _hold(self, kind: int) -> None:
        """Keep one connection of this kind open, opening it again when closed."""
        loop = asyncio.get_running_loop()
        pacer = self._first
        while not self.stop.is_set():
            await pacer.wait()
            pacer = self._again
            try:
                transport, held = await asyncio.wait_for(
                    loop.create_connection(_Held, HOST, self.orders.port), CONNECT_TIMEOUT_S
                )
            except TimeoutError:
                self.tally.connect_errors["timeout"] += 1
            except OSError as exc:
                self.tally.connect_errors[_reason(exc)] += 1
            else:
                await self._keep(kind, transport, held)
            pause = self.orders.reopen_after_s * random.uniform(0.5, 1.5)
            await asyncio.sleep(pause)

    async def _keep(self, kind: int, transport: asyncio.Transport, held: _Held) -> None:
        tally = self.tally
        tally.held += 1
        tally.opened += 1
        self._live.add(transport)
        try:
            if self.stop.is_set():  # connected while the others were being closed
                transport.close()
                return
            if _OPENINGS[kind]:
                transport.write(_OPENINGS[kind])
            if not _TRICKLES[kind]:
                await held.closed
            while not held.closed.done():
                every = self.orders.trickle_every_s * random.uniform(0.8, 1.2)
                await asyncio.wait([held.closed], timeout=every)
                if not transport.is_closing():
                    transport.write(_TRICKLES[kind])
        finally:
            tally.held -= 1
            self._live.discard(transport)
        if not self.stop.is_set():
            tally.closed_by_server += 1
            tally.answered += held.answered


def _attacker_main(orders_json: str) -> None:
    orders = _Orders(**json.loads(orders_json))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.nice(ATTACKER_NICENESS)

    async def attack() -> None:
        await _Attacker(orders).run()

    uvloop.run(attack())


# --- the normal client ---------------------------------------------------------------


@dataclasses.dataclass
class _Requests:
    latencies: dict[str, list[float]] = dataclasses.field(
        default_factory=lambda: {"beacon": [], "keep_alive": []}
    )
    failures: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    # How late each beacon left against its schedule: the client's own delays (its core
    # busy with the attackers, the host stealing it), which the latencies also hold.
    lags: list[float] = dataclasses.field(default_factory=list)

    def add(self, mode: str, started: float, failure: str | None) -> None:
        self.latencies[mode].append(time.perf_counter() - started)
        if failure is not None:
            self.failures[f"{mode}: {failure}"] += 1

    def all(self) -> list[float]:
        return [*self.latencies["beacon"], *self.latencies["keep_alive"]]


def _failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed before an answer"
    if isinstance(exc, OSError):
        return _reason(exc)
    return type(exc).__name__


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """The status of one whole response, and whether the server closes after it."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = _CONTENT_LENGTH.search(head)
    if length:
        await reader.readexactly(int(length.group(1)))
    return int(head[9:12]), bool(_CONNECTION_CLOSE.search(head))


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, port, local_addr=(NORMAL_ADDRESS, 0))


async def _beacon(port: int, plan: Plan, requests: _Requests) -> None:
    started = time.perf_counter()
    failure = None
    try:
        async with asyncio.timeout(plan.timeout_s):
            reader, writer = await _open(port)
            try:
                writer.write(BEACON)
                status, _ = await _answer(reader)
            finally:
                writer.close()
        if status != 202:
            failure = f"status {status}"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        failure = _failure(exc)
    requests.add("beacon", started, failure)


async def _beacons(port: int, plan: Plan, until: float, requests: _Requests) -> None:
    """One beacon every 1/rate seconds, each on its own, however long the others take."""
    loop = asyncio.get_running_loop()
    interval = 1 / (plan.normal_rate * (1 - plan.keep_alive_share))
    next_at = loop.time()
    running: set[asyncio.Task[None]] = set()
    while next_at < until:
        requests.lags.append(max(0.0, loop.time() - next_at))
        task = asyncio.create_task(_beacon(port, plan, requests))
        running.add(task)
        task.add_done_callback(running.discard)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - loop.time()))
    if running:
        await asyncio.wait(running)


async def _kept_alive(port: int, plan: Plan, until: float, requests: _Requests) -> None:
    """Requests one after another on one connection, as a page's later events go; one
    the server closed while idle is opened again first, as a browser does."""
    loop = asyncio.get_running_loop()
    interval = 1 / (plan.normal_rate * plan.keep_alive_share)
    next_at = loop.time()
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while next_at < until:
        started = time.perf_counter()
        failure = None
        try:
            async with asyncio.timeout(plan.timeout_s):
                if connection is None or connection[0].at_eof():
                    if connection is not None:
                        connection[1].close()
                    connection = await _open(port)
                reader, writer = connection
                writer.write(KEPT_ALIVE)
                status, closes = await _answer(reader)
            if status != 202:
                failure = f"status {status}"
            if closes:
                writer.close()
                connection = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            failure = _failure(exc)
            if connection is not None:
                connection[1].close()
                connection = None
        requests.add("keep_alive", started, failure)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - loop.time()))
    if connection is not None:
        connection[1].close()


async def _normal_client(port: int, plan: Plan, seconds: float) -> _Requests:
    requests = _Requests()
    until = asyncio.get_running_loop().time() + seconds
    clients = [_beacons(port, plan, until, requests)]
    if plan.keep_alive_share > 0:
        clients.append(_kept_alive(port, plan, until, requests))
    await asyncio.gather(*clients)
    return requests


def _percentile(values: list[float], q: float) -> float:
    """Nearest rank, in ms."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000, 2)


# --- the measurement -----------------------------------------------------------------


def _cpu_s(pid: int) -> float:
    """A process's user and system time so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_s() -> dict[str, float]:
    """CPU time of the whole machine so far: busy in all (not idle, waiting for I/O or
    stolen by the host), in interrupts (network packets), stolen by the host."""
    with open("/proc/stat") as stat:
        user, nice, system, _, _, irq, softirq, steal = map(int, stat.readline().split()[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return {
        "machine": (user + nice + system + irq + softirq) / tick,
        "interrupts": (irq + softirq) / tick,
        "steal": steal / tick,
    }


class _Cpu:
    """Where the CPU goes while the normal client runs: the server, the attackers, this
    process, the kernel's interrupts (the network), everything else (Redis, and on a
    shared machine someone else's work), and what the host stole from this VM."""

    def __init__(self, server: int, attackers: list[int]):
        self._pids = {"server": [server], "attackers": attackers}
        self._start = self._now()

    def _now(self) -> dict[str, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        times = {name: sum(map(_cpu_s, pids)) for name, pids in self._pids.items()}
        return {
            **times,
            "benchmark": own.ru_utime + own.ru_stime,
            **_machine_s(),
            "clock": time.monotonic(),
        }

    def percents(self) -> dict[str, float]:
        """Each one's share of one core since the start, in %."""
        end = self._now()
        used = {name: end[name] - self._start[name] for name in end}
        clock = used.pop("clock")
        steal = used.pop("steal")
        used["others"] = used.pop("machine") - sum(used.values())
        used["steal"] = steal
        return {f"{name}_cpu_pct": round(100 * t / clock, 1) for name, t in used.items()}


class _Server:
    """Peaks of a process's resident memory and open files, and whether it still runs."""

    def __init__(self, pid: int):
        self.pid = pid
        self.max_rss_mb = 0.0
        self.hwm_mb = 0.0  # the kernel's high-water mark: peaks between samples too
        self.max_fds = 0
        self.alive = True

    def sample(self) -> None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        except (FileNotFoundError, ProcessLookupError):
            self.alive = False
            return
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                self.max_rss_mb = max(self.max_rss_mb, int(line.split()[1]) / 1024)
            elif line.startswith("VmHWM:"):
                self.hwm_mb = int(line.split()[1]) / 1024
        self.max_fds = max(self.max_fds, fds)


class _Attack:
    """The attacker processes and their latest reports."""

    def __init__(self, port: int, plan: Plan, load_cpu: int | None):
        self.port = port
        self.plan = plan
        self.load_cpu = load_cpu
        self.processes: list[asyncio.subprocess.Process] = []
        self.latest: list[dict[str, Any]] = []
        self._readers: list[asyncio.Task[None]] = []
        self.most_held = 0

    async def start(self, deadline_s: float) -> None:
        plan = self.plan
        count = max(1, math.ceil(plan.connections / PER_PROCESS))
        for n in range(count):
            share = plan.connections // count + (n < plan.connections % count)
            orders = _Orders(
                port=self.port,
                connections=share,
                first_kind=n % len(KINDS),
                opens_per_s=plan.opens_per_s * share / plan.connections,
                reopens_per_s=plan.reopens_per_s * share / plan.connections,
                reopen_after_s=plan.reopen_after_s,
                trickle_every_s=plan.trickle_every_s,
                deadline_s=deadline_s,
            )
            command = [sys.executable, "-m", "benchmarks.abuse", "--attacker"]
            process = await asyncio.create_subprocess_exec(
                *pinned([*command, json.dumps(dataclasses.asdict(orders))], self.load_cpu),
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            self.processes.append(process)
            self.latest.append(json.loads(_Tally().line()))
            self._readers.append(asyncio.create_task(self._read(n, process)))

    async def _read(self, n: int, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            self.latest[n] = json.loads(line)

    def held(self) -> int:
        held = sum(int(report["held"]) for report in self.latest)
        self.most_held = max(self.most_held, held)
        return held

    async def stop(self, within: float = 30) -> None:
        """Close their stdin (they stop and report once more); kill the late ones."""
        for process in self.processes:
            if process.stdin is not None:
                process.stdin.close()
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), within)
            except TimeoutError:
                logger.warning("attacker %d did not stop: killed", process.pid)
                process.kill()
                await process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)
        failed = [p.returncode for p in self.processes if p.returncode]
        if failed:  # their last reports are stale: no figures rather than wrong ones
            raise RuntimeError(f"attacker processes exited with {failed} (see stderr)")

    def totals(self) -> dict[str, Any]:
        errors: collections.Counter[str] = collections.Counter()
        for report in self.latest:
            errors.update(report["connect_errors"])
        return {
            "attacker_connects": sum(int(r["opened"]) for r in self.latest),
            "closed_by_server": sum(int(r["closed_by_server"]) for r in self.latest),
            "answered_then_closed": sum(int(r["answered"]) for r in self.latest),
            "connects_failed": sum(errors.values()),
            "connect_errors": dict(errors),
        }


async def _sample(server: _Server, attack: _Attack) -> None:
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while server.alive:
        server.sample()
        attack.held()
        next_at += SAMPLE_EVERY_S
        await asyncio.sleep(max(0.0, next_at - loop.time()))


async def _measure(port: int, pid: int, plan: Plan, load_cpu: int | None) -> dict[str, Any]:
    started = time.monotonic()
    server = _Server(pid)
    reference = None
    if plan.reference_s > 0:
        reference = await _normal_client(port, plan, plan.reference_s)
    attack = _Attack(port, plan, load_cpu)
    sampler = asyncio.create_task(_sample(server, attack))
    try:
        await attack.start(deadline_s=plan.ramp_s + plan.seconds + 2 * plan.timeout_s + 60)
        logger.info(
            "%d attacker processes open connections for %.1f s", len(attack.processes), plan.ramp_s
        )
        await asyncio.sleep(plan.ramp_s)
        logger.info("attackers hold %d; the normal client runs %.0f s", attack.held(), plan.seconds)
        cpu = _Cpu(pid, [p.pid for p in attack.processes])
        requests = await _normal_client(port, plan, plan.seconds)
        held_at_end = attack.held()
        cpu_pct = cpu.percents()
    finally:
        await attack.stop()
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    server.sample()  # alive once the attackers are gone?
    latencies = requests.all()
    return {
        "connections": plan.connections,
        "attacker_processes": len(attack.processes),
        "attackers_held_max": attack.most_held,
        "attackers_held_at_end": held_at_end,
        **attack.totals(),
        "normal_requests": len(latencies),
        "normal_failures": sum(requests.failures.values()),
        "failure_reasons": dict(requests.failures),
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "max_ms": _percentile(latencies, 1.0),
        "beacon_p99_ms": _percentile(requests.latencies["beacon"], 0.99),
        "keep_alive_p99_ms": _percentile(requests.latencies["keep_alive"], 0.99),
        "client_lag_p99_ms": _percentile(requests.lags, 0.99),
        "reference_p99_ms": _percentile(reference.all(), 0.99) if reference else None,
        "reference_failures": sum(reference.failures.values()) if reference else None,
        "server_max_rss_mb": round(server.max_rss_mb, 1),
        "server_hwm_mb": round(server.hwm_mb, 1),
        "server_max_fds": server.max_fds,
        **cpu_pct,  # % of one core each while the normal client ran: server, attackers, ...
        "server_alive": server.alive,
        "load_cpu": load_cpu,
        "seconds": plan.seconds,
        "took_s": round(time.monotonic() - started, 1),
    }


def measure(
    port: int, pid: int, plan: Plan | None = None, load_cpu: int | None = None
) -> dict[str, Any]:
    """Attack the ingest server on `port` (process `pid`) as `plan` says: the figures.

    The attackers, and this thread while its normal client runs, go to `load_cpu` where
    given (keep it off the server's core). The figures:

    - attackers_held_max, _at_end: connections open at once as the attackers see them
      (a connection waiting in the server's accept queue counts: the kernel holds it);
      attacker_connects, closed_by_server (answered_then_closed: with a 408 or 503
      first), connects_failed and connect_errors by reason (ECONNREFUSED, timeout: a
      SYN dropped from a full accept queue, EADDRNOTAVAIL: no ephemeral port left);
    - normal_requests, normal_failures, failure_reasons; p50_ms, p99_ms, max_ms (all
      requests, failed ones until they failed), beacon_p99_ms, keep_alive_p99_ms,
      client_lag_p99_ms (the client's own delay), reference_p99_ms and
      reference_failures (the client alone, before the attack);
    - server_max_rss_mb (VmRSS sampled), server_hwm_mb (VmHWM), server_max_fds,
      server_alive; *_cpu_pct: shares of one core while the normal client ran (server,
      attackers, benchmark, interrupts, others, steal);
    - load_cpu, seconds, took_s."""
    plan = plan or Plan()
    previous = os.sched_getaffinity(0)  # pid 0: this thread only
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})
    try:
        return uvloop.run(_measure(port, pid, plan, load_cpu))
    finally:
        os.sched_setaffinity(0, previous)


def load_cpu_beside(pid: int) -> int | None:
    """A core for the load that the server `pid` is not pinned to, if it is pinned."""
    server = os.sched_getaffinity(pid)
    others = sorted(os.sched_getaffinity(0) - server)
    return others[0] if others else None


def run_private(
    env: dict[str, str],
    plan: Plan | None = None,
    service_cpu: int | None = None,
    load_cpu: int | None = None,
    log_dir: Path | None = None,
) -> dict[str, Any]:
    """Start `python -m ingest` (on `service_cpu`) with `env` on a free port and a stream
    key of its own, measure it, stop it and delete the keys it made."""
    port = free_port()
    stream = f"bench:{uuid.uuid4().hex[:8]}:abuse"
    server_env = {**env, "PORT": str(port), "HOST": HOST, "STREAM_KEY": stream}
    server_env.setdefault("LOG_LEVEL", "WARNING")
    with tempfile.TemporaryDirectory(prefix="abuse-") as own_dir:
        log_path = (log_dir or Path(own_dir)) / "abuse_ingest.log"
        try:
            with http_server("ingest", server_env, port, service_cpu, log_path) as server:
                figures = measure(port, server.process.pid, plan, load_cpu)
                if server.process.poll() is not None:
                    raise server.failure("exited under attack")
        finally:
            client = redis.Redis.from_url(Settings.from_env(server_env).redis_url)
            for key in client.scan_iter(match=f"{stream}*"):
                client.delete(key)
            client.close()
    return figures


def slow_clients(ctx: BenchContext) -> dict[str, Any]:
    """The `make bench` step: the judged case against one ingest process with its default
    limits (the bench's settings lift the per-address limit for wrk; this puts it back)."""
    env = ctx.env(address_rate_limit=Settings().address_rate_limit)
    return run_private(env, Plan(), ctx.service_cpu, ctx.load_cpu, ctx.log_dir)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.abuse",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--port", type=int, help="of a running ingest server (with --pid)")
    target.add_argument("--start", action="store_true", help="start a private ingest server")
    target.add_argument("--attacker", help=argparse.SUPPRESS)
    parser.add_argument("--pid", type=int, help="the ingest server's process id")
    defaults = Plan()
    parser.add_argument("--connections", type=int, default=defaults.connections)
    parser.add_argument("--seconds", type=float, default=defaults.seconds)
    parser.add_argument("--reopens-per-s", type=float, default=defaults.reopens_per_s)
    parser.add_argument("--cpu", type=int, help="core for the load (default: beside the server's)")
    args = parser.parse_args()
    if args.attacker:
        _attacker_main(args.attacker)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    plan = dataclasses.replace(
        defaults,
        connections=args.connections,
        seconds=args.seconds,
        reopens_per_s=args.reopens_per_s,
    )
    if args.start:
        service_cpu, load_cpu = cpus()
        figures = run_private(
            dict(os.environ), plan, service_cpu, args.cpu if args.cpu is not None else load_cpu
        )
    else:
        if args.pid is None:
            parser.error("--port needs --pid")
        load_cpu = args.cpu if args.cpu is not None else load_cpu_beside(args.pid)
        figures = measure(args.port, args.pid, plan, load_cpu)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
