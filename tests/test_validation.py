"""Unit tests of request validation: no I/O."""

from __future__ import annotations

import json
import string
import uuid
from datetime import UTC

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.constants import MAX_EVENT_TYPE, MAX_PATH, MAX_SITE_ID, MAX_USER_ID
from ingest.ids import uuid7
from ingest.validation import (
    InvalidEvent,
    TimeWindow,
    _common_batch,
    _common_event,
    parse_event,
    validate_event,
)
from tests.test_ingest_properties import events

RECEIVED = 1_700_000_000_123_456
WINDOW = TimeWindow(max_future_s=3_600, max_age_s=86_400 * 365)


def parse(payload: object) -> dict[str, object]:
    return parse_event(orjson.dumps(payload), RECEIVED)


def fields_at_fault(payload: object) -> list[str]:
    with pytest.raises(InvalidEvent) as caught:
        parse(payload)
    return [error.field for error in caught.value.errors]


def test_minimal_event_gets_defaults() -> None:
    event = parse({"site_id": "s", "event_type": "page_view"})
    assert event["path"] == "/"
    assert event["user_id"] is None
    assert event["timestamp"] == RECEIVED
    assert event["received_at"] == RECEIVED
    assert uuid.UUID(str(event["event_id"])).version == 7


def test_full_event_is_normalised() -> None:
    client_id = "6F9619FF-8B86-D011-B42D-00CF4FC964FF"
    event = parse(
        {
            "site_id": "site",
            "event_type": "signup",
            "path": "/pricing",
            "user_id": "u-1",
            "timestamp": "2024-03-01T01:30:00+02:00",
            "event_id": client_id,
            "unknown_field": [1, 2],
        }
    )
    assert event == {
        "event_id": client_id.lower(),
        "site_id": "site",
        "event_type": "signup",
        "path": "/pricing",
        "user_id": "u-1",
        "timestamp": 1_709_249_400_000_000,  # 2024-02-29T23:30:00Z
        "received_at": RECEIVED,
    }


def test_zulu_suffix_and_fractions_are_accepted() -> None:
    event = parse({"site_id": "s", "event_type": "e", "timestamp": "2024-01-01T00:00:00.25Z"})
    assert event["timestamp"] == 1_704_067_200_250_000


def test_empty_user_id_means_no_user() -> None:
    assert parse({"site_id": "s", "event_type": "e", "user_id": ""})["user_id"] is None


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({}, ["site_id", "event_type"]),
        ({"site_id": "", "event_type": "e"}, ["site_id"]),
        ({"site_id": 5, "event_type": "e"}, ["site_id"]),
        ({"site_id": "s", "event_type": ["page_view"]}, ["event_type"]),
        ({"site_id": "s" * (MAX_SITE_ID + 1), "event_type": "e"}, ["site_id"]),
        ({"site_id": "s", "event_type": "e" * (MAX_EVENT_TYPE + 1)}, ["event_type"]),
        ({"site_id": "s", "event_type": "e", "path": "/" * (MAX_PATH + 1)}, ["path"]),
        ({"site_id": "s", "event_type": "e", "path": 3}, ["path"]),
        ({"site_id": "s", "event_type": "e", "user_id": "u" * (MAX_USER_ID + 1)}, ["user_id"]),
        ({"site_id": "s", "event_type": "e", "user_id": 42}, ["user_id"]),
        ({"site_id": "s\x00", "event_type": "e"}, ["site_id"]),
        ({"site_id": "s", "event_type": "e", "timestamp": "2024-01-01T00:00:00"}, ["timestamp"]),
        ({"site_id": "s", "event_type": "e", "timestamp": "2024-01-01"}, ["timestamp"]),
        ({"site_id": "s", "event_type": "e", "timestamp": "yesterday"}, ["timestamp"]),
        ({"site_id": "s", "event_type": "e", "timestamp": 1700000000}, ["timestamp"]),
        (
            {"site_id": "s", "event_type": "e", "timestamp": "9999-12-31T23:59:59-23:00"},
            ["timestamp"],
        ),
        (  # before year 1 once in UTC
            {"site_id": "s", "event_type": "e", "timestamp": "0001-01-01T00:30:00+01:00"},
            ["timestamp"],
        ),
        ({"site_id": "s", "event_type": "e", "event_id": "not-a-uuid"}, ["event_id"]),
        ({"site_id": "s", "event_type": "e", "event_id": 12}, ["event_id"]),
        ({"event_type": 1, "user_id": 2, "path": 3}, ["site_id", "event_type", "path", "user_id"]),
    ],
)
def test_each_bad_field_is_named(payload: dict[str, object], fields: list[str]) -> None:
    assert fields_at_fault(payload) == fields


@pytest.mark.parametrize(
    "body", [b"", b"{", b"[1]", b'"text"', b"null", b"\xff\xfe", b'{"a":"\\ud800"}']
)
def test_a_body_that_is_not_a_json_object_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(body, RECEIVED)
    assert [error.field for error in caught.value.errors] == ["body"]


