"""Property-based: whatever a client sends, the server never answers 5xx and never
enqueues an event that the processor could not store."""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from common.config import Settings
from processor.decode import decode_entries

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
timestamps = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),  # no offset
    st.text(alphabet=string.digits + "-:TZ+. ", max_size=30),
)
field_values = st.one_of(
    json_values, st.text(max_size=300), st.just(""), st.text(alphabet="\x00a", max_size=3)
)
events = st.fixed_dictionaries(
    {},
    optional={
        "site_id": field_values,
        "event_type": field_values | st.just("page_view"),
        "path": field_values,
        "user_id": field_values,
        "timestamp": timestamps | field_values,
        "event_id": st.uuids().map(str) | field_values,
        "url": st.sampled_from(["https://a.example/p?utm_source=x", "/p", "data:x"]) | field_values,
        "referrer": st.just("https://www.google.com/") | field_values,
        "screen_width": st.integers(min_value=-1, max_value=100_001) | field_values,
        "props": st.dictionaries(st.text(max_size=10), json_scalars, max_size=3) | field_values,
        "interactive": field_values,
        "extra": json_values,
    },
)
bodies = st.one_of(
    events.map(lambda e: json.dumps(e).encode()),
    st.lists(events, max_size=4).map(lambda e: json.dumps(e).encode()),
    st.lists(events, max_size=4).map(lambda e: "\n".join(json.dumps(x) for x in e).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=120),
)


@pytest.fixture
def server(
    settings: Settings, start_server: Callable[[Settings], str]
) -> Iterator[tuple[httpx.Client, redis.Redis]]:
    client = redis.Redis.from_url(settings.redis_url)
    with httpx.Client(base_url=start_server(settings), timeout=10) as http:
        yield http, client
    for key in client.scan_iter(match=f"{settings.stream_key}*"):
        client.delete(key)
    client.close()


@hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=bodies,
    route=st.sampled_from(["/event", "/events"]),
    content_type=st.sampled_from(
        ["application/json", "text/plain;charset=UTF-8", "application/x-ndjson"]
    ),
)
def test_no_input_gets_a_5xx_or_enqueues_an_unstorable_event(
    server: tuple[httpx.Client, redis.Redis],
    settings: Settings,
    body: bytes,
    route: str,
    content_type: str,
) -> None:
    http, client = server
    before = client.xlen(settings.stream_key)
    response = http.post(route, content=body, headers={"content-type": content_type})
    assert response.status_code in (202, 400), response.text
    added = client.xlen(settings.stream_key) - before
    if response.status_code == 400:
        assert added == 0
        assert response.json()["error"] in ("invalid_event", "invalid_batch")
        return
    answer = response.json()
    expected = 1 if route == "/event" else answer["accepted"]
    assert added == expected
    entries = client.xrevrange(settings.stream_key, count=added) if added else []
    batch = decode_entries(list(entries))
    assert batch.rejected == {} and len(batch.rows) == added


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    params=st.dictionaries(
        st.sampled_from(["site_id", "event_type", "path", "user_id", "timestamp", "event_id", "x"]),
        st.text(max_size=60),
        max_size=7,
    )
)
def test_no_pixel_query_gets_a_5xx_or_enqueues_an_unstorable_event(
    server: tuple[httpx.Client, redis.Redis], settings: Settings, params: dict[str, str]
) -> None:
    http, client = server
    before = client.xlen(settings.stream_key)
    response = http.get("/event.gif", params=params)
    assert response.status_code in (200, 400), response.text
    added = client.xlen(settings.stream_key) - before
    assert added == (1 if response.status_code == 200 else 0)
    if added:
        assert decode_entries(list(client.xrevrange(settings.stream_key, count=1))).rejected == {}
