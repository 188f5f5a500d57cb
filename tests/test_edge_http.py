"""The production edge over real HTTP: pixel, CORS, bots, visitors, client info, limits."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis.asyncio as redis

from common.config import Settings
from ingest.endpoints import PIXEL
from tests.test_ingest_http import stream_events

GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"


async def client_for(
    start_server: Callable[[Settings], str], settings: Settings
) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=start_server(settings), timeout=10)


async def test_the_pixel_answers_a_gif_after_enqueueing(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    response = await http.get(
        "/event.gif",
        params={"site_id": "s", "event_type": "page_view", "path": "/no-js", "user_id": "u"},
        headers={"user-agent": FIREFOX},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.headers["cache-control"] == "no-store"
    assert response.content == PIXEL and PIXEL.startswith(b"GIF89a")
    [stored] = await stream_events(redis_client, settings)
    assert (stored["site_id"], stored["path"], stored["user_id"]) == ("s", "/no-js", "u")


async def test_a_bad_pixel_request_is_400_and_enqueues_nothing(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    response = await http.get("/event.gif", params={"event_type": "page_view"})
    assert response.status_code == 400
    assert response.json()["detail"] == [{"field": "site_id", "message": "required"}]
    assert await redis_client.xlen(settings.stream_key) == 0


async def test_cors_preflight_and_responses_allow_any_origin_by_default(
    http: httpx.AsyncClient,
) -> None:
    preflight = await http.options(
        "/event",
        headers={
            "origin": "https://shop.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "content-type"
    for route in ("/event", "/events"):
        assert (
            await http.options(route, headers={"origin": "https://a.example"})
        ).status_code == 204
    response = await http.post(
        "/event",
        json={"site_id": "s", "event_type": "e"},
        headers={"origin": "https://shop.example"},
    )
    assert response.headers["access-control-allow-origin"] == "*"


async def test_only_configured_origins_may_send_from_browsers(
    settings: Settings,
    redis_client: redis.Redis,
    start_server: Callable[[Settings], str],
) -> None:
    allowed = "https://shop.example"
    configured = dataclasses.replace(settings, cors_origins=f"{allowed}, https://blog.example")
    async with await client_for(start_server, configured) as http:
        preflight = await http.options("/event", headers={"origin": allowed})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == allowed
        assert preflight.headers["vary"] == "Origin"
        assert (
            await http.options("/event", headers={"origin": "https://evil.example"})
        ).status_code == 403

        event = {"site_id": "s", "event_type": "e"}
        refused = await http.post("/event", json=event, headers={"origin": "https://evil.example"})
        assert (refused.status_code, refused.json()["error"]) == (403, "origin_not_allowed")
        ok = await http.post("/event", json=event, headers={"origin": allowed})
        assert ok.status_code == 202
        assert ok.headers["access-control-allow-origin"] == allowed
        server_side = await http.post("/event", json=event)  # no Origin: not a browser
        assert server_side.status_code == 202
    assert await redis_client.xlen(settings.stream_key) == 2


async def test_bots_are_answered_ignored_counted_and_not_enqueued(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    event = {"site_id": "bot-site", "event_type": "page_view"}
    response = await http.post("/event", json=event, headers={"user-agent": GOOGLEBOT})
    assert (response.status_code, response.json()) == (202, {"status": "ignored"})
    pixel = await http.get("/event.gif", params=event, headers={"user-agent": GOOGLEBOT})
    assert pixel.content == PIXEL
    batch = await http.post("/events", json=[event, event], headers={"user-agent": GOOGLEBOT})
    assert batch.json() == {"status": "ignored"}
    # An HTTP library is not a bot.
    library = await http.post("/event", json=event, headers={"user-agent": "python-requests/2.31"})
    assert library.json()["status"] == "accepted"
    assert await redis_client.xlen(settings.stream_key) == 1

    # In the delivery ledger, with the next write to the stream (or at once, alone).
    key = f"{settings.ledger_key_prefix}{datetime.now(UTC).date().isoformat()}"
    deadline = time.monotonic() + 5
    while await redis_client.hget(key, "ignored:bot:bot-site") != b"4":
        assert time.monotonic() < deadline, await redis_client.hgetall(key)
        await asyncio.sleep(0.02)
    assert await redis_client.hget(key, "accepted:bot-site") == b"1"


async def test_anonymous_visitors_get_a_salted_daily_hash(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    async def send(site: str, user_agent: str, **extra: str) -> None:
        response = await http.post(
            "/event",
            json={"site_id": site, "event_type": "page_view", **extra},
            headers={"user-agent": user_agent},
        )
        assert response.status_code == 202

    await send("a", FIREFOX)
    await send("a", FIREFOX)
    await send("a", CHROME)
    await send("b", FIREFOX)
    await send("a", FIREFOX, user_id="known")
    events = await stream_events(redis_client, settings)
    visitors = [e.get("visitor_id") for e in events]
    assert visitors[0] == visitors[1]  # same site, IP and browser: the same visitor
    assert len({visitors[0], visitors[2], visitors[3]}) == 3  # another browser, another site
    assert all(uuid.UUID(str(v)) for v in visitors[:4])
    assert visitors[4] is None  # a known user needs no hash
    # The raw IP and User-Agent are not kept by default.
    assert all("client_ip" not in e and "user_agent" not in e for e in events)
    # The day's salt is shared through Redis and expires a day after the last moment an
    # event of that day can still be accepted.
    salts = [key async for key in redis_client.scan_iter(match=f"{settings.salt_key_prefix}*")]
    assert len(salts) == 1
    assert 0 < await redis_client.ttl(salts[0]) <= 2 * 86_400 + settings.max_age_seconds


async def test_the_visitor_salt_is_that_of_the_events_day_not_of_its_receipt(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    """A visitor is counted on the day the event happened: an event sent late, or just
    across midnight, hashes with the salt of that day, as the visitor's other events of
    that day did when they were sent on it."""
    midnight = datetime.combine(datetime.now(UTC).date(), datetime.min.time(), UTC)
    moments = {
        "23:59:59 yesterday": midnight - timedelta(seconds=1),
        "00:00:01 today": midnight + timedelta(seconds=1),
        "three days ago": midnight - timedelta(days=3) + timedelta(hours=9),
    }
    for moment in moments.values():
        response = await http.post(
            "/event",
            json={"site_id": "s", "event_type": "page_view", "timestamp": moment.isoformat()},
            headers={"user-agent": FIREFOX},
        )
        assert response.status_code == 202
    events = await stream_events(redis_client, settings)

    def expected(moment: datetime) -> str:
        return str(
            uuid.UUID(
                bytes=hashlib.blake2b(
                    f"s\x00127.0.0.1\x00{FIREFOX}".encode(), key=salts[moment], digest_size=16
                ).digest()
            )
        )

    salts = {}
    for moment in moments.values():
        day = int(moment.timestamp()) // 86_400
        salts[moment] = await redis_client.get(f"{settings.salt_key_prefix}{day}")
        assert salts[moment], f"no salt for day {day}"
    assert [e["visitor_id"] for e in events] == [expected(m) for m in moments.values()]
    assert len({e["visitor_id"] for e in events}) == 3  # each day its own visitor id


async def test_client_info_is_stored_when_configured_and_proxies_are_trusted_only_if_listed(
    settings: Settings, redis_client: redis.Redis, start_server: Callable[[Settings], str]
) -> None:
    configured = dataclasses.replace(settings, store_client_info=True, trusted_proxies="127.0.0.1")
    async with await client_for(start_server, configured) as http:
        headers = {"user-agent": FIREFOX, "x-forwarded-for": "198.51.100.9, 203.0.113.7"}
        response = await http.post(
            "/event", json={"site_id": "s", "event_type": "e"}, headers=headers
        )
        assert response.status_code == 202
    [stored] = await stream_events(redis_client, settings)
    # The rightmost address that a trusted proxy did not write is the client.
    assert (stored["client_ip"], stored["user_agent"]) == ("203.0.113.7", FIREFOX)


async def test_x_forwarded_for_is_ignored_without_trusted_proxies(
    settings: Settings, redis_client: redis.Redis, start_server: Callable[[Settings], str]
) -> None:
    configured = dataclasses.replace(settings, store_client_info=True)
    async with await client_for(start_server, configured) as http:
        headers = {"x-forwarded-for": "203.0.113.7"}
        await http.post("/event", json={"site_id": "s", "event_type": "e"}, headers=headers)
    [stored] = await stream_events(redis_client, settings)
    assert stored["client_ip"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("moment", "message"),
    [
        (datetime.now(UTC) + timedelta(hours=2), "in the future"),
        (datetime.now(UTC) - timedelta(days=8), "older than"),
    ],
)
async def test_timestamps_outside_the_window_are_400(
    settings: Settings,
    redis_client: redis.Redis,
    start_server: Callable[[Settings], str],
    moment: datetime,
    message: str,
) -> None:
    default_window = dataclasses.replace(
        settings,
        max_future_seconds=Settings().max_future_seconds,
        max_age_seconds=Settings().max_age_seconds,
    )
    async with await client_for(start_server, default_window) as http:
        response = await http.post(
            "/event", json={"site_id": "s", "event_type": "e", "timestamp": moment.isoformat()}
        )
        assert response.status_code == 400
        [detail] = response.json()["detail"]
        assert detail["field"] == "timestamp" and message in detail["message"]
        in_window = datetime.now(UTC) - timedelta(days=6)
        response = await http.post(
            "/event", json={"site_id": "s", "event_type": "e", "timestamp": in_window.isoformat()}
        )
        assert response.status_code == 202
    assert await redis_client.xlen(settings.stream_key) == 1
