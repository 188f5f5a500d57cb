"""The results of a run as a table, a JSON file and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _errors(figures: dict[str, Any]) -> str:
    count = figures.get("non_2xx", 0)
    return f", {count:,} non-2xx answers (not counted)" if count else ""


def _refused_at_cap(slow: dict[str, Any]) -> str:
    refused = slow.get("server_closed_by_reason", {}).get("refused_at_cap")
    return f", {refused:,} new ones refused at the cap" if refused else ""


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measurement, our figure, the reference measured in the same run, ratio)."""
    table: list[tuple[str, str, str, str]] = []
    single = results.get("ingest_single")
    if single:
        table.append(
            (
                "1. POST /event, single events (64 conns)",
                f"{single['requests_per_s']['median']:,.0f} req/s, p50 {single['p50_ms']['median']:.2f} ms, "
                f"p99 {single['p99_ms']['median']:.2f} ms{_errors(single)}",
                f"bare ASGI app {single['reference_requests_per_s']['median']:,.0f} req/s",
                f"{single['ratio']:.2f}",
            )
        )
        paced = single["at_80_percent"]
        table.append(
            (
                "   same, paced by wrk at 80% of that rate",
                f"{paced['requests_per_s']['median']:,.0f} req/s reached "
                f"(of {paced['target_requests_per_s']:,.0f}), p50 {paced['p50_ms']['median']:.2f} ms, "
                f"p99 {paced['p99_ms']['median']:.2f} ms",
                "",
                "",
            )
        )
    spread = results.get("ingest_processes")
    if spread:
        table.append(
            (
                f"1b. the same, INGEST_PROCESSES={spread['processes']} sharing the one core",
                f"{spread['requests_per_s']['median']:,.0f} req/s, "
                f"p99 {spread['p99_ms']['median']:.2f} ms",
                f"one process {spread['reference_requests_per_s']['median']:,.0f} req/s",
                f"{spread['ratio']:.2f}",
            )
        )
    batch = results.get("ingest_batch")
    if batch:
        table.append(
            (
                f"2. POST /events, batches of {batch['events_per_request']}",
                f"{batch['events_per_s']['median']:,.0f} events/s "
                f"(p99 {batch['p99_ms']['median']:.1f} ms){_errors(batch)}",
                f"bare ASGI app {batch['reference_requests_per_s']['median'] * batch['events_per_request']:,.0f} events/s",
                f"{batch['ratio']:.2f}",
            )
        )
    processing = results.get("processing")
    if processing:
        table.append(
            (
                f"3. processor draining {processing['events']:,} events",
                f"{processing['events_per_s']['median']:,.0f} events/s",
                f"raw COPY, unindexed table {processing['reference_rows_per_s']['median']:,.0f} rows/s",
                f"{processing['ratio']:.2f}",
            )
        )
    visits = results.get("processing_visits")
    if visits:
        table.append(
            (
                "3a. the same, counting visits and dimensions (COUNT_VISITS=true)",
                f"{visits['events_per_s']['median']:,.0f} events/s",
                f"raw COPY {visits['reference_rows_per_s']['median']:,.0f} rows/s",
                f"{visits['ratio']:.2f}",
            )
        )
    poisoned = results.get("poison")
    if poisoned:
        table.append(
            (
                f"3b. processor, {poisoned['poison_share']:.1%} of {poisoned['events']:,} entries unstorable",
                f"{poisoned['events_per_s']['median']:,.0f} entries/s, "
                f"{poisoned['poison_entries']:,} dead-lettered",
                f"same drain without them {poisoned['reference_events_per_s']['median']:,.0f} entries/s",
                f"{poisoned['ratio']:.2f}",
            )
        )
    fresh = results.get("freshness")
    if fresh:
        table.append(
            (
                f"4. freshness at {fresh['events_per_s']:,.0f} events/s",
                f"202 to counted in /stats: p50 {fresh['p50_ms']:.0f} ms, p99 {fresh['p99_ms']:.0f} ms",
                f"{fresh['samples']} probes",
                "",
            )
        )
    fresh_visits = results.get("freshness_visits")
    if fresh_visits:
        table.append(
            (
                f"4a. the same, counting visits, at {fresh_visits['events_per_s']:,.0f} events/s",
                f"p50 {fresh_visits['p50_ms']:.0f} ms, p99 {fresh_visits['p99_ms']:.0f} ms",
                f"{fresh_visits['samples']} probes",
                "",
            )
        )
    report = results.get("reporting")
    if report and "stats_day" in report:
        health = f"GET /health {report['reference_requests_per_s']['median']:,.0f} req/s"
        labels = {
            "stats_day": "5. GET /stats, a day of 1M views / 10k paths / 100k visitors",
            "aggregate_30d": "5a. aggregate, 30 days, six metrics (a year of such days)",
            "pages_90d": "5b. breakdown by event:page, 90 days",
            "pages_365d": "5c. breakdown by event:page, 365 days",
            "timeseries_since_2019": "5d. daily timeseries since 2019-01-01",
            "realtime": "5e. realtime visitors",
        }
        for name, label in labels.items():
            line = report[name]
            table.append(
                (
                    label,
                    f"{line['requests_per_s']['median']:,.0f} req/s, p50 {line['p50_ms']['median']:.2f} ms, "
                    f"p99 {line['p99_ms']['median']:.2f} ms{_errors(line)}; computed in "
                    f"{line['computed_ms']:.0f} ms",
                    health,
                    f"{line['ratio']:.2f}",
                )
            )
        export = report["export"]
        table.append(
            (
                f"5f. export of {export['events']:,} raw events (NDJSON)",
                f"{export['events_per_s']:,.0f} events/s ({export['megabytes_per_s']:.0f} MB/s); "
                f"server {export['server_rss_before_mb']:.0f} MB before, "
                f"{export['server_peak_rss_mb']:.0f} MB at most",
                "",
                "",
            )
        )
    for label, slow in (
        (
            "6. {:,} slow and idle connections (slowloris) from one address",
            results.get("slow_clients"),
        ),
        (
            "6b. the same from many addresses (per-address limit lifted)",
            results.get("slow_clients_spread"),
        ),
    ):
        if not slow:
            continue
        table.append(
            (
                label.format(slow["attacker_connections"]) + ", normal client at 50 req/s",
                f"p99 {slow['p99_ms']:.1f} ms, {slow['normal_failures']} failed of "
                f"{slow['normal_requests']:,}; server {slow['server_peak_rss_mb']:.0f} MB, "
                f"{slow['server_peak_open_files']:,} files at most; "
                f"{slow['closed_by_server']:,} attacker connections closed" + _refused_at_cap(slow),
                f"same client, no attackers: p99 {slow['reference_p99_ms']:.1f} ms",
                f"{slow['reference_p99_ms'] / slow['p99_ms']:.2f}",
            )
        )
    on_cluster = results.get("cluster")
    if on_cluster:
        shards = on_cluster["shards"]
        table.append(
            (
                f"7. single events, {shards} shards on a {shards}-master Redis Cluster",
                f"{on_cluster['requests_per_s']['median']:,.0f} req/s",
                f"one stream on one Redis {on_cluster['reference_requests_per_s']['median']:,.0f} req/s",
                f"{on_cluster['ingest_ratio']:.2f}",
            )
        )
        table.append(
            (
                f"7a. processor draining {on_cluster['events']:,} events from those {shards} shards",
                f"{on_cluster['events_per_s']['median']:,.0f} events/s",
                f"from one stream on one Redis {on_cluster['reference_events_per_s']['median']:,.0f} events/s",
                f"{on_cluster['processing_ratio']:.2f}",
            )
        )
    memory = []
    if single:
        memory.append(
            f"ingest {max(single['peak_rss_mb'], batch['peak_rss_mb'] if batch else 0):.0f} MB"
        )
    if processing:
        memory.append(f"processor {processing['peak_rss_mb']:.0f} MB")
    if visits:
        memory.append(f"processor counting visits {visits['peak_rss_mb']:.0f} MB")
    if memory:
        table.append(("peak RSS under load", ", ".join(memory), "limits: 150 MB / 300 MB", ""))
    return table


