"""What happens to validated events at the edge, in order: each step enriches or drops.

1. bots: known crawlers, monitors and previewers are dropped (answered "ignored"), counted;
2. visitors: an event without a user_id gets the day's salted visitor hash;
3. client info: the IP address and User-Agent are kept only where configured;
4. the events are appended to the stream; the request is answered once Redis has them.
"""

from __future__ import annotations

import dataclasses
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

    async def submit(self, events: list[dict[str, Any]], client: ClientInfo) -> bool:
        """Enrich and append the events; False when they were ignored (a bot sent them)."""
        if is_bot(client.user_agent):
            self.writer.count_ignored([event["site_id"] for event in events])
            return False
        if any(event["user_id"] is None for event in events):
            try:
                await self.visitors.ready()
            except (RedisError, OSError) as exc:
                raise StreamUnavailable(repr(exc)) from exc
            for event in events:
                if event["user_id"] is None:
                    event["visitor_id"] = self.visitors.visitor_id(
                        event["site_id"], client.ip, client.user_agent
                    )
        if self.store_client_info:
            for event in events:
                event["client_ip"] = client.ip or None
                event["user_agent"] = client.user_agent or None
        await self.writer.append([orjson.dumps(event) for event in events])
        return True
