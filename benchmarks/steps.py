"""The measurements of `make bench`, each with its reference from the same run."""

from __future__ import annotations

import http.client
import random
import re
import sys
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from benchmarks import data, wrk
from benchmarks import slow_clients as slow_clients_module
from benchmarks.context import BenchContext, median, summary
from benchmarks.processes import Measured, free_port, http_server, memory_mb, pinned
from common.config import Settings
from common.constants import EVENT_FIELD
from processor.decode import COLUMNS, decode_entries
from processor.months import close_months
from processor.store import use_epoch_micros

CONNECTIONS = 64


def _serve(ctx: BenchContext, module: str, name: str, **env: object) -> Any:
    port = free_port()
    server_env = ctx.env(port=port, **env)
    return port, http_server(module, server_env, port, ctx.service_cpu, ctx.log_dir / f"{name}.log")


def _load(
    ctx: BenchContext,
    port: int,
    path: str,
    script: str,
    *,
    connections: int = CONNECTIONS,
    events_per_request: int | None = None,
) -> wrk.WrkResult:
    """Load one server with wrk: a 1 s warm-up, then the measured run.

    With `events_per_request`, check afterwards that the stream holds exactly the events
    of every 202 answered (warm-up included): nothing lost, nothing extra.
    """
    url = f"http://127.0.0.1:{port}{path}"
    runs = [
        wrk.run(url, script, connections=connections, seconds=1, cpu=ctx.load_cpu),
        wrk.run(url, script, connections=connections, seconds=ctx.seconds, cpu=ctx.load_cpu),
    ]
    if events_per_request is not None:
        accepted = sum(r.requests - r.non_2xx for r in runs) * events_per_request
        length = int(ctx.redis.xlen(ctx.settings.stream_key))
        clean = all(r.socket_errors == 0 for r in runs)
        # Requests cut off by wrk's time limit may have been appended without their 202.
        in_flight = len(runs) * connections * events_per_request
        if length < accepted or (clean and length > accepted + in_flight):
            raise AssertionError(f"the stream holds {length} events, {accepted} were accepted")
    return runs[1]


def ingest(ctx: BenchContext, *, events_per_request: int) -> dict[str, Any]:
    """POST /event (1) or POST /events (100) against the bare app with the same body."""
    rng = random.Random(7)
    if events_per_request == 1:
        path, body = "/event", orjson.dumps(data.request_body(rng))
    else:
        path = "/events"
        body = orjson.dumps([data.request_body(rng) for _ in range(events_per_request)])
    script = wrk.lua_script(method="POST", body=body)
    ours: list[wrk.WrkResult] = []
    bare: list[wrk.WrkResult] = []
    rss: list[float] = []
    for _ in range(ctx.rounds):
        port, server = _serve(ctx, "benchmarks.bare_app", "bare_app")
        with server:
            bare.append(_load(ctx, port, path, script))
        ctx.reset()
        # No processor runs here: lift the backlog limit, or backpressure would end the
        # measurement with 503s once about a million events wait.
        port, server = _serve(ctx, "ingest", "ingest", max_backlog=10**9)
        with server as measured:
            ours.append(_load(ctx, port, path, script, events_per_request=events_per_request))
        assert measured.peak_rss_mb is not None
        rss.append(measured.peak_rss_mb)
        ctx.reset()
    figures: dict[str, Any] = {
        "body_bytes": len(body),
        "events_per_request": events_per_request,
        "requests_per_s": summary([r.rate for r in ours]),
        "events_per_s": summary([r.rate * events_per_request for r in ours]),
        "p50_ms": summary([r.p50_ms for r in ours]),
        "p99_ms": summary([r.p99_ms for r in ours]),
        "non_2xx": sum(r.non_2xx for r in ours),
        "reference_requests_per_s": summary([r.rate for r in bare]),
        "reference_p99_ms": summary([r.p99_ms for r in bare]),
        "ratio": median([o.rate / b.rate for o, b in zip(ours, bare, strict=True)]),
        "peak_rss_mb": max(rss),
    }
    if events_per_request == 1:
        figures["at_80_percent"] = _paced_latency(
            ctx, path, body, 0.8 * figures["requests_per_s"]["median"]
        )
    return figures


