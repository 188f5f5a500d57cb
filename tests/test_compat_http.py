"""Plausible's POST /api/event and Umami's POST /api/send, as their trackers send them,
through real HTTP into the test's Redis stream (the contracts: docs/compatibility.md)."""

from __future__ import annotations

import httpx
import orjson
import pytest
import redis.asyncio as redis

from common.config import Settings
from tests.test_edge_http import CHROME
from tests.test_ingest_http import stream_events

BROWSER = {"user-agent": CHROME, "content-type": "text/plain"}
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
WEBSITE = "6f7a2b1c-3d4e-4f50-8a6b-7c8d9e0f1a2b"


async def _plausible(http: httpx.AsyncClient, body: object, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return await http.post("/api/event", content=content, headers={**BROWSER, **headers})


# --- Plausible ------------------------------------------------------------------------


async def test_the_plausible_trackers_page_view_is_our_event(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    response = await _plausible(
        http,
        {
            "n": "pageview",
            "v": 30,
            "u": "https://www.example.com/blog?utm_source=news",
            "d": "example.com",
            "r": "https://www.google.com/",
        },
    )
    assert (response.status_code, response.text) == (202, "ok")
    assert response.headers["content-type"].startswith("text/plain")
    assert "x-plausible-dropped" not in response.headers
    [event] = await stream_events(redis_client, settings)
    assert event["site_id"] == "example.com"
    assert event["event_type"] == "page_view"
    assert event["url"] == "https://www.example.com/blog?utm_source=news"
    assert event["referrer"] == "https://www.google.com/"
    assert "path" not in event  # the processor takes it from the url
    assert "interactive" not in event


async def test_long_keys_a_custom_event_and_props_as_json_text(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    props = {"plan": "pro", "seats": 5, "trial": False, "list": [1], "blank": "  ", "none": None}
    response = await _plausible(
        http,
        {
            "name": "Signup",
            "url": "https://example.com/pricing",
            "domain": "example.com",
            "props": orjson.dumps(props).decode(),  # the old npm tracker sends a string
            "interactive": False,
        },
    )
    assert response.status_code == 202
    [event] = await stream_events(redis_client, settings)
    assert event["event_type"] == "Signup"
    assert event["props"] == {"plan": "pro", "seats": "5", "trial": "false"}
    assert event["interactive"] is False


async def test_one_event_per_domain_of_a_comma_separated_list(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    body = {"n": "pageview", "u": "https://a.example/", "d": "a.example, www.b.example"}
    assert (await _plausible(http, body)).status_code == 202
    events = await stream_events(redis_client, settings)
    assert [e["site_id"] for e in events] == ["a.example", "b.example"]
    assert len({e["event_id"] for e in events}) == 2


async def test_without_a_domain_the_pages_host_is_the_site(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    body = {"n": "pageview", "u": "https://www.shop.example/cart"}
    assert (await _plausible(http, body)).status_code == 202
    [event] = await stream_events(redis_client, settings)
    assert event["site_id"] == "shop.example"


async def test_hash_mode_keeps_the_fragment_in_the_path(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    body = {"n": "pageview", "u": "https://app.example/app#/settings%20page", "d": "x", "h": 1}
    assert (await _plausible(http, body)).status_code == 202
    [event] = await stream_events(redis_client, settings)
    assert event["path"] == "/app#/settings page"


async def test_an_engagement_event_is_stored_and_never_an_interaction(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    body = {"n": "engagement", "u": "https://x.example/", "d": "x.example", "sd": 80, "e": 5300}
    assert (await _plausible(http, body)).status_code == 202
    [event] = await stream_events(redis_client, settings)
    assert (event["event_type"], event["interactive"]) == ("engagement", False)


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        (b"{not json", {"request": ["Unable to parse request body as json"]}),
        (b"[1, 2]", {"request": ["Unable to parse request body as json"]}),
        ({"n": "pageview", "d": "x.example"}, {"url": ["is required"]}),
        ({"n": "pageview", "u": "data:text/html,hi", "d": "x"}, {"url": ["scheme is not allowed"]}),
        ({"u": "https://x.example/", "d": "x.example"}, {"event_name": ["can't be blank"]}),
        ({"n": "pageview", "u": "https://x.example/", "d": " , "}, {"domain": ["can't be blank"]}),
        (
            {"n": "x" * 121, "u": "https://x.example/", "d": "x.example"},
            {"event_name": ["should be at most 120 character(s)"]},
        ),
        (
            {"n": "pageview", "u": "https://x.example/", "d": "x", "p": {"k" * 301: "v"}},
            {"props": ["keys should have at most 300 bytes and values 2000 bytes"]},
        ),
        (
            {"n": "pageview", "u": "https://x.example/", "d": "x", "p": {"k": "v" * 2001}},
            {"props": ["keys should have at most 300 bytes and values 2000 bytes"]},
        ),
        (
            {"n": "engagement", "u": "https://x.example/", "d": "x.example"},
            {
                "event_name": [
                    "engagement event requires a valid integer value for at least one of "
                    "'sd' or 'e' fields"
                ]
            },
        ),
        ({"n": "pageview", "u": "https://x.example/", "d": "d" * 129}, None),  # ours: domain
    ],
)
async def test_invalid_plausible_requests_get_plausibles_errors_and_nothing_is_enqueued(
    http: httpx.AsyncClient,
    redis_client: redis.Redis,
    settings: Settings,
    body: object,
    errors: dict[str, list[str]] | None,
) -> None:
    response = await _plausible(http, body)
    assert response.status_code == 400
    if errors is None:  # refused by our own limits, said in Plausible's shape
        assert list(response.json()["errors"]) == ["domain"]
    else:
        assert response.json() == {"errors": errors}
    assert await stream_events(redis_client, settings) == []


async def test_a_body_of_any_declared_type_is_read_as_json(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    """As Plausible reads it: curl -d sends a form's type, with JSON in it."""
    body = {"n": "pageview", "u": "https://x.example/", "d": "x.example"}
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert (await _plausible(http, body, **form)).status_code == 202
    response = await _plausible(http, {"n": "pageview"}, **form)
    assert response.json() == {"errors": {"url": ["is required"]}}
    assert len(await stream_events(redis_client, settings)) == 1


async def test_a_bots_events_are_dropped_and_counted_in_the_header(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    body = {"n": "pageview", "u": "https://a.example/", "d": "a.example,b.example"}
    response = await _plausible(http, body, **{"user-agent": GOOGLEBOT})
    assert (response.status_code, response.text) == (202, "ok")
    assert response.headers["x-plausible-dropped"] == "2"
    assert await stream_events(redis_client, settings) == []


# --- Umami ----------------------------------------------------------------------------


def _umami_payload(**changes: object) -> dict[str, object]:
    """What Umami's script.js sends for a page view (src/tracker/index.js getPayload)."""
    return {
        "website": WEBSITE,
        "screen": "1920x1080",
        "language": "en-US",
        "title": "Pricing",
        "hostname": "shop.example",
        "url": "https://shop.example/pricing?utm_campaign=spring",
        "referrer": "https://duckduckgo.com/",
        **changes,
    }


async def _umami(http: httpx.AsyncClient, body: object, user_agent: str = CHROME) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"user-agent": user_agent, "content-type": "application/json"}
    return await http.post("/api/send", content=content, headers=headers)


async def test_the_umami_trackers_page_view_is_our_event(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    response = await _umami(http, {"type": "event", "payload": _umami_payload()})
    assert response.status_code == 200
    answer = response.json()
    # No cache token: the tracker then sends none back, and is not told to stop.
    assert "cache" not in answer and not answer.get("disabled")
    [event] = await stream_events(redis_client, settings)
    assert event["event_id"] == answer["event_id"]
    assert event["site_id"] == WEBSITE
    assert event["event_type"] == "page_view"
    assert event["url"] == "https://shop.example/pricing?utm_campaign=spring"
    assert event["referrer"] == "https://duckduckgo.com/"
    assert event["screen_width"] == 1920


async def test_an_umami_custom_event_with_data_a_distinct_id_and_a_time(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    payload = _umami_payload(
        url="/checkout",
        referrer="",
        name="purchase",
        data={"plan": "pro", "amount": 12.5, "items": ["a", "b"]},
        id="user-42",
        timestamp=1_767_225_600,  # 2026-01-01T00:00:00Z
    )
    assert (await _umami(http, {"type": "event", "payload": payload})).status_code == 200
    [event] = await stream_events(redis_client, settings)
    assert event["event_type"] == "purchase"
    assert event["url"] == "https://shop.example/checkout"  # a path is on the payload's host
    assert "referrer" not in event
    assert event["props"] == {"plan": "pro", "amount": "12.5", "items": '["a","b"]'}
    assert event["user_id"] == "user-42"
    assert event["timestamp"] == 1_767_225_600_000_000


async def test_an_umami_identify_is_answered_and_not_stored(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    body = {"type": "identify", "payload": _umami_payload(data={"plan": "pro"})}
    assert (await _umami(http, body)).status_code == 200
    assert await stream_events(redis_client, settings) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        ({"type": "click", "payload": {}}, "type"),
        ({"type": "event"}, "payload"),
        ({"type": "event", "payload": _umami_payload(website="not-a-uuid")}, "payload.website"),
        ({"type": "event", "payload": _umami_payload(name="n" * 51)}, "payload.name"),
        ({"type": "event", "payload": _umami_payload(data=[1])}, "payload.data"),
        ({"type": "event", "payload": _umami_payload(url="mailbox")}, "payload.url"),
        ({"type": "event", "payload": _umami_payload(timestamp="soon")}, "payload.timestamp"),
    ],
)
async def test_invalid_umami_requests_get_umamis_error_and_nothing_is_enqueued(
    http: httpx.AsyncClient,
    redis_client: redis.Redis,
    settings: Settings,
    body: object,
    field: str,
) -> None:
    response = await _umami(http, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["message"], error["code"], error["status"]) == ("Bad request", "bad-request", 400)
    assert field in [detail["field"] for detail in error["detail"]]
    assert await stream_events(redis_client, settings) == []


async def test_a_bot_gets_umamis_beep_boop(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    response = await _umami(http, {"type": "event", "payload": _umami_payload()}, GOOGLEBOT)
    assert (response.status_code, response.json()) == (200, {"beep": "boop"})
    assert await stream_events(redis_client, settings) == []


async def test_the_umami_trackers_preflight_is_answered(http: httpx.AsyncClient) -> None:
    response = await http.request(
        "OPTIONS",
        "/api/send",
        headers={
            "origin": "https://shop.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type,x-umami-cache",
        },
    )
    assert response.status_code == 204
    assert "x-umami-cache" in response.headers["access-control-allow-headers"]
    assert "POST" in response.headers["access-control-allow-methods"]


async def test_the_website_uuid_is_the_site_id_in_canonical_form(
    http: httpx.AsyncClient, redis_client: redis.Redis, settings: Settings
) -> None:
    payload = _umami_payload(website=WEBSITE.upper())
    assert (await _umami(http, {"type": "event", "payload": payload})).status_code == 200
    [event] = await stream_events(redis_client, settings)
    assert event["site_id"] == WEBSITE
