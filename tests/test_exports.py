"""Exports: breakdowns and timeseries as CSV, and GET /api/v1/export/events streaming a
site's raw events of a range of local days, as NDJSON or CSV, equal to the table, in
memory that does not grow with the range."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import os
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import orjson
import pytest

from common.config import Settings

EXPORT = "/api/v1/export/events"
# Around local midnights of Los Angeles (UTC-8 in January): the 14th runs from
# 2026-01-14 08:00 UTC to 2026-01-15 08:00 UTC.
LA_DAY_START = datetime(2026, 1, 14, 8, 0, tzinfo=UTC)


def micros(moment: datetime) -> int:
    """As the test pool sends times (processor/store.py use_epoch_micros)."""
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The server's copy of the registry (the time zone) refreshed often."""
    return dataclasses.replace(settings, registry_refresh_ms=100)


async def insert_events(db: asyncpg.Pool, site: str, times: list[datetime]) -> list[str]:
    """Events stored as the processor stores them (the export reads the table)."""
    await db.execute("SELECT ensure_events_partition('2026-01-01')")
    ids = [str(uuid.uuid4()) for _ in times]
    await db.executemany(
        """INSERT INTO events (event_id, site_id, event_type, path, user_id, "timestamp",
               received_at, visitor_id, source, browser, props, interactive)
           VALUES ($1, $2, 'page_view', $3, $4, $5, $5, $6, 'Google', 'Firefox', $7, true)""",
        [
            (i, site, f"/p/{n % 7}", f"u{n}" if n % 3 else None, micros(at), uuid.uuid4(),
             orjson.dumps({"plan": "pro", "quote": 'a "b",\nc\\d'}).decode() if n % 2 else None)
            for n, (i, at) in enumerate(zip(ids, times, strict=True))
        ],
    )  # fmt: skip
    return ids


async def test_events_of_a_range_of_local_days_as_ndjson_and_csv(
    http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    await db.execute(
        "INSERT INTO sites (site_id, time_zone) VALUES ('la.example', 'America/Los_Angeles')"
    )
    inside = [LA_DAY_START + timedelta(minutes=37 * n) for n in range(39)]  # to 07:66 next day
    outside = [LA_DAY_START - timedelta(microseconds=1), LA_DAY_START + timedelta(days=1)]
    wanted = await insert_events(db, "la.example", inside)
    await insert_events(db, "la.example", outside)
    await insert_events(db, "other.example", inside[:5])
    await asyncio.sleep(0.5)  # the server's copy of the registry has the time zone
    params = {"site_id": "la.example", "from": "2026-01-14", "to": "2026-01-14"}

    response = await http.get(EXPORT, params=params)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = response.text.splitlines()
    rows = [orjson.loads(line) for line in lines]
    assert [row["event_id"] for row in rows] == wanted  # in time order
    stored = {
        str(r["event_id"]): r
        for r in await db.fetch("SELECT event_id, path, user_id, props FROM events")
    }
    for row in rows:
        record = stored[row["event_id"]]
        assert (row["path"], row["user_id"]) == (record["path"], record["user_id"])
        assert row["props"] == (None if record["props"] is None else orjson.loads(record["props"]))
        assert "client_ip" not in row and "user_agent" not in row
    assert any(row["props"] and row["props"]["quote"] == 'a "b",\nc\\d' for row in rows)

    response = await http.get(EXPORT, params=params, headers={"accept": "text/csv"})
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    table = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["event_id"] for row in table] == [row["event_id"] for row in rows]
    assert [row["path"] for row in table] == [row["path"] for row in rows]
    assert [orjson.loads(row["props"]) if row["props"] else None for row in table] == [
        row["props"] for row in rows
    ]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"from": "2026-01-14"}, "from"), ({"from": "2026-01-14", "to": "14.1.2026"}, "from"),
     ({"from": "2026-01-14", "to": "2026-01-14", "format": "xml"}, "format")],
)  # fmt: skip
async def test_a_bad_range_is_a_400(
    http: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await http.get(EXPORT, params={"site_id": "s.example"} | params)
    assert response.status_code == 400
    assert response.json()["field"] == field


def server_pid(port: int) -> int:
    """The ingest server process listening on `port` (found by its environment)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if f"PORT={port}".encode() in environ.read().split(b"\0"):
                    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                        if b"ingest" in cmdline.read():
                            return int(pid)
        except OSError:
            continue
    raise LookupError(port)


def resident_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise LookupError(pid)


async def test_a_large_export_streams_in_memory_that_does_not_grow(
    http: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool
) -> None:
    count = 200_000
    await db.execute("SELECT ensure_events_partition('2026-01-01')")
    await db.execute(
        """INSERT INTO events (event_id, site_id, event_type, path, "timestamp", received_at,
               visitor_id, referrer, source, browser, os, props, interactive)
           SELECT gen_random_uuid(), 'big.example', 'page_view', '/a/fairly/long/path/' || n,
               t, t, gen_random_uuid(), 'news.example.org/story/' || n, 'news.example.org',
               'Firefox', 'Linux', '{"plan": "pro"}', true
           FROM generate_series(1, $1) AS n,
               LATERAL (SELECT '2026-01-14 00:00Z'::timestamptz + n * interval '100 ms') AS at(t)""",
        count,
    )
    pid = server_pid(settings.port)
    before = resident_mb(pid)
    peak, received, lines = before, 0, 0
    params = {"site_id": "big.example", "from": "2026-01-14", "to": "2026-01-14"}
    async with http.stream("GET", EXPORT, params=params) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_bytes():
            received += len(chunk)
            lines += chunk.count(b"\n")
            peak = max(peak, resident_mb(pid))
    assert lines == count
    assert received > 60 * 2**20  # well beyond what the server may grow by
    assert peak - before < 25, f"the server grew from {before:.0f} to {peak:.0f} MB"