def ingest_processes(ctx: BenchContext, processes: int = 2) -> dict[str, Any]:
    """Single events with INGEST_PROCESSES=`processes` against one process, on the same
    one core (the other is wrk's): what running several costs there. A machine with a
    core per process would show what they add; this one cannot."""
    body = orjson.dumps(data.request_body(random.Random(7)))
    script = wrk.lua_script(method="POST", body=body)
    one: list[wrk.WrkResult] = []
    many: list[wrk.WrkResult] = []
    for round_number in range(ctx.rounds):
        # Alternate which goes first, so that a drifting machine favours neither.
        for count in (1, processes) if round_number % 2 == 0 else (processes, 1):
            ctx.reset()
            port, server = _serve(
                ctx, "ingest", f"ingest-{count}", max_backlog=10**9, ingest_processes=count
            )
            with server:
                result = _load(ctx, port, "/event", script, events_per_request=1)
            (one if count == 1 else many).append(result)
    ctx.reset()
    return {
        "processes": processes,
        "requests_per_s": summary([r.rate for r in many]),
        "p99_ms": summary([r.p99_ms for r in many]),
        "reference_requests_per_s": summary([r.rate for r in one]),
        "ratio": median([m.rate / o.rate for m, o in zip(many, one, strict=True)]),
    }


def _paced_latency(ctx: BenchContext, path: str, body: bytes, rate: float) -> dict[str, Any]:
    """p99 with the load held at a set rate. wrk paces each connection with a delay before
    each request, so a connection's cycle is its delay plus the request's latency: the
    delay is the cycle the rate asks for less the mean latency measured at about that
    rate, found in two short calibration runs against the same server."""
    cycle_ms = CONNECTIONS / rate * 1000
    results = []
    for _ in range(ctx.rounds):
        port, server = _serve(ctx, "ingest", "ingest_paced", max_backlog=10**9)
        with server:
            url = f"http://127.0.0.1:{port}{path}"
            delay_ms = cycle_ms
            for _ in range(2):
                script = wrk.lua_script(method="POST", body=body, delay_ms=delay_ms)
                probe = wrk.run(
                    url,
                    script,
                    connections=CONNECTIONS,
                    seconds=2,
                    cpu=ctx.load_cpu,
                )
                delay_ms = max(0.0, cycle_ms - probe.mean_ms)
            ctx.reset()  # the stream check of _load counts its own requests only
            script = wrk.lua_script(method="POST", body=body, delay_ms=delay_ms)
            results.append(_load(ctx, port, path, script, events_per_request=1))
        ctx.reset()
    return {
        "target_requests_per_s": rate,
        "requests_per_s": summary([r.rate for r in results]),
        "p50_ms": summary([r.p50_ms for r in results]),
        "p99_ms": summary([r.p99_ms for r in results]),
    }


PROCESSED = re.compile(rb"processed (\d+) entries in ([\d.]+) s")


def processing(ctx: BenchContext, events: int, *, count_visits: bool = False) -> dict[str, Any]:
    """One processor draining a preloaded backlog, beside a raw COPY of the same rows;
    with `count_visits`, counting visits and dimensions too (folding every visit before
    it reports its rate)."""
    payloads, views = data.stream_payloads(events)
    batch_size = ctx.settings.batch_size
    rows = decode_entries([(b"0-0", {EVENT_FIELD: p}) for p in payloads]).rows
    ours: list[float] = []
    copies: list[float] = []
    rss: list[float] = []
    for round_number in range(ctx.rounds):
        name = f"processor{'-visits' if count_visits else ''}-{round_number}"
        rate, peak_rss_mb = _drain(ctx, payloads, name, count_visits=count_visits)
        ours.append(rate)
        rss.append(peak_rss_mb)
        _check_processed(ctx, events, views, count_visits=count_visits)
        copies.append(ctx.with_db(lambda conn: raw_copy(conn, rows, batch_size)))
    return {
        "events": events,
        "batch_size": batch_size,
        "events_per_s": summary(ours),
        "reference_rows_per_s": summary(copies),
        "ratio": median([o / c for o, c in zip(ours, copies, strict=True)]),
        "peak_rss_mb": max(rss),
    }


