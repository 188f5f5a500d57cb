"""Whose event it is and on which day it counts: pure code, memoised.

A day is a day of the site's time zone (sites.time_zone), as a number of days since
1970-01-01; a site without a registry entry counts in UTC. A visitor is the event's
user_id, as md5(user_id) in UUID form (sql/009 visitor_key, which erasure uses), or else
its daily visitor id.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from common.constants import MICROS_PER_DAY

MICROS_PER_SECOND = 1_000_000
# Every offset change of the tz database falls on a whole quarter of an hour of UTC, so an
# offset found once holds for the whole quarter it was found in.
_QUARTER_MICROS = 900 * MICROS_PER_SECOND
_MEMO_ENTRIES = 65_536


class LocalDays:
    """The local day of an event time, per time zone, at the cost of a dict look-up."""

    def __init__(self) -> None:
        self._zones: dict[str, ZoneInfo] = {}
        self._offsets: dict[tuple[str, int], int] = {}

    def day(self, time_zone: str | None, micros: int) -> int:
        if time_zone is None or time_zone == "UTC":
            return micros // MICROS_PER_DAY
        key = (time_zone, micros // _QUARTER_MICROS)
        offset = self._offsets.get(key)
        if offset is None:
            offset = self._offset(time_zone, micros)
            if len(self._offsets) >= _MEMO_ENTRIES:
                self._offsets.clear()
            self._offsets[key] = offset
        return (micros + offset) // MICROS_PER_DAY

    def _offset(self, time_zone: str, micros: int) -> int:
        zone = self._zones.get(time_zone)
        if zone is None:
            zone = self._zones[time_zone] = ZoneInfo(time_zone)
        moment = datetime.fromtimestamp(micros // MICROS_PER_SECOND, UTC)
        delta = moment.astimezone(zone).utcoffset()
        assert delta is not None
        return (delta.days * 86_400 + delta.seconds) * MICROS_PER_SECOND


class VisitorKeys:
    """visitor_key(user_id, visitor_id) of sql/009, memoised for user_ids."""

    def __init__(self) -> None:
        self._users: dict[str, str] = {}

    def key(self, user_id: str | None, visitor_id: str | None) -> str | None:
        if user_id is None:
            return visitor_id
        key = self._users.get(user_id)
        if key is None:
            if len(self._users) >= _MEMO_ENTRIES:
                self._users.clear()
            digest = hashlib.md5(user_id.encode(), usedforsecurity=False).digest()
            key = self._users[user_id] = str(uuid.UUID(bytes=digest))
        return key
