"""Reporting answers reused for REPORT_CACHE_MS (report/cache.py): a question is
computed once while its answer is fresh, then refreshed in the background while the
last answer is given, never older than the bound; concurrent first askers share one
computation; failures are not kept. And through HTTP, against a real server."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import date
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.responses import Response

from common.config import Settings
from report import cache
from report.cache import AnswerCache
from sites import keys
from tests.conftest import free_port


class Counter:
    """A computation that counts its runs and answers its run number after `delay_s`."""

    def __init__(self, delay_s: float = 0.0, status: int = 200):
        self.runs = 0
        self.delay_s = delay_s
        self.status = status

    async def __call__(self) -> Response:
        self.runs += 1
        run = self.runs
        await asyncio.sleep(self.delay_s)
        return Response(str(run), status_code=self.status, media_type="text/plain")


async def test_a_fresh_answer_is_reused_and_a_stale_one_given_while_it_is_refreshed() -> None:
    answers = AnswerCache(max_age_ms=200)
    compute = Counter(delay_s=0.05)
    assert (await answers.answer("q", compute)).body == b"1"
    assert (await answers.answer("q", compute)).body == b"1"
    assert compute.runs == 1
    await asyncio.sleep(0.25)
    started = time.monotonic()
    assert (await answers.answer("q", compute)).body == b"1"  # at once, the last answer
    assert time.monotonic() - started < 0.04
    assert (await answers.answer("q", compute)).body == b"1"  # one refresh, running
    await asyncio.sleep(0.1)
    assert (await answers.answer("q", compute)).body == b"2"
    assert compute.runs == 2


async def test_concurrent_first_askers_share_one_computation() -> None:
    answers = AnswerCache(max_age_ms=1_000)
    compute = Counter(delay_s=0.05)
    bodies = await asyncio.gather(*(answers.answer("q", compute) for _ in range(20)))
    assert {b.body for b in bodies} == {b"1"} and compute.runs == 1
    assert (await answers.answer("other", compute)).body == b"2"


async def test_failures_are_not_kept_and_an_answer_too_old_is_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cache, "STALE_LIMIT_S", 0.1)
    answers = AnswerCache(max_age_ms=100)
    failing = Counter(status=503)
    assert (await answers.answer("q", failing)).status_code == 503
    assert (await answers.answer("q", failing)).status_code == 503
    assert failing.runs == 2
    compute = Counter()
    assert (await answers.answer("p", compute)).body == b"1"
    await asyncio.sleep(0.25)  # older than max age and the stale limit: computed anew
    assert (await answers.answer("p", compute)).body == b"2"


async def test_the_least_recently_used_answers_go_beyond_the_byte_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cache, "MAX_BYTES", 3)
    answers = AnswerCache(max_age_ms=10_000)
    compute = Counter()
    for key in ("a", "b", "c"):
        await answers.answer(key, compute)
    await answers.answer("a", compute)  # used again: kept
    await answers.answer("d", compute)  # pushes out b, the least recently used
    runs = compute.runs
    await answers.answer("a", compute)
    await answers.answer("b", compute)
    assert compute.runs == runs + 1


async def test_disabled_every_request_computes() -> None:
    answers = AnswerCache(max_age_ms=0)
    compute = Counter()
    for expected in (b"1", b"2"):
        assert (await answers.answer("q", compute)).body == expected


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, report_cache_ms=500, count_visits=True)


async def test_through_http_a_change_shows_within_the_bound(
    http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    day = date(2026, 3, 1)
    await db.execute(
        "INSERT INTO daily_site_stats (site_id, date, total_views, unique_users) VALUES ('c', $1, 1, 1)",
        day,
    )
    params = {"site_id": "c", "date": day.isoformat()}
    assert (await http.get("/stats", params=params)).json()["total_views"] == 1
    await db.execute("UPDATE daily_site_stats SET total_views = 2 WHERE site_id = 'c'")
    changed = time.monotonic()
    assert (await http.get("/stats", params=params)).json()["total_views"] == 1  # reused
    while (await http.get("/stats", params=params)).json()["total_views"] != 2:
        assert time.monotonic() - changed < 2.0
        await asyncio.sleep(0.02)
    assert time.monotonic() - changed >= 0.3  # not before the answer was due
    aggregate = "/api/v1/stats/aggregate"
    first = await http.get(
        aggregate,
        params={"site_id": "c", "period": "day", "date": "2026-03-01", "metrics": "pageviews"},
    )
    assert first.json() == {"results": {"pageviews": {"value": 2}}}


async def test_an_answer_sent_again_at_once_still_checks_the_key(
    http: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool, start_server: Any
) -> None:
    """Asked again exactly so, an answer is sent straight from the cache: the key is
    checked as always (another site's key refused, the rate counted)."""
    await db.execute("INSERT INTO sites (site_id) VALUES ('c'), ('d')")
    async with db.acquire() as conn:
        key, _ = await keys.create(conn, name="k", scope="stats:read", site_ids=["c"])
        other, _ = await keys.create(conn, name="o", scope="stats:read", site_ids=["d"])
    limited = dataclasses.replace(
        settings, port=free_port(), key_rate_limit=3, registry_refresh_ms=100
    )
    async with httpx.AsyncClient(base_url=start_server(limited), timeout=10) as client:
        params = {"site_id": "c", "date": "2026-03-01"}
        mine, theirs = ({"authorization": f"Bearer {k}"} for k in (key, other))
        for _ in range(200):  # until the server has read the registry (503 before)
            if (await client.get("/stats", params=params, headers=mine)).status_code == 200:
                break  # the first of the key's 3 requests a minute
            await asyncio.sleep(0.05)
        assert (await client.get("/stats", params=params, headers=theirs)).status_code == 403
        assert (await client.get("/stats", params=params)).status_code == 401
        assert (await client.get("/stats", params=params, headers=mine)).status_code == 200
        assert (await client.get("/stats", params=params, headers=mine)).status_code == 200
        assert (await client.get("/stats", params=params, headers=mine)).status_code == 429