def _drain(
    ctx: BenchContext, payloads: list[bytes], name: str, *, count_visits: bool = False
) -> tuple[float, float]:
    """Empty tables and stream, preload the payloads, and drain them with one processor:
    (entries/s from its first batch, as it logs it; its peak RSS in MB)."""
    ctx.reset()
    _preload(ctx, payloads)
    return run_drain(ctx, len(payloads), name, count_visits=count_visits)


def run_drain(ctx: BenchContext, entries: int, name: str, **env: object) -> tuple[float, float]:
    """One processor (`env`: its settings beside the run's) draining the `entries` waiting:
    (entries/s from its first batch, as it logs it; its peak RSS in MB)."""
    log_path = ctx.log_dir / f"{name}.log"
    command = pinned([sys.executable, "-m", "processor", "--drain"], ctx.service_cpu)
    processor = Measured(command, ctx.env(log_level="INFO", **env), log_path)
    if processor.wait(timeout=600) != 0:
        raise processor.failure("failed")
    assert processor.peak_rss_mb is not None
    found = PROCESSED.search(log_path.read_bytes())
    if found is None or int(found[1]) != entries:
        raise AssertionError(f"the processor did not drain {entries} entries; see {log_path}")
    return entries / float(found[2]), processor.peak_rss_mb


POISON_SHARE = 0.005


def poison(ctx: BenchContext, events: int) -> dict[str, Any]:
    """The processor draining the same backlog twice a round: clean, and with 0.5% of its
    entries replaced by page views whose path PostgreSQL could not index (random CJK
    characters, 6,141 bytes: written straight to the stream, past the edge's limits).
    Each poison entry costs a batch's work again where the database finds it, nothing
    where decoding refuses it; the ratio says which, target >= 0.5."""
    payloads, views = data.stream_payloads(events)
    rng = random.Random(13)
    poisoned = list(payloads)
    chosen = rng.sample(range(events), round(events * POISON_SHARE))
    clean_views_left = views
    for index in chosen:
        event = orjson.loads(poisoned[index])
        clean_views_left -= event["event_type"] == "page_view"
        path = "/" + "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(2046))
        poisoned[index] = orjson.dumps(event | {"event_type": "page_view", "path": path})
    clean: list[float] = []
    dirty: list[float] = []
    for round_number in range(ctx.rounds):
        # Alternate which drain goes first, so that a drifting machine favours neither.
        for kind in ("clean", "poisoned") if round_number % 2 == 0 else ("poisoned", "clean"):
            if kind == "clean":
                clean.append(_drain(ctx, payloads, f"processor-clean-{round_number}")[0])
                _check_processed(ctx, events, views)
                continue
            dirty.append(_drain(ctx, poisoned, f"processor-poisoned-{round_number}")[0])
            _check_processed(ctx, events - len(chosen), clean_views_left)
            dead = int(ctx.redis.xlen(ctx.settings.dead_letter_key))
            if dead != len(chosen):
                raise AssertionError(f"{dead} dead letters for {len(chosen)} poison entries")
    return {
        "events": events,
        "poison_entries": len(chosen),
        "poison_share": POISON_SHARE,
        "events_per_s": summary(dirty),
        "reference_events_per_s": summary(clean),
        "ratio": median([d / c for d, c in zip(dirty, clean, strict=True)]),
    }


def _preload(ctx: BenchContext, payloads: list[bytes]) -> None:
    for start in range(0, len(payloads), 10_000):
        pipe = ctx.redis.pipeline(transaction=False)
        for payload in payloads[start : start + 10_000]:
            pipe.xadd(ctx.settings.stream_key, {EVENT_FIELD: payload})
        pipe.execute()


