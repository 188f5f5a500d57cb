"""Locust load test of the ingest API: a realistic mix of beacon traffic.

What one simulated user does, chosen per request by weight (defaults; each is overridable
through the environment variable named, and a weight of 0 drops that request kind):

- page views, ``POST /event`` (``LOADTEST_PAGE_VIEW_WEIGHT``, 80): one ``page_view`` on one
  of 50 sites, one of 1,000 paths with Zipf-like popularity (path of rank r weighs
  1/(r+1)), one of 100,000 users, or no ``user_id`` for about 20% of events;
- custom events, ``POST /event`` (``LOADTEST_CUSTOM_WEIGHT``, 15): ``click``, ``signup`` or
  ``download``, drawn the same way;
- batches, ``POST /events`` (``LOADTEST_BATCH_WEIGHT``, 3): a JSON array of 1 to 100 such
  events (uniform size, 85% page views);
- reads, ``GET /stats?site_id=...&date=...`` (``LOADTEST_STATS_WEIGHT``, 2) for one of the
  last three UTC days.

Every event carries a ``timestamp`` spread uniformly over the last three days, ISO-8601
with a UTC offset, never in the future. A request counts as failed unless it gets its
documented answer: ``202 {"status":"accepted","event_id":...}`` for one event,
``202 {"accepted": n, "event_ids": [...], "rejected": []}`` for a batch of n, and
``200`` with ``site_id, date, total_views, unique_users, top_paths`` for stats.

Users do not wait between requests: each sends its next request as soon as the last is
answered, so the user count sets the concurrency and the run drives as much load as the
machine allows. ``LOADTEST_USER_RPS=<n>`` instead paces each user at n requests per
second (``constant_throughput``), for a fixed offered rate.

Besides Locust's requests per second, the run reports events per second (single events
plus batch sizes) under the summary: sent (including requests still in flight when the
run stopped) and accepted (answered as documented). Workers started with ``--processes``
report their counts to the master, which prints the total.

Run it with ``make loadtest`` (own virtualenv, headless, reports under loadtest/reports/),
or point it at any deployment by hand::

    .venv-loadtest/bin/locust -f loadtest/locustfile.py --headless \\
        --host https://ingest.example.net -u 50 -r 50 -t 1m
"""

from __future__ import annotations

import logging
import os
import random
from bisect import bisect
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any, ClassVar

import orjson
from locust import constant, constant_throughput, events
from locust.contrib.fasthttp import FastHttpUser, ResponseContextManager
from locust.env import Environment
from locust.runners import WorkerRunner

SITES = tuple(f"site-{n:02d}.example" for n in range(50))
PATHS = ("/", *(f"/page/{rank}" for rank in range(1, 1000)))
USERS = 100_000
ANONYMOUS_SHARE = 0.2
CUSTOM_EVENT_TYPES = ("click", "signup", "download")
BATCH_PAGE_VIEW_SHARE = 0.85
MAX_BATCH = 100
SPREAD = timedelta(days=3)
STATS_DAYS = 3
STATS_KEYS = frozenset(("site_id", "date", "total_views", "unique_users", "top_paths"))
JSON_HEADERS = {"content-type": "application/json"}

# Zipf-like popularity: the path of rank r weighs 1/(r+1). Cumulative weights once, then a
# bisect per draw (what random.choices does, without its per-call setup).
_PATH_CUMULATIVE = tuple(accumulate(1 / (rank + 1) for rank in range(len(PATHS))))
_PATH_TOTAL = _PATH_CUMULATIVE[-1]
_SPREAD_SECONDS = SPREAD.total_seconds()


def _weight(name: str, default: int) -> int:
    value = int(os.environ.get(name, default))
    if value < 0:
        raise ValueError(f"{name} must be 0 or more, not {value}")
    return value


PAGE_VIEW_WEIGHT = _weight("LOADTEST_PAGE_VIEW_WEIGHT", 80)
CUSTOM_WEIGHT = _weight("LOADTEST_CUSTOM_WEIGHT", 15)
BATCH_WEIGHT = _weight("LOADTEST_BATCH_WEIGHT", 3)
STATS_WEIGHT = _weight("LOADTEST_STATS_WEIGHT", 2)
USER_RPS = float(os.environ.get("LOADTEST_USER_RPS", "0"))


def make_event(event_type: str, now: datetime) -> dict[str, Any]:
    """One event as a client would send it; ``now`` bounds its timestamp from above."""
    rnd = random.random
    event: dict[str, Any] = {
        "site_id": SITES[int(rnd() * len(SITES))],
        "event_type": event_type,
        "path": PATHS[bisect(_PATH_CUMULATIVE, rnd() * _PATH_TOTAL)],
        "timestamp": (now - timedelta(seconds=rnd() * _SPREAD_SECONDS)).isoformat(),
    }
    if rnd() >= ANONYMOUS_SHARE:
        event["user_id"] = f"u-{int(rnd() * USERS)}"
    return event


class EventTally:
    """Events sent and accepted by this process since its last report.

    In a single process (or the master, which adds up its workers' reports) it is the
    run's total; a worker hands its counts to the master and starts again from zero.
    """

    def __init__(self) -> None:
        self.sent = 0
        self.accepted = 0

    def take(self) -> tuple[int, int]:
        counts = self.sent, self.accepted
        self.sent = self.accepted = 0
        return counts


