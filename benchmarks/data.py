"""Benchmark traffic: realistic events, encoded as the ingest server would encode them."""

from __future__ import annotations

import itertools
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import orjson

from ingest.validation import validate_event

SITES = [f"site-{i}.example" for i in range(100)]
PATHS = [f"/section-{i % 20}/page-{i}" for i in range(1_000)]
PATH_WEIGHTS = [1 / (rank + 1) for rank in range(len(PATHS))]  # Zipf-like popularity
_CUMULATIVE = list(itertools.accumulate(PATH_WEIGHTS))


# Where visits come from: search engines, social sites, a campaign's links, other pages of
# the same site, nothing at all.
REFERRERS = [
    "https://www.google.com/",
    "https://www.google.de/",
    "https://www.bing.com/search?q=analytics",
    "https://duckduckgo.com/",
    "https://l.facebook.com/l.php?u=x",
    "https://t.co/abc123",
    "https://news.ycombinator.com/item?id=1",
    "https://www.reddit.com/r/selfhosted/comments/x/",
    "https://blog.example.net/2026/11/a-post",
    None,
    None,
    None,
]
CAMPAIGNS = ["", "?utm_source=newsletter&utm_medium=email&utm_campaign=winter", "?gclid=Cj0K"]
# Browsers' User-Agents, as the edge passes them on (see ingest/intake.py).
USER_AGENTS = [
    f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    f"Chrome/{version}.0.0.0 Safari/537.36"
    for version in range(110, 131)
] + [
    f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_{minor} like Mac OS X) AppleWebKit/605.1.15 "
    f"(KHTML, like Gecko) Version/17.{minor} Mobile/15E148 Safari/604.1"
    for minor in range(7)
]
COUNTRIES = ["US", "DE", "GB", "FR", "IN", "BR", "JP", None]


def request_body(rng: random.Random) -> dict[str, object]:
    """One event as a page's tracker sends it: mostly page views, two recent days, the
    page's URL (sometimes with campaign tags), its referrer and the screen's width."""
    moment = datetime.now(UTC) - timedelta(seconds=rng.randrange(2 * 86_400))
    site = rng.choice(SITES)
    path = rng.choices(PATHS, cum_weights=_CUMULATIVE)[0]
    body: dict[str, object] = {
        "site_id": site,
        "event_type": "page_view" if rng.random() < 0.9 else rng.choice(["click", "signup"]),
        "url": f"https://{site}{path}{rng.choice(CAMPAIGNS) if rng.random() < 0.2 else ''}",
        "screen_width": rng.choice([390, 820, 1440, 1920]),
        "timestamp": moment.isoformat(),
    }
    referrer = rng.choice(REFERRERS)
    if referrer is not None:
        body["referrer"] = referrer
    if rng.random() < 0.8:
        body["user_id"] = f"user-{rng.randrange(50_000)}"
    return body


def stream_payloads(count: int, seed: int = 1) -> tuple[list[bytes], int]:
    """`count` encoded stream payloads and how many of them are page views: visits as a
    tracker would send them, in time order (see `visit_events`)."""
    rng = random.Random(seed)
    received_at = time.time_ns() // 1000
    payloads = []
    views = 0
    for body, extra in visit_events(rng, count):
        event = validate_event(body, received_at) | extra
        views += event["event_type"] == "page_view"
        payloads.append(orjson.dumps(event))
    return payloads, views


SITE_WEIGHTS = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(SITES))))
VISIT_WINDOW_S = 7_200  # visits start in the two hours up to an hour ago
MEAN_PAGES = 3
MEAN_GAP_S = 60
RETURN_SHARE = 0.05  # visits followed by another of the same visitor after a long gap
CUSTOM_EVENT_SHARE = 0.1  # page views followed by a custom event


def visit_events(
    rng: random.Random, count: int
) -> list[tuple[dict[str, object], dict[str, object]]]:
    """`count` events of visits, in time order: (request body, what the edge adds). Sites
    and pages are Zipf-like in popularity; a visit is a geometric number of page views a
    minute or so apart, some with a custom event, from one referrer or campaign, one
    browser, one country; four in five visitors are anonymous (a visitor id, as the edge
    computes it), the rest signed in (a user_id, of 50,000)."""
    now = datetime.now(UTC) - timedelta(hours=1)
    events: list[tuple[float, dict[str, object], dict[str, object]]] = []
    while len(events) < count:
        site = rng.choices(SITES, cum_weights=SITE_WEIGHTS)[0]
        edge: dict[str, object] = {"ua": rng.choice(USER_AGENTS)}
        country = rng.choice(COUNTRIES)
        if country is not None:
            edge["country"] = country
        who: dict[str, object] = {}
        if rng.random() < 0.8:
            edge["visitor_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        else:
            who["user_id"] = f"user-{rng.randrange(50_000)}"
        width = rng.choice([390, 820, 1440, 1920])
        moment = -rng.uniform(0, VISIT_WINDOW_S)
        referrer = rng.choice(REFERRERS)
        campaign = rng.choice(CAMPAIGNS) if rng.random() < 0.2 else ""
        while True:  # one visit, then perhaps a return after a long gap
            for page in range(1 + int(rng.expovariate(1 / (MEAN_PAGES - 1)))):
                path = rng.choices(PATHS, cum_weights=_CUMULATIVE)[0]
                body: dict[str, object] = {
                    "site_id": site,
                    "event_type": "page_view",
                    "url": f"https://{site}{path}{campaign if page == 0 else ''}",
                    "screen_width": width,
                    **who,
                }
                if referrer is not None:
                    body["referrer"] = referrer
                events.append((moment, body, edge))
                if rng.random() < CUSTOM_EVENT_SHARE:
                    custom = body | {"event_type": rng.choice(["click", "signup"])}
                    events.append((moment + rng.uniform(1, 20), custom, edge))
                referrer = f"https://{site}{path}"
                moment += rng.expovariate(1 / MEAN_GAP_S)
            if rng.random() >= RETURN_SHARE:
                break
            moment += rng.uniform(31 * 60, 90 * 60)
            referrer, campaign = None, ""
    events.sort(key=lambda item: item[0])
    chosen = []
    for moment, body, edge in events[:count]:
        chosen.append(((body | {"timestamp": (now + timedelta(seconds=moment)).isoformat()}), edge))
    return chosen
