"""`make bench` (python -m benchmarks): every measurement, one table, JSON and a chart.

Starts what it needs with settings of its own (a database and a stream key made for the
run), pins the service to one core and wrk to the other where the machine allows it,
and removes what it made. BENCH_ROUNDS (3), BENCH_SECONDS (8) and BENCH_EVENTS (200000)
bound the run; BENCH_STEPS (e.g. "ingest_single,processing"; "ingest_processes": single events with
INGEST_PROCESSES=2 against one process on the same core; "poison": the processor with
0.5% unstorable entries against the same drain without them; "processing_visits" and
"freshness_visits": those steps with COUNT_VISITS=true; "cluster": single events and
processing with 3 shards on a private Redis Cluster against one stream on one Redis) picks steps; BENCH_RESULTS
names another folder for the results than benchmarks/results.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from benchmarks import cluster, report, steps, wrk
from benchmarks.context import BenchContext, drop_database
from benchmarks.processes import ROOT, cpus
from common.config import Settings
from common.migrate import prepare_database

RESULTS_DIR = ROOT / "benchmarks" / "results"  # or BENCH_RESULTS, e.g. for a trial run
ALL_STEPS = (
    "ingest_single",
    "ingest_processes",
    "ingest_batch",
    "processing",
    "processing_visits",
    "poison",
    "freshness",
    "freshness_visits",
    "reporting",
    "slow_clients",
    "slow_clients_spread",
    "cluster",
)


def _machine(rounds: int, seconds: int) -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "rounds": rounds,
        "seconds_per_run": seconds,
    }


def main() -> int:
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    seconds = int(os.environ.get("BENCH_SECONDS", "8"))
    events = int(os.environ.get("BENCH_EVENTS", "200000"))
    chosen = os.environ.get("BENCH_STEPS", ",".join(ALL_STEPS)).split(",")
    if set(chosen) - {
        "processing",
        "processing_visits",
        "poison",
    }:  # the others load a server with wrk
        wrk.ensure_installed()
    base = Settings.from_env()
    database = f"analytics_bench_{uuid.uuid4().hex[:8]}"
    server_url = base.database_url.rsplit("/", 1)[0]
    settings = dataclasses.replace(
        base,
        database_url=f"{server_url}/{database}",
        stream_key=f"bench:{uuid.uuid4().hex[:8]}:events_stream",
        host="127.0.0.1",
        consumer_name="bench",
        # wrk sends from one address far above the default limit: the buckets are still
        # kept and checked on every request (their cost is measured), never empty.
        address_rate_limit=1_000_000_000,
    )
    service_cpu, load_cpu = cpus()
    asyncio.run(prepare_database(settings.database_url))
    client = redis.Redis.from_url(settings.redis_url)
    started = time.monotonic()
    results: dict[str, Any] = {"machine": _machine(rounds, seconds)}
    results["machine"]["pinned"] = service_cpu is not None
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as log_dir:
        ctx = BenchContext(settings, service_cpu, load_cpu, rounds, seconds, Path(log_dir), client)
        try:
            for step in chosen:
                print(f"== {step} ...", file=sys.stderr, flush=True)
                if step == "ingest_single":
                    results[step] = steps.ingest(ctx, events_per_request=1)
                elif step == "ingest_processes":
                    results[step] = steps.ingest_processes(ctx)
                elif step == "ingest_batch":
                    results[step] = steps.ingest(ctx, events_per_request=100)
                elif step == "processing":
                    results[step] = steps.processing(ctx, events)
                elif step == "processing_visits":
                    results[step] = steps.processing(ctx, events, count_visits=True)
                elif step == "poison":
                    results[step] = steps.poison(ctx, events)
                elif step == "freshness":
                    results[step] = steps.freshness(ctx, rate=2_000)
                elif step == "freshness_visits":
                    results[step] = steps.freshness(ctx, rate=2_000, count_visits=True)
                elif step == "reporting":
                    results[step] = steps.reporting(ctx)
                elif step == "slow_clients":
                    results[step] = steps.slow_clients(ctx)
                elif step == "slow_clients_spread":
                    results[step] = steps.slow_clients(ctx, spread=True)
                elif step == "cluster":
                    results[step] = cluster.cluster_against_one_redis(ctx, events // 2)
                else:
                    raise SystemExit(f"unknown step {step!r}; steps: {', '.join(ALL_STEPS)}")
        finally:
            # The stream and every key named after it (dead letters, salts, counters).
            for key in client.scan_iter(match=f"{settings.stream_key}*"):
                client.delete(key)
            client.close()
            asyncio.run(drop_database(server_url, database))
    results["machine"]["minutes"] = round((time.monotonic() - started) / 60, 1)
    json_path, png_path = report.write(results, Path(os.environ.get("BENCH_RESULTS", RESULTS_DIR)))
    print(report.text(results))
    print(
        f"\n{results['machine']['cpu']}, {results['machine']['cores']} cores; "
        f"run took {results['machine']['minutes']} min; wrote {json_path} and {png_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