def test_uuid7_is_time_ordered_and_valid() -> None:
    times = [RECEIVED + step * 400 for step in range(1000)]  # 0.4 ms apart, some share one
    ids = [uuid7(moment) for moment in times]
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert len(set(ids)) == len(ids)
    # The 48-bit millisecond time leads.
    assert [u.int >> 80 for u in parsed] == [moment // 1000 for moment in times]


# --- what a page's tracker adds -------------------------------------------------------

PAGE = {"site_id": "s", "event_type": "page_view"}


def test_a_trackers_fields_are_kept_and_the_path_left_to_the_url() -> None:
    event = parse(
        {
            **PAGE,
            "url": "https://example.com/a?utm_source=x",
            "referrer": "https://www.google.com/",
            "screen_width": 390,
            "props": {"plan": "pro", "seats": 3, "ratio": 0.5, "trial": True},
            "interactive": False,
        }
    )
    assert event["url"] == "https://example.com/a?utm_source=x"
    assert "path" not in event  # the processor takes it from the url
    assert event["referrer"] == "https://www.google.com/"
    assert event["screen_width"] == 390
    assert event["props"] == {"plan": "pro", "seats": "3", "ratio": "0.5", "trial": "true"}
    assert event["interactive"] is False


def test_an_explicit_path_wins_over_the_urls_and_absent_fields_stay_out() -> None:
    event = parse({**PAGE, "url": "/app?x=1", "path": "/app#/settings", "interactive": True})
    assert (event["url"], event["path"]) == ("/app?x=1", "/app#/settings")
    assert not {"referrer", "screen_width", "props", "interactive"} & set(event)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"url": "example.com/page"}, "url"),  # neither absolute nor a path
        ({"url": "data:text/html,hi"}, "url"),
        ({"url": "JavaScript:alert(1)"}, "url"),
        ({"url": "https://x/" + "a" * 2000}, "url"),
        ({"url": 5}, "url"),
        ({"referrer": "r" * 2001}, "referrer"),
        ({"screen_width": 0}, "screen_width"),
        ({"screen_width": 1.5}, "screen_width"),
        ({"screen_width": True}, "screen_width"),
        ({"screen_width": "390"}, "screen_width"),
        ({"props": "a=b"}, "props"),
        ({"props": {f"k{i}": "v" for i in range(31)}}, "props"),
        ({"props": {"k" * 301: "v"}}, "props"),
        ({"props": {"k": "v" * 2001}}, "props"),
        ({"props": {"": "v"}}, "props"),
        ({"props": {"k": {"nested": 1}}}, "props"),
        ({"props": {"k": None}}, "props"),
        ({"props": {"k": "a\x00b"}}, "props"),
        ({"interactive": "no"}, "interactive"),
    ],
)
def test_a_trackers_fields_are_checked(changes: dict[str, object], field: str) -> None:
    assert fields_at_fault({**PAGE, **changes}) == [field]


def test_other_schemes_than_the_webs_are_pages_too() -> None:
    assert parse({**PAGE, "url": "android-app://com.example/home"})["url"].startswith("android")


# --- the common way (msgspec) and the detailed way agree ------------------------------

ASCII = st.text(alphabet=string.ascii_letters + string.digits + "/-_.:?=&", min_size=1, max_size=30)
common_events = st.fixed_dictionaries(
    {"site_id": ASCII, "event_type": st.just("page_view") | ASCII},
    optional={
        "path": ASCII.map(lambda p: "/" + p),
        "user_id": ASCII,
        "url": ASCII.map(lambda p: "https://a.example/" + p),
        "referrer": ASCII,
        "screen_width": st.integers(min_value=1, max_value=4000),
        "interactive": st.booleans(),
        "timestamp": st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
        "event_id": st.uuids().map(str),
    },
)


@settings(max_examples=400, deadline=None)
@given(body=st.one_of(common_events, events).map(lambda event: json.dumps(event).encode()))
def test_the_common_way_makes_the_event_the_detailed_way_makes(body: bytes) -> None:
    common = _common_event(body, RECEIVED, WINDOW)
    try:
        detailed: dict[str, object] | None = validate_event(orjson.loads(body), RECEIVED, WINDOW)
    except (orjson.JSONDecodeError, InvalidEvent):
        detailed = None
    if common is None:
        return  # the detailed way decides alone
    assert detailed is not None, body
    if "event_id" not in orjson.loads(body):  # each way made an id of its own
        assert common.pop("event_id") != detailed.pop("event_id")
    assert common == detailed


def test_a_trackers_common_event_goes_the_common_way() -> None:
    body = orjson.dumps(
        {
            "site_id": "shop.example",
            "event_type": "page_view",
            "url": "https://shop.example/pricing?utm_source=news",
            "referrer": "https://www.google.com/",
            "screen_width": 1440,
        }
    )
    assert _common_event(body, RECEIVED, WINDOW) is not None


@settings(max_examples=200, deadline=None)
@given(batch=st.lists(st.one_of(common_events, common_events, events), min_size=1, max_size=5))
def test_a_batch_of_common_events_is_made_the_way_each_would_be(batch: list[dict]) -> None:
    body = json.dumps(batch).encode()
    common = _common_batch(body, RECEIVED, 100, WINDOW)
    if common is None:
        return  # the detailed way decides alone
    assert len(common) == len(batch)
    for made, sent in zip(common, batch, strict=True):
        detailed = validate_event(sent, RECEIVED, WINDOW)  # raises if the common way erred
        if "event_id" not in sent:
            assert made.pop("event_id") != detailed.pop("event_id")
        assert made == detailed


def test_a_batch_with_one_uncommon_event_goes_the_detailed_way() -> None:
    good = {"site_id": "s", "event_type": "page_view"}
    body = orjson.dumps([good, {**good, "site_id": "caf\u00e9"}])
    assert _common_batch(body, RECEIVED, 100, WINDOW) is None
    assert _common_batch(orjson.dumps([good, good]), RECEIVED, 100, WINDOW) is not None
