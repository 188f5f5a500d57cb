"""Generated events with totals computed independently of the service."""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta, timezone

# Key of the User-Agent an event is to be sent with; not part of the body.
USER_AGENT_KEY = "_user_agent"

OFFSETS = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-7, minutes=-30))]


@dataclasses.dataclass
class Expected:
    views: Counter[tuple[str, date]]
    users: dict[tuple[str, date], set[object]]  # user ids, and ("visitor", User-Agent)
    paths: Counter[tuple[str, date, str]]
    stored_events: int

    def top_paths(self, site_id: str, day: date, limit: int = 10) -> list[dict[str, object]]:
        counts = [(p, n) for (s, d, p), n in self.paths.items() if (s, d) == (site_id, day)]
        counts.sort(key=lambda item: (-item[1], item[0]))
        return [{"path": p, "views": n} for p, n in counts[:limit]]

    def site_days(self) -> set[tuple[str, date]]:
        return set(self.views) | set(self.users)


def generate(
    count: int, seed: int = 7, resend_share: float = 0.03
) -> tuple[list[dict[str, object]], Expected]:
    """`count` distinct events over several sites, days, paths, users and types, plus resends.

    Every event carries its own event_id, so that a resent copy (as a client retrying would
    send) is known to be the same event and must be counted once.
    """
    rng = random.Random(seed)
    sites = [f"site-{i}" for i in range(6)]
    days = [date(2024, 3, 9) + timedelta(days=i) for i in range(4)]
    paths = [f"/page/{i}" for i in range(80)]
    path_weights = [1 / (i + 1) for i in range(len(paths))]  # Zipf-like popularity
    users = [f"user-{i}" for i in range(900)]

    events: list[dict[str, object]] = []
    expected = Expected(Counter(), defaultdict(set), Counter(), stored_events=count)
    for _ in range(count):
        site = rng.choice(sites)
        day = rng.choice(days)
        moment = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(
            seconds=rng.randrange(86_400), microseconds=rng.randrange(1_000_000)
        )
        event_type = rng.choices(["page_view", "click", "signup"], weights=[80, 15, 5])[0]
        path = rng.choices(paths, weights=path_weights)[0]
        user = rng.choice(users) if rng.random() < 0.85 else None
        event: dict[str, object] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "site_id": site,
            "event_type": event_type,
            "path": path,
            # The same instant written with various offsets: the day is its UTC date.
            "timestamp": moment.astimezone(rng.choice(OFFSETS)).isoformat(),
        }
        if user is not None:
            event["user_id"] = user
        events.append(event)
        if event_type == "page_view":
            expected.views[(site, day)] += 1
            expected.paths[(site, day, path)] += 1
        if user is not None:
            expected.users[(site, day)].add(user)
        else:
            # Anonymous: counted as a visitor by the hash of IP and User-Agent; the test
            # sends this event with this browser's User-Agent (kept out of the body).
            browser = f"Mozilla/5.0 (test browser {rng.randrange(40)})"
            event[USER_AGENT_KEY] = browser
            expected.users[(site, day)].add(("visitor", browser))
    resent = rng.sample(events, int(count * resend_share))
    return events + resent, expected
