"""What happens to validated events at the edge, in order: each step enriches or drops.

1. bots: known crawlers, monitors and previewers are dropped (answered "ignored"), counted;
2. visitors: an event without a user_id gets the day's salted visitor hash;
3. client info: the IP address and User-Agent are kept only where configured;
4. the events are appended to the stream; the request is answered once Redis has them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable
from typing import Any

import orjson
from redis.exceptions import RedisError

from ingest.backlog import BacklogMonitor
from ingest.bots import is_bot
from ingest.client import ClientInfo
from ingest.stream_writer import StreamUnavailable, StreamWriter
from ingest.visitors import VisitorHasher


class Overloaded(Exception):
    """The processors are too far behind: the client should retry later."""


@dataclasses.dataclass(frozen=True, slots=True)
class Intake:
    writer: StreamWriter
    visitors: VisitorHasher
    backlog: BacklogMonitor
    store_client_info: bool

    def check_capacity(self) -> None:
        if self.backlog.exceeded:
            raise Overloaded

    def submit(self, events: list[dict[str, Any]], client: ClientInfo) -> Awaitable[None] | None:
        """Enrich and append the events: the awaitable is done once Redis has them; None
        when they were ignored (a bot sent them). Not a coroutine on the common path, so
        that a request suspends on the write itself and nothing else."""
        if is_bot(client.user_agent):
            self.writer.count_ignored([event["site_id"] for event in events])
            return None
        if not self.visitors.is_ready() and any(event["user_id"] is None for event in events):
            return self._submit_after_loading_salt(events, client)
        return self._append(events, client)

    async def _submit_after_loading_salt(
        self, events: list[dict[str, Any]], client: ClientInfo
    ) -> None:
        try:
            await self.visitors.ready()
        except (RedisError, OSError) as exc:
            raise StreamUnavailable(repr(exc)) from exc
        await self._append(events, client)

    def _append(self, events: list[dict[str, Any]], client: ClientInfo) -> Awaitable[None]:
        for event in events:
            if event["user_id"] is None:
                event["visitor_id"] = self.visitors.visitor_id(
                    event["site_id"], client.ip, client.user_agent
                )
        if self.store_client_info:
            for event in events:
                event["client_ip"] = client.ip or None
                event["user_agent"] = client.user_agent or None
        return self.writer.append([orjson.dumps(event) for event in events])
