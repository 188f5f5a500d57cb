"""POST /event through real HTTP against a real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable

import httpx
import orjson
import pytest
import redis.asyncio as redis

from common.config import Settings
from common.constants import EVENT_FIELD
from tests.conftest import free_port


async def stream_events(client: redis.Redis, settings: Settings) -> list[dict[str, object]]:
    entries = await client.xrange(settings.stream_key)
    return [orjson.loads(fields[EVENT_FIELD]) for _, fields in entries]


async def test_an_event_is_in_the_stream_when_202_is_answered(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    response = await http.post(
        "/event", json={"site_id": "s1", "event_type": "page_view", "path": "/a", "user_id": "u"}
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "accepted"
    assert uuid.UUID(body["event_id"]).version == 7
    [stored] = await stream_events(redis_client, settings)
    assert stored["event_id"] == body["event_id"]
    assert (stored["site_id"], stored["event_type"], stored["path"], stored["user_id"]) == (
        "s1",
        "page_view",
        "/a",
        "u",
    )


async def test_the_clients_event_id_is_kept(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    event_id = str(uuid.uuid4())
    response = await http.post(
        "/event", json={"site_id": "s", "event_type": "e", "event_id": event_id}
    )
    assert response.json() == {"status": "accepted", "event_id": event_id}
    [stored] = await stream_events(redis_client, settings)
    assert stored["event_id"] == event_id


async def test_concurrent_requests_each_get_their_own_event(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    responses = await asyncio.gather(
        *(
            http.post("/event", json={"site_id": "s", "event_type": "e", "path": f"/{i}"})
            for i in range(200)
        )
    )
    assert {r.status_code for r in responses} == {202}
    ids = {r.json()["event_id"] for r in responses}
    stored = await stream_events(redis_client, settings)
    assert {e["event_id"] for e in stored} == ids
    assert sorted(e["path"] for e in stored) == sorted(f"/{i}" for i in range(200))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"event_type": "page_view"}', "site_id"),
        (b'{"site_id": "s"}', "event_type"),
        (b'{"site_id": 1, "event_type": "page_view"}', "site_id"),
        (b'{"site_id": "s", "event_type": "e", "path": ""}', None),  # empty path: defaults to "/"
        (b'{"site_id": "s", "event_type": "e", "timestamp": "2024-01-01T10:00:00"}', "timestamp"),
        (b'{"site_id": "s", "event_type": "e", "event_id": "x"}', "event_id"),
        (b'{"site_id": "s", "event_type": "e", "user_id": {"id": 1}}', "user_id"),
        (b"not json", "body"),
        (b"[]", "body"),
        (b"", "body"),
    ],
)
async def test_bad_input_gets_400_naming_the_field_and_nothing_is_enqueued(
    http: httpx.AsyncClient,
    redis_client: redis.Redis,
    settings: Settings,
    body: bytes,
    field: str | None,
) -> None:
    response = await http.post("/event", content=body, headers={"content-type": "application/json"})
    if field is None:
        assert response.status_code == 202
        return
    assert response.status_code == 400
    error = response.json()
    assert error["error"] == "invalid_event"
    assert field in [d["field"] for d in error["detail"]]
    assert await redis_client.xlen(settings.stream_key) == 0


async def test_an_oversized_body_gets_413(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    padding = "x" * settings.max_body_bytes
    response = await http.post("/event", json={"site_id": "s", "event_type": "e", "pad": padding})
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"
    assert await redis_client.xlen(settings.stream_key) == 0


async def test_other_methods_are_refused(http: httpx.AsyncClient) -> None:
    assert (await http.get("/event")).status_code == 405


async def test_unreachable_redis_gives_503_quickly_and_never_202(
    settings: Settings, start_server: Callable[[Settings], str]
) -> None:
    # Nothing listens on this port: every append fails as Redis being down would.
    down = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    base_url = start_server(down)
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        for _ in range(3):
            started = time.monotonic()
            response = await client.post("/event", json={"site_id": "s", "event_type": "e"})
            elapsed = time.monotonic() - started
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"] == "unavailable"
            assert elapsed < 2 * settings.redis_timeout_ms / 1000 + 0.5


async def test_an_append_that_redis_refuses_gets_503_and_the_next_one_202(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    # A key of the wrong type makes every XADD an error reply (WRONGTYPE).
    await redis_client.set(settings.stream_key, "not a stream")
    responses = await asyncio.gather(
        *(http.post("/event", json={"site_id": "s", "event_type": "e"}) for _ in range(5))
    )
    assert [r.status_code for r in responses] == [503] * 5
    assert all(r.json()["error"] == "unavailable" for r in responses)
    await redis_client.delete(settings.stream_key)
    response = await http.post("/event", json={"site_id": "s", "event_type": "e"})
    assert response.status_code == 202
    [stored] = await stream_events(redis_client, settings)
    assert stored["event_id"] == response.json()["event_id"]


async def test_a_sendbeacon_body_declared_as_text_plain_is_accepted(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    # navigator.sendBeacon(url, JSON.stringify(event)) sends exactly this.
    response = await http.post(
        "/event",
        content=b'{"site_id":"s","event_type":"page_view","path":"/b"}',
        headers={"content-type": "text/plain;charset=UTF-8"},
    )
    assert response.status_code == 202
    [stored] = await stream_events(redis_client, settings)
    assert stored["path"] == "/b"


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "image/png"],
)
async def test_a_type_that_cannot_hold_json_gets_415(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings, content_type: str
) -> None:
    for route in ("/event", "/events"):
        response = await http.post(
            route,
            content=b'{"site_id":"s","event_type":"e"}',
            headers={"content-type": content_type},
        )
        assert response.status_code == 415
        assert response.json()["error"] == "unsupported_media_type"
    assert await redis_client.xlen(settings.stream_key) == 0


async def test_a_batch_accepts_the_valid_and_reports_the_invalid_by_index(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    batch = [
        {"site_id": "s", "event_type": "page_view", "path": "/1"},
        {"site_id": "s"},
        {"site_id": "s", "event_type": "page_view", "path": "/3"},
        "not an object",
    ]
    response = await http.post("/events", json=batch)
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2
    assert [r["index"] for r in body["rejected"]] == [1, 3]
    assert body["rejected"][0]["detail"] == [{"field": "event_type", "message": "required"}]
    stored = await stream_events(redis_client, settings)
    assert [e["event_id"] for e in stored] == body["event_ids"]
    assert [e["path"] for e in stored] == ["/1", "/3"]


async def test_a_batch_may_be_ndjson(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    lines = b'{"site_id":"s","event_type":"a"}\n\n{"site_id":"s","event_type":"b"}\n{oops\n'
    response = await http.post(
        "/events", content=lines, headers={"content-type": "application/x-ndjson"}
    )
    body = response.json()
    assert (response.status_code, body["accepted"], [r["index"] for r in body["rejected"]]) == (
        202,
        2,
        [2],
    )
    assert [e["event_type"] for e in await stream_events(redis_client, settings)] == ["a", "b"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"[]", "invalid_batch"),
        (b'[{}, {"site_id": 1}]', "invalid_batch"),
        (b"not json", "invalid_batch"),
        (b'{"site_id": "s"}', "invalid_batch"),
        (b'"string"', "invalid_batch"),
    ],
)
async def test_a_batch_with_nothing_valid_is_400(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings, body: bytes, code: str
) -> None:
    response = await http.post(
        "/events", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == code
    assert await redis_client.xlen(settings.stream_key) == 0


async def test_a_batch_over_the_event_limit_is_refused_whole(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    batch = [{"site_id": "s", "event_type": "e"}] * (settings.max_batch_events + 1)
    response = await http.post("/events", json=batch)
    assert response.status_code == 400
    assert "more than 500" in response.json()["message"]
    assert await redis_client.xlen(settings.stream_key) == 0
    accepted = await http.post("/events", json=batch[:-1])
    assert accepted.json()["accepted"] == settings.max_batch_events
