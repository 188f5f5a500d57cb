"""GET /stats through real HTTP against a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime

import asyncpg
import httpx
import pytest


async def test_a_day_without_data_is_zeros(http: httpx.AsyncClient) -> None:
    response = await http.get("/stats", params={"site_id": "nobody", "date": "2024-02-29"})
    assert response.status_code == 200
    assert response.json() == {
        "site_id": "nobody",
        "date": "2024-02-29",
        "total_views": 0,
        "unique_users": 0,
        "top_paths": [],
    }


async def test_date_defaults_to_today_utc(http: httpx.AsyncClient) -> None:
    response = await http.get("/stats", params={"site_id": "s"})
    assert response.json()["date"] == datetime.now(UTC).date().isoformat()


async def test_top_paths_are_the_ten_most_viewed_ties_by_path(
    http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    day = date(2024, 6, 1)
    views = {f"/p{i:02d}": 100 - i for i in range(15)} | {"/tie-b": 95, "/tie-a": 95}
    await db.executemany(
        "INSERT INTO daily_site_path_counts (site_id, date, path, views) VALUES ('s', $1, $2, $3)",
        [(day, path, count) for path, count in views.items()],
    )
    await db.execute(
        "INSERT INTO daily_site_stats (site_id, date, total_views, unique_users) VALUES ('s', $1, 1234, 56)",
        day,
    )
    body = (await http.get("/stats", params={"site_id": "s", "date": "2024-06-01"})).json()
    assert body["total_views"] == 1234
    assert body["unique_users"] == 56
    expected = sorted(views.items(), key=lambda item: (-item[1], item[0]))[:10]
    assert body["top_paths"] == [{"path": p, "views": v} for p, v in expected]
    ties = [{"path": p, "views": 95} for p in ("/p05", "/tie-a", "/tie-b")]
    assert body["top_paths"][5:8] == ties


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "site_id"),
        ({"site_id": ""}, "site_id"),
        ({"site_id": "s" * 129}, "site_id"),
        ({"site_id": "s", "date": "2024-13-01"}, "date"),
        ({"site_id": "s", "date": "20240101"}, "date"),
        ({"site_id": "s", "date": "yesterday"}, "date"),
        ({"site_id": "s", "date": ""}, "date"),
    ],
)
async def test_bad_parameters_get_400_naming_the_field(
    http: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await http.get("/stats", params=params)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_query"
    assert [d["field"] for d in body["detail"]] == [field]


async def test_health_answers_while_the_process_runs(http: httpx.AsyncClient) -> None:
    response = await http.get("/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
