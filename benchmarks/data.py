"""Benchmark traffic: realistic events, encoded as the ingest server would encode them."""

from __future__ import annotations

import itertools
import random
import time
from datetime import UTC, datetime, timedelta

import orjson

from ingest.validation import validate_event

SITES = [f"site-{i}.example" for i in range(100)]
PATHS = [f"/section-{i % 20}/page-{i}" for i in range(1_000)]
PATH_WEIGHTS = [1 / (rank + 1) for rank in range(len(PATHS))]  # Zipf-like popularity
_CUMULATIVE = list(itertools.accumulate(PATH_WEIGHTS))


def request_body(rng: random.Random) -> dict[str, object]:
    """One event as a client sends it: mostly page views, two recent days."""
    moment = datetime.now(UTC) - timedelta(seconds=rng.randrange(2 * 86_400))
    body: dict[str, object] = {
        "site_id": rng.choice(SITES),
        "event_type": "page_view" if rng.random() < 0.9 else rng.choice(["click", "signup"]),
        "path": rng.choices(PATHS, cum_weights=_CUMULATIVE)[0],
        "timestamp": moment.isoformat(),
    }
    if rng.random() < 0.8:
        body["user_id"] = f"user-{rng.randrange(50_000)}"
    return body


def stream_payloads(count: int, seed: int = 1) -> tuple[list[bytes], int]:
    """`count` encoded stream payloads and how many of them are page views."""
    rng = random.Random(seed)
    received_at = time.time_ns() // 1000
    payloads = []
    views = 0
    for _ in range(count):
        event = validate_event(request_body(rng), received_at)
        views += event["event_type"] == "page_view"
        payloads.append(orjson.dumps(event))
    return payloads, views