# One per process: Locust runs every user of a process in that process's greenlets.
tally = EventTally()


def _json_body(response: ResponseContextManager) -> Any:
    try:
        return orjson.loads(response.content or b"")
    except orjson.JSONDecodeError:
        return None


class BeaconUser(FastHttpUser):
    """A stream of beacon traffic from many visitors of many sites (see the module doc)."""

    wait_time = constant_throughput(USER_RPS) if USER_RPS > 0 else constant(0)
    # A request without an answer within this time is a failure, not a stalled user.
    network_timeout = 10.0
    connection_timeout = 10.0

    def send_page_view(self) -> None:
        self._send_one("page_view", "/event [page_view]")

    def send_custom_event(self) -> None:
        event_type = CUSTOM_EVENT_TYPES[int(random.random() * len(CUSTOM_EVENT_TYPES))]
        self._send_one(event_type, "/event [custom]")

    def send_batch(self) -> None:
        size = random.randint(1, MAX_BATCH)
        now = datetime.now(UTC)
        rnd = random.random
        batch = [
            make_event(
                "page_view"
                if rnd() < BATCH_PAGE_VIEW_SHARE
                else CUSTOM_EVENT_TYPES[int(rnd() * len(CUSTOM_EVENT_TYPES))],
                now,
            )
            for _ in range(size)
        ]
        tally.sent += size
        with self.client.post(
            "/events",
            data=orjson.dumps(batch),
            headers=JSON_HEADERS,
            name="/events [batch]",
            catch_response=True,
        ) as response:
            if response.status_code != 202:
                response.failure(f"status {response.status_code}")
                return
            body = _json_body(response)
            if not isinstance(body, dict):
                response.failure("answer is not a JSON object")
            elif body.get("rejected"):
                response.failure("events rejected")
            elif body.get("accepted") != size or len(body.get("event_ids") or ()) != size:
                response.failure("accepted count or event_ids differ from the batch size")
            else:
                tally.accepted += size

    def read_stats(self) -> None:
        day = (datetime.now(UTC) - timedelta(days=random.randrange(STATS_DAYS))).date()
        site_id = SITES[int(random.random() * len(SITES))]
        with self.client.get(
            f"/stats?site_id={site_id}&date={day.isoformat()}",
            name="/stats",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
                return
            body = _json_body(response)
            if not isinstance(body, dict) or not STATS_KEYS <= body.keys():
                response.failure("answer lacks stats keys")

    def _send_one(self, event_type: str, name: str) -> None:
        tally.sent += 1
        with self.client.post(
            "/event",
            data=orjson.dumps(make_event(event_type, datetime.now(UTC))),
            headers=JSON_HEADERS,
            name=name,
            catch_response=True,
        ) as response:
            if response.status_code != 202:
                response.failure(f"status {response.status_code}")
                return
            body = _json_body(response)
            if (
                not isinstance(body, dict)
                or body.get("status") != "accepted"
                or not body.get("event_id")
            ):
                response.failure("answer is not {status: accepted, event_id}")
            else:
                tally.accepted += 1

    # Weight 0 leaves a kind out (Locust turns this into its list of tasks).
    tasks: ClassVar = {
        task: weight
        for task, weight in (
            (send_page_view, PAGE_VIEW_WEIGHT),
            (send_custom_event, CUSTOM_WEIGHT),
            (send_batch, BATCH_WEIGHT),
            (read_stats, STATS_WEIGHT),
        )
        if weight > 0
    }


@events.report_to_master.add_listener
def _report_tally(client_id: str, data: dict[str, Any], **kwargs: Any) -> None:
    data["events_sent"], data["events_accepted"] = tally.take()


@events.worker_report.add_listener
def _add_worker_tally(client_id: str, data: dict[str, Any], **kwargs: Any) -> None:
    tally.sent += data.get("events_sent", 0)
    tally.accepted += data.get("events_accepted", 0)


@events.init.add_listener
def _on_init(environment: Environment, **kwargs: Any) -> None:
    if not BeaconUser.tasks:
        raise ValueError("every LOADTEST_*_WEIGHT is 0: nothing to send")
    if isinstance(environment.runner, WorkerRunner):
        return

    def report_event_rate(exit_code: int, **kwargs: Any) -> None:
        # Fired after Locust prints its summary: the events line goes right under it, on
        # the same plain logger. The window is the one of Locust's own requests/s.
        total = environment.stats.total
        seconds = (total.last_request_timestamp or total.start_time) - total.start_time
        per_second = 1 / seconds if seconds > 0 else 0.0
        logging.getLogger("locust.stats_logger").info(
            "Events: %d sent, %d accepted in %.1f s: %.1f events/s sent, %.1f events/s "
            "accepted (%.1f requests/s)",
            tally.sent,
            tally.accepted,
            seconds,
            tally.sent * per_second,
            tally.accepted * per_second,
            total.num_requests * per_second,
        )

    environment.events.quit.add_listener(report_event_rate)