def _check_processed(
    ctx: BenchContext, events: int, views: int, *, count_visits: bool = False
) -> None:
    async def figures(conn: asyncpg.Connection) -> tuple[int, int, int, int]:
        stored = await conn.fetchval("SELECT count(*) FROM events")
        counted = await conn.fetchval("SELECT coalesce(sum(total_views), 0) FROM daily_site_stats")
        visits = await conn.fetchval("SELECT coalesce(sum(visits), 0) FROM daily_site_stats")
        folded = await conn.fetchval(
            "SELECT coalesce(sum(visits), 0) FROM daily_dimension_stats"
            " WHERE dimension = 'visit:device'"
        )
        return stored, counted, visits, folded

    stored, counted, visits, folded = ctx.with_db(figures)
    if (stored, counted) != (events, views):
        raise AssertionError(
            f"stored {stored} of {events} events, counted {counted} of {views} views"
        )
    if count_visits and not 0 < visits == folded:
        raise AssertionError(f"{visits} visits counted, {folded} of them folded")


async def raw_copy(conn: asyncpg.Connection, rows: list[Any], batch_size: int) -> float:
    """Rows/s of a binary COPY of the same rows, in the same batches and encoding, into an
    unindexed table."""
    await use_epoch_micros(conn)
    columns = ", ".join(f'"{column}"' for column in COLUMNS)
    await conn.execute(
        "DROP TABLE IF EXISTS bench_raw_copy; "
        f"CREATE TABLE bench_raw_copy AS SELECT {columns} FROM events WITH NO DATA"
    )
    started = time.perf_counter()
    for start in range(0, len(rows), batch_size):
        await conn.copy_records_to_table(
            "bench_raw_copy", records=rows[start : start + batch_size], columns=COLUMNS
        )
    elapsed = time.perf_counter() - started
    await conn.execute("DROP TABLE bench_raw_copy")
    return len(rows) / elapsed


def freshness(ctx: BenchContext, rate: int, *, count_visits: bool = False) -> dict[str, Any]:
    """Time from a 202 to the event counted in GET /stats, under a steady background load
    (with `count_visits`, the processor counting visits and dimensions too)."""
    ctx.reset()
    background = wrk.lua_script(
        method="POST",
        body=orjson.dumps(data.request_body(random.Random(3))),
        # 20 connections, each paced; 10% less delay makes up for each request's own time.
        delay_ms=0.9 * 20 / rate * 1000,
    )
    port, server = _serve(ctx, "ingest", "ingest_freshness")
    processor_log = ctx.log_dir / "processor_freshness.log"
    processor = Measured(
        pinned([sys.executable, "-m", "processor"], ctx.service_cpu),
        ctx.env(count_visits=count_visits),
        processor_log,
    )
    samples: list[float] = []
    failures: list[BaseException] = []
    try:
        with server:
            _wait_for_stats(port)
            stop = threading.Event()
            probe = threading.Thread(
                target=_probe, args=(port, stop, samples, failures), daemon=True
            )
            probe.start()
            load = wrk.run(
                f"http://127.0.0.1:{port}/event",
                background,
                connections=20,
                seconds=ctx.seconds * 2,
                cpu=ctx.load_cpu,
            )
            stop.set()
            probe.join(timeout=30)
            processor.check_running()  # a processor that died would leave its peak unknown
    finally:
        processor.stop()
    if failures or len(samples) < 20:
        raise AssertionError(f"only {len(samples)} freshness samples") from (failures or [None])[0]
    ordered = sorted(samples)
    return {
        "target_events_per_s": rate,
        "events_per_s": load.rate,
        "samples": len(samples),
        "p50_ms": median(samples),
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "processor_peak_rss_mb": processor.peak_rss_mb,
    }


