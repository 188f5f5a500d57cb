"""UTC days as the stream and the ledger count them: whole days since 1970-01-01."""

from __future__ import annotations

from datetime import date, timedelta

_EPOCH = date(1970, 1, 1)


def utc_date(day: int) -> date:
    """The date of a day counted since 1970-01-01 (an event's is its microseconds //
    MICROS_PER_DAY)."""
    return _EPOCH + timedelta(days=day)
