"""What happens to validated events at the edge, in order: each step enriches or drops.

1. bots: known crawlers, monitors and previewers are dropped (answered "ignored"), counted;
   so are events the registry does not admit (SITES_MODE=registered, ingest/admission.py);
   a site over its rate limit fails the request (429);
2. visitors: an event without a user_id gets the salted visitor hash of its day, and
   every event its client's country (the address itself goes no further);
3. client info: the User-Agent goes on (the processor derives browser, OS and device
   from it), as "user_agent" to be stored where STORE_CLIENT_INFO is on, else as "ua";
   the IP address goes on only where it is on;
4. the events are appended to the stream; the request is answered once Redis has them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable
from typing import Any

from common.redis_clients import REDIS_FAILURES
from common.shards import shard_number
from ingest.admission import Admission
from ingest.backlog import BacklogMonitor
from ingest.bots import is_bot
from ingest.geo import CountryLookup
from ingest.stream_writer import StreamUnavailable, StreamWriter
from ingest.visitors import SaltNotLoaded, VisitorHasher


class Overloaded(Exception):
    """The processors are too far behind: the client should retry later."""


@dataclasses.dataclass(frozen=True, slots=True)
class Intake:
    # The first shard's: it also carries the ledger's counts of ignored and rejected events.
    writer: StreamWriter
    visitors: VisitorHasher
    backlog: BacklogMonitor
    admission: Admission
    countries: CountryLookup
    store_client_info: bool
    # One writer per stream shard (common/shards.py), the first being `writer`.
    shards: tuple[StreamWriter, ...] = ()

    def submit(
        self, events: list[dict[str, Any]], ip: str, user_agent: str, origin: bytes | None
    ) -> Awaitable[None] | None:
        """Enrich and append the events: the awaitable is done once Redis has them; None
        when all were ignored. Events the registry does not admit are taken out of
        `events`. Not a coroutine on the common path, so that a request suspends on the
        write itself and nothing else."""
        if is_bot(user_agent):
            self.writer.count_ignored(events, "bot")
            return None
        if self.admission.checks_events and self._admit(events, origin) is None:
            return None
        try:
            return self._append(events, ip, user_agent)
        except SaltNotLoaded:  # once per process and day
            return self._append_after_loading_salts(events, ip, user_agent)

    def _admit(
        self, events: list[dict[str, Any]], origin: bytes | None
    ) -> list[dict[str, Any]] | None:
        """Take the events the registry does not admit out of `events` (counted as
        ignored); None if none is left. RateLimited if a site is over its limit."""
        ignored = self.admission.sort(events, origin)
        if ignored:
            dropped: set[int] = set()
            for reason, some in ignored.items():
                self.writer.count_ignored(some, reason)
                dropped.update(map(id, some))
            events[:] = [event for event in events if id(event) not in dropped]
            if not events:
                return None
        self.admission.check_sites(events)
        return events

    async def _append_after_loading_salts(
        self, events: list[dict[str, Any]], ip: str, user_agent: str
    ) -> None:
        anonymous = [event["timestamp"] for event in events if event["user_id"] is None]
        try:
            await self.visitors.load(anonymous)
        except REDIS_FAILURES as exc:
            raise StreamUnavailable(repr(exc)) from exc
        await self._append(events, ip, user_agent)

    def _append(self, events: list[dict[str, Any]], ip: str, user_agent: str) -> Awaitable[None]:
        visitor_id = self.visitors.visitor_id
        country = self.countries.country_of(ip)
        for event in events:
            if event["user_id"] is None:
                event["visitor_id"] = visitor_id(
                    event["timestamp"], event["site_id"], ip, user_agent
                )
            if country is not None:
                event["country"] = country
        if self.store_client_info:
            for event in events:
                event["client_ip"] = ip or None
                event["user_agent"] = user_agent or None
        elif user_agent:
            for event in events:
                event["ua"] = user_agent
        writer = self.writer
        if self.shards:  # a whole request to one shard: its first event's site and visitor
            first = events[0]
            visitor = first["user_id"] or first.get("visitor_id")
            writer = self.shards[shard_number(first["site_id"], visitor, len(self.shards))]
        return writer.append(events)