def _wait_for_stats(port: int) -> None:
    """GET /stats answers 503 until the server's database pool is up (it starts in the
    background: ingest needs only Redis); freshness is measured from then on."""
    deadline = time.monotonic() + 30
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", f"/stats?site_id=x&date={datetime.now(UTC).date().isoformat()}")
            answer = conn.getresponse()
            body = answer.read()
        finally:
            conn.close()
        if answer.status == 200:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"GET /stats still answers {answer.status}: {body!r}")
        time.sleep(0.1)


def _probe(
    port: int, stop: threading.Event, samples: list[float], failures: list[BaseException]
) -> None:
    """Send one marked page view at a time; time until GET /stats counts it."""
    try:
        _probe_until(port, stop, samples)
    except BaseException as failure:  # a thread's exception would otherwise only be printed
        failures.append(failure)


def _probe_until(port: int, stop: threading.Event, samples: list[float]) -> None:
    site = f"freshness-{uuid.uuid4().hex[:8]}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sent = 0
    while not stop.is_set():
        event = {"site_id": site, "event_type": "page_view", "path": "/probe"}
        conn.request("POST", "/event", orjson.dumps(event), {"content-type": "application/json"})
        response = conn.getresponse()
        response.read()
        accepted_at = time.perf_counter()
        if response.status != 202:
            raise AssertionError(f"probe event answered {response.status}")
        sent += 1
        today = datetime.now(UTC).date().isoformat()
        while not stop.is_set():
            conn.request("GET", f"/stats?site_id={site}&date={today}")
            answer = conn.getresponse()
            stats = orjson.loads(answer.read())
            if answer.status != 200:
                raise AssertionError(f"GET /stats answered {answer.status}: {stats}")
            if stats["total_views"] >= sent:
                samples.append((time.perf_counter() - accepted_at) * 1000)
                break
            time.sleep(0.002)
        time.sleep(0.02)
    conn.close()


REPORT_SITE = "report-bench.example"
REPORT_LAST_DAY = date(2026, 1, 15)  # the year's last day: GET /stats reads it
# What the read side is asked, each against GET /health on the same server.
REPORT_QUERIES = {
    "stats_day": f"/stats?site_id={REPORT_SITE}&date={REPORT_LAST_DAY}",
    "aggregate_30d": f"/api/v1/stats/aggregate?site_id={REPORT_SITE}&period=30d&date={REPORT_LAST_DAY}"
    "&metrics=visitors,visits,pageviews,views_per_visit,bounce_rate,visit_duration",
    "pages_90d": f"/api/v1/stats/breakdown?site_id={REPORT_SITE}&property=event:page&period=custom"
    f"&date=2025-10-18,{REPORT_LAST_DAY}&metrics=visitors,pageviews&limit=10",
    "pages_365d": f"/api/v1/stats/breakdown?site_id={REPORT_SITE}&property=event:page&period=custom"
    f"&date=2025-01-16,{REPORT_LAST_DAY}&metrics=visitors,pageviews&limit=10",
    "timeseries_since_2019": f"/api/v1/stats/timeseries?site_id={REPORT_SITE}&period=custom"
    f"&date=2019-01-01,{REPORT_LAST_DAY}&metrics=visitors,pageviews",
    "realtime": f"/api/v1/stats/realtime/visitors?site_id={REPORT_SITE}",
}
EXPORTED_EVENTS = 1_000_000


