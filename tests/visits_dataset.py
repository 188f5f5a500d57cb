"""Visits as trackers send them, for the known-answer tests of visits and dimensions:
sites in four time zones (one with a half-hour offset, one crossing a change of clocks),
visitors anonymous and signed in, visits separated by gaps just over and under 30
minutes, crossing local midnight, bounces, custom events (interactive or not) with
properties, several sources, campaigns, browsers and countries, events of the same
microsecond, and resent copies. The answer is computed from the stored events by
tests/rollup_answers.py."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from common.constants import EVENT_FIELD
from ingest.validation import validate_event

# site: time zone (None: not in the registry, counted in UTC)
SITES = {
    "utc.example": None,
    "kolkata.example": "Asia/Kolkata",
    "la.example": "America/Los_Angeles",
    "berlin.example": "Europe/Berlin",
}
# Around Los Angeles's change of clocks (2026-11-01 09:00 UTC) and many local midnights.
FIRST = datetime(2026, 10, 31, 12, 0, tzinfo=UTC)
REFERRERS = [None, "https://www.google.com/", "https://t.co/abc", "https://news.example.org/a"]
CAMPAIGNS = ["", "?utm_source=mail&utm_medium=email&utm_campaign=fall", "?utm_source=x"]
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:131.0) Gecko/20100101 Firefox/131.0",
]
COUNTRIES = [None, "DE", "IN", "US"]
GAPS = [
    timedelta(seconds=5),
    timedelta(minutes=10),
    timedelta(minutes=30),  # still the same visit
    timedelta(minutes=30, microseconds=1),  # a new one
    timedelta(hours=3),
    timedelta(0),  # the same microsecond
]


def generate(visitors: int, seed: int = 3) -> list[dict[str, Any]]:
    """Stream payloads (as the edge writes them), in time order, with resent copies."""
    received = int(FIRST.timestamp() * 1_000_000)
    return [validate_event(body, received) | edge for body, edge in requests(visitors, seed)]


def requests(
    visitors: int, seed: int = 3, first: datetime = FIRST
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The events as clients send them, in time order, with resent copies: (request body,
    what the edge adds: the User-Agent it passes on, a visitor id, a country)."""
    rng = random.Random(seed)
    events: list[tuple[datetime, dict[str, Any]]] = []
    users = [f"user-{n}" for n in range(visitors // 4 + 1)]
    for _ in range(visitors):
        site = rng.choice(list(SITES))
        who: dict[str, Any] = {}
        if rng.random() < 0.3:
            who["user_id"] = rng.choice(users)
        else:
            who["visitor_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        edge: dict[str, Any] = {"ua": rng.choice(AGENTS)}
        country = rng.choice(COUNTRIES)
        if country is not None:
            edge["country"] = country
        at = first + timedelta(seconds=rng.randrange(2 * 86_400))
        referrer, campaign = rng.choice(REFERRERS), rng.choice(CAMPAIGNS)
        for _ in range(rng.randint(1, 6)):
            body: dict[str, Any] = {"site_id": site, "timestamp": at.isoformat(), **who}
            if rng.random() < 0.75:
                path = f"/p/{rng.randrange(12)}"
                body |= {"event_type": "page_view", "url": f"https://{site}{path}{campaign}"}
            else:
                body |= {
                    "event_type": rng.choice(["signup", "click", "scroll"]),
                    "url": f"https://{site}/p/{rng.randrange(12)}",
                    "props": {"plan": rng.choice(["free", "pro"])},
                }
                if body["event_type"] == "scroll":
                    body["interactive"] = False
            if referrer is not None:
                body["referrer"] = referrer
            events.append((at, body | {"_edge": edge}))
            referrer, campaign = f"https://{site}/", ""
            at += rng.choice(GAPS)
    events.sort(key=lambda item: item[0])
    sent: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for _, body in events:
        edge = body.pop("_edge")
        body["event_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        sent.append((body, edge))
        if rng.random() < 0.02:  # a client's retry: the same event again
            sent.append(sent[-1])
    return sent


def stream_fields(payload: dict[str, Any]) -> dict[bytes, bytes]:
    return {EVENT_FIELD: orjson.dumps(payload)}


def distinct_events(payloads: list[dict[str, Any]]) -> int:
    return len({(p["site_id"], p["event_id"]) for p in payloads})