def markdown(results: dict[str, Any]) -> str:
    lines = ["| measurement | figure (median) | reference, same run | ratio |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(results)]
    return "\n".join(lines)


def text(results: dict[str, Any]) -> str:
    table = rows(results)
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table
    )


def write(results: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "latest.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    png_path = directory / "latest.png"
    _chart(results, png_path)
    return json_path, png_path


def _chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = []
    for key, label in [
        ("ingest_single", "POST /event\nvs bare app"),
        ("ingest_batch", "POST /events\nvs bare app"),
        ("processing", "processor\nvs raw COPY"),
        ("poison", "processor, 0.5% poison\nvs clean"),
    ]:
        if key in results:
            bars.append((label, results[key]["ratio"]))
    report = results.get("reporting", {})
    for key, label in (
        ("stats_day", "GET /stats\nvs /health"),
        ("pages_365d", "pages, a year\nvs /health"),
    ):
        if key in report:
            bars.append((label, report[key]["ratio"]))
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.bar([b[0] for b in bars], [b[1] for b in bars], color="#4c72b0")
    for index, (_, ratio) in enumerate(bars):
        axis.text(index, ratio, f"{ratio:.2f}", ha="center", va="bottom")
    axis.set_ylabel("throughput / reference (same run)")
    axis.set_ylim(0, max([1.0] + [b[1] for b in bars]) * 1.15)
    axis.set_title(
        f"make bench, {results['machine']['date']} (medians of {results['machine']['rounds']} rounds)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