def reporting(ctx: BenchContext) -> dict[str, Any]:
    """The read side on a year of a large site: 1,000,000 page views a day over 10,000
    paths, 100,000 visitors a day, the dimensions' values (generated straight into the
    rollups, as processed events leave them), with visits counted. Each query under load
    beside GET /health, and alone with answers not reused (what a refresh costs); then an
    export of 1,000,000 raw events."""
    ctx.reset()
    ctx.with_db(_seed_report_year)
    script = wrk.lua_script()
    loads: dict[str, list[wrk.WrkResult]] = {name: [] for name in ("health", *REPORT_QUERIES)}
    seconds = min(ctx.seconds, 5)
    for _ in range(ctx.rounds):
        port, server = _serve(ctx, "ingest", "ingest_report", count_visits="true")
        with server:
            _wait_for_stats(port)
            for name, path in (("health", "/health"), *REPORT_QUERIES.items()):
                _timed_get(port, path)  # its first answer computed before the load
                url = f"http://127.0.0.1:{port}{path}"
                wrk.run(url, script, connections=CONNECTIONS, seconds=1, cpu=ctx.load_cpu)
                loads[name].append(
                    wrk.run(url, script, connections=CONNECTIONS, seconds=seconds, cpu=ctx.load_cpu)
                )
    results: dict[str, Any] = {}
    health = loads["health"]
    results["reference_requests_per_s"] = summary([r.rate for r in health])
    for name in REPORT_QUERIES:
        ours = loads[name]
        results[name] = {
            "requests_per_s": summary([r.rate for r in ours]),
            "p50_ms": summary([r.p50_ms for r in ours]),
            "p99_ms": summary([r.p99_ms for r in ours]),
            "non_2xx": sum(r.non_2xx for r in ours),
            "ratio": median([o.rate / h.rate for o, h in zip(ours, health, strict=True)]),
        }
    # One request at a time, nothing reused: how long each answer takes to compute.
    port, server = _serve(
        ctx, "ingest", "ingest_report_cold", count_visits="true", report_cache_ms=0
    )
    with server:
        _wait_for_stats(port)
        for name, path in REPORT_QUERIES.items():
            results[name]["computed_ms"] = median(
                [_timed_get(port, path) for _ in range(max(3, ctx.rounds))]
            )
    results["export"] = _export(ctx)
    return results


def _timed_get(port: int, path: str) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise AssertionError(f"GET {path} answered {response.status}: {body[:300]!r}")
        return (time.perf_counter() - started) * 1000
    finally:
        connection.close()


def _export(ctx: BenchContext) -> dict[str, Any]:
    """GET /api/v1/export/events of 1,000,000 events (NDJSON), read as fast as the client
    can: rows a second, and the server's resident memory before and at its peak."""
    site = "export-bench.example"
    ctx.with_db(lambda conn: _seed_export(conn, site))
    port, server = _serve(ctx, "ingest", "ingest_export")
    with server as measured:
        _wait_for_stats(port)
        pid = measured.process.pid
        before = memory_mb(pid, "VmRSS")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        started = time.perf_counter()
        connection.request(
            "GET", f"/api/v1/export/events?site_id={site}&from=2026-01-14&to=2026-01-15"
        )
        response = connection.getresponse()
        lines = size = 0
        while chunk := response.read(1 << 16):
            lines += chunk.count(b"\n")
            size += len(chunk)
        seconds = time.perf_counter() - started
        connection.close()
        peak = memory_mb(pid, "VmHWM")
    if lines != EXPORTED_EVENTS:
        raise AssertionError(f"the export gave {lines} events of {EXPORTED_EVENTS}")
    return {
        "events": lines,
        "events_per_s": lines / seconds,
        "megabytes_per_s": size / seconds / 2**20,
        "server_rss_before_mb": before,
        "server_peak_rss_mb": peak,
    }


async def _seed_export(conn: asyncpg.Connection, site: str) -> None:
    await conn.execute("SELECT ensure_events_partition('2026-01-01')")
    await conn.execute(
        """INSERT INTO events (event_id, site_id, event_type, path, "timestamp", received_at,
               visitor_id, referrer, source, browser, browser_version, os, device, country,
               interactive)
           SELECT gen_random_uuid(), $1, 'page_view', '/page-' || (n % 10000), t, t,
               gen_random_uuid(), 'news.example.org/story', 'news.example.org', 'Firefox',
               '131.0', 'Linux', 'Desktop', 'DE', true
           FROM generate_series(1, $2) AS n,
               LATERAL (SELECT '2026-01-14 00:00Z'::timestamptz + n * interval '100 ms') AS at(t)""",
        site,
        EXPORTED_EVENTS,
    )


# Values a day per dimension of the generated year (visits and dimensions, issue 13).
_YEAR_DIMENSIONS = {
    "visit:source": 200, "visit:referrer": 1_000, "visit:utm_source": 50, "visit:utm_medium": 10,
    "visit:utm_campaign": 50, "visit:device": 3, "visit:browser": 20, "visit:browser_version": 200,
    "visit:os": 10, "visit:os_version": 50, "visit:country": 150, "visit:entry_page": 2_000,
    "visit:exit_page": 2_000, "event:name": 10,
}  # fmt: skip


async def _seed_report_year(conn: asyncpg.Connection) -> None:
    """A year to REPORT_LAST_DAY, and every day back to 2019 in the site's figures: as a
    million page views a day (Zipf over 10,000 paths) by 100,000 visitors leave them."""
    first = date(REPORT_LAST_DAY.year - 1, REPORT_LAST_DAY.month, REPORT_LAST_DAY.day)
    await conn.execute(
        """INSERT INTO daily_site_path_counts (site_id, date, path, visitors, visits, views)
           SELECT $1, d::date, '/page-' || i, greatest(1, (10000.0 / (i + 1))::int),
               greatest(1, (12000.0 / (i + 1))::int), greatest(1, (102000.0 / (i + 1))::int)
           FROM generate_series($2::date, $3::date, interval '1 day') AS d,
               generate_series(0, 9999) AS i""",
        REPORT_SITE, first, REPORT_LAST_DAY,
    )  # fmt: skip
    await conn.execute(
        """INSERT INTO daily_dimension_stats
               (site_id, date, dimension, value, visitors, visits, pageviews, bounces,
                duration_us, events)
           SELECT $1, d::date, dim, dim || '-' || i, 100000 / (i + 1), 130000 / (i + 1),
               330000 / (i + 1), 50000 / (i + 1), 60000000::bigint * (130000 / (i + 1)),
               350000 / (i + 1)
           FROM generate_series($2::date, $3::date, interval '1 day') AS d,
               unnest($4::text[], $5::int[]) AS x(dim, n), generate_series(0, n - 1) AS i""",
        REPORT_SITE, first, REPORT_LAST_DAY, list(_YEAR_DIMENSIONS), list(_YEAR_DIMENSIONS.values()),
    )  # fmt: skip
    await conn.execute(
        """INSERT INTO daily_site_stats (site_id, date, total_views, unique_users, visits,
               bounces, duration_us, events)
           SELECT $1, d::date, 1000000, 100000, 300000, 120000, 300000 * 60000000::bigint,
               1100000
           FROM generate_series('2019-01-01'::date, $2::date, interval '1 day') AS d""",
        REPORT_SITE, REPORT_LAST_DAY,
    )  # fmt: skip
    # What a processor's maintenance does within minutes of its start (processor/months.py).
    await close_months(conn, Settings().max_age_seconds, REPORT_LAST_DAY + timedelta(days=1))
    for table in (*_ROLLUP_TABLES, "monthly_site_path_counts", "monthly_dimension_stats"):
        await conn.execute(f"VACUUM ANALYZE {table}")


_ROLLUP_TABLES = ("daily_site_path_counts", "daily_dimension_stats", "daily_site_stats")


def slow_clients(ctx: BenchContext, *, spread: bool = False) -> dict[str, Any]:
    """20,000 slow and idle connections against one ingest process with its default
    limits (the other steps lift the per-address rate limit: wrk sends from one address).
    They all come from one address; `spread`: as if from many (a distributed attack), the
    per-address connection limit lifted, so that MAX_CONNECTIONS alone holds them."""
    env = ctx.env(
        address_rate_limit=Settings().address_rate_limit,
        max_connections_per_address=0 if spread else Settings().max_connections_per_address,
    )
    return slow_clients_module.run_private(
        env, connections=20_000, seconds=30, service_cpu=ctx.service_cpu, load_cpu=ctx.load_cpu
    )
