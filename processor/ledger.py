"""The delivery ledger: what became of every event the ingest server accepted.

Per site and UTC day of the event's own time, from three places:

- Redis (the ingest server, in the same transaction as its XADDs): accepted, ignored and
  rejected events by reason; replayed dead letters (processor/deadletters.py);
- PostgreSQL (the processor, in the same transaction as its rows, processor/tally.py):
  stored, duplicates, dropped (site not registered), dead-lettered;
- the stream itself: entries not handled yet.

It balances when accepted + replayed = stored + duplicates + dropped + dead-lettered +
still in the stream. Reading it while events flow: the accepted counts are read at once
with the stream's last id, and the figures are those as of that moment: the stream is
read next, then PostgreSQL in one snapshot, which tells which of the stream's entries
are handled already (committed, not yet acknowledged or trimmed), and which handled
entries came after that moment (left out).

`python -m processor.ledger verify [--site S] [--date D]` reconciles every day the
ingest server's counts cover (LEDGER_TTL_DAYS) and names any difference; exit status 1
then (2 when Redis or PostgreSQL cannot be read).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import asyncpg

from common.config import Settings, settings_or_exit
from common.constants import LEDGER_TTL_DAYS, MICROS_PER_DAY
from common.days import utc_date
from common.redis_clients import REDIS_FAILURES, AsyncRedis, async_client
from common.shards import shards_of
from processor.maintenance import parse_id
from processor.tally import event_of, where_of

# Stream entries read (and decoded) at a time: small, so that the ingest server reading
# a backlog for GET /ledger never holds its event loop for more than a few milliseconds.
SCAN_CHUNK = 1_000
VERIFY_ATTEMPTS = 3  # a difference must persist this many readings to be reported
# What the processor counts, and the outcome each handled entry is counted under.
OUTCOMES = ("stored", "duplicates", "dropped", "dead_lettered")
# Every count of the balance: what came in, then where it went.
FLOWS = ("accepted", "replayed", *OUTCOMES, "in_stream")
_OUTCOME_OF = {"duplicate": "duplicates", "dropped": "dropped", "dead_lettered": "dead_lettered"}


@dataclasses.dataclass(slots=True)
class LedgerDay:
    site_id: str
    date: date
    accepted: int = 0
    replayed: int = 0
    ignored: dict[str, int] = dataclasses.field(default_factory=dict)
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)
    stored: int = 0
    duplicates: int = 0
    dropped: int = 0
    dead_lettered: int = 0
    in_stream: int = 0

    @property
    def unaccounted(self) -> int:
        """Accepted events not found anywhere (negative: found more than accepted)."""
        found = self.stored + self.duplicates + self.dropped + self.dead_lettered
        return self.accepted + self.replayed - found - self.in_stream

    def as_dict(self) -> dict[str, Any]:
        return {
            "site_id": self.site_id,
            "date": self.date.isoformat(),
            "accepted": self.accepted,
            "replayed": self.replayed,
            "ignored": dict(sorted(self.ignored.items())),
            "rejected": dict(sorted(self.rejected.items())),
            "stored": self.stored,
            "duplicates": self.duplicates,
            "dropped": self.dropped,
            "dead_lettered": self.dead_lettered,
            "in_stream": self.in_stream,
            "unaccounted": self.unaccounted,
            "balanced": self.unaccounted == 0,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class LedgerStream:
    """One stream's keys: the stream, its ledger hashes' prefix, its entry ids' prefix
    (its shard's number where there are several: common/shards.py)."""

    stream_key: str
    key_prefix: str
    entry_prefix: bytes = b""


@dataclasses.dataclass(frozen=True, slots=True)
class LedgerSource:
    """Where the ledger is read from: every stream shard's keys in Redis (added up), and
    PostgreSQL."""

    client: AsyncRedis
    streams: tuple[LedgerStream, ...]

    @classmethod
    def of(cls, client: AsyncRedis, settings: Settings) -> LedgerSource:
        streams = tuple(
            LedgerStream(s.settings.stream_key, s.settings.ledger_key_prefix, s.entry_prefix)
            for s in shards_of(settings)
        )
        return cls(client, streams)


async def read_ledger(
    source: LedgerSource,
    pool: asyncpg.Pool,
    *,
    site_id: str | None = None,
    day: date | None = None,
    oldest: date | None = None,
) -> list[LedgerDay]:
    """The ledger's days (of one site, one day, or every day from `oldest` with counts in
    Redis or PostgreSQL), sorted by day and site."""
    days: dict[tuple[str, date], LedgerDay] = {}

    def row(site: str, on: date) -> LedgerDay:
        found = days.get((site, on))
        if found is None:
            found = days[site, on] = LedgerDay(site, on)
        return found

    def wanted(site: str, on: date) -> bool:
        return (site_id is None or site == site_id) and (
            on == day if day is not None else oldest is None or on >= oldest
        )

    # Each shard: its counts with its last id, then its stream; PostgreSQL after them all.
    entries: list[tuple[bytes, str, date, str | None]] = []
    accepted_after: set[int] = set()  # indexes in `entries` of entries past their last id
    for stream in source.streams:
        counts, last_id = await _edge_counts(source.client, stream, day)
        for (site, on), fields in counts.items():
            if wanted(site, on):
                _add_edge_counts(row(site, on), fields)
        for entry_id, site, on, event_id in await _stream_entries(source.client, stream, wanted):
            if parse_id(entry_id) > last_id:
                accepted_after.add(len(entries))
            entries.append((stream.entry_prefix + entry_id, site, on, event_id))
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        for record in await conn.fetch(
            "SELECT * FROM delivery_ledger WHERE ($1::text IS NULL OR site_id = $1)"
            " AND ($2::date IS NULL OR date = $2) AND ($3::date IS NULL OR date >= $3)",
            site_id,
            day,
            oldest,
        ):
            counted = row(record["site_id"], record["date"])
            for outcome in OUTCOMES:
                setattr(counted, outcome, record[outcome])
        handled = await _handled(conn, entries)
    for index, (_, site, on, _) in enumerate(entries):
        handled_as = handled.get(index)
        if index not in accepted_after:
            if handled_as is None:
                row(site, on).in_stream += 1
        elif handled_as is not None:  # handled, but accepted after the counts were read
            counted = row(site, on)
            setattr(counted, handled_as, getattr(counted, handled_as) - 1)
    return [days[key] for key in sorted(days, key=lambda key: (key[1], key[0]))]


async def _edge_counts(
    client: AsyncRedis, stream: LedgerStream, day: date | None
) -> tuple[dict[tuple[str, date], dict[str, int]], tuple[int, int]]:
    """The ingest server's counts, (site, day): {"accepted": n, "ignored:bot": n, ...},
    read in one transaction with the id of the last entry written to the stream."""
    if day is not None:
        keys = [stream.key_prefix + day.isoformat()]
    else:
        keys = [key async for key in client.scan_iter(match=stream.key_prefix + "*")]
    async with client.pipeline(transaction=True) as pipe:
        for key in keys:
            pipe.hgetall(key)
        pipe.xinfo_stream(stream.stream_key)
        replies = await pipe.execute(raise_on_error=False)
    info = replies[-1]
    last_id = (0, 0) if isinstance(info, Exception) else parse_id(info["last-generated-id"])
    counts: dict[tuple[str, date], dict[str, int]] = {}
    for key, fields in zip(keys, replies[:-1], strict=True):
        name = key.decode() if isinstance(key, bytes) else key
        try:
            on = date.fromisoformat(name.removeprefix(stream.key_prefix))
        except ValueError:
            continue
        for field, value in fields.items():
            # "accepted:<site>", "ignored:<reason>:<site>": a site id may hold colons, a
            # reason never does.
            kind, _, site = field.decode().partition(":")
            label = kind
            if kind in ("ignored", "rejected"):
                reason, _, site = site.partition(":")
                label = f"{kind}:{reason}"
            counts.setdefault((site, on), {})[label] = int(value)
    return counts, last_id


def _add_edge_counts(day: LedgerDay, fields: dict[str, int]) -> None:
    for label, count in fields.items():
        kind, _, reason = label.partition(":")
        if kind == "accepted":
            day.accepted += count
        elif kind == "replayed":
            day.replayed += count
        elif kind == "ignored":
            day.ignored[reason] = day.ignored.get(reason, 0) + count
        elif kind == "rejected":
            day.rejected[reason] = day.rejected.get(reason, 0) + count


async def _stream_entries(
    client: AsyncRedis, stream: LedgerStream, wanted: Any
) -> list[tuple[bytes, str, date, str | None]]:
    """Every entry in the stream of a wanted (site, day): id, site, day, event_id."""
    found: list[tuple[bytes, str, date, str | None]] = []
    start = "-"
    while True:
        chunk: list[tuple[bytes, dict[bytes, bytes]]] = cast(
            Any, await client.xrange(stream.stream_key, start, "+", count=SCAN_CHUNK)
        )
        for entry_id, fields in chunk:
            event = event_of(fields)  # read once, for the three facts wanted
            site, micros = where_of(entry_id, event)
            on = utc_date(micros // MICROS_PER_DAY)
            if wanted(site, on):
                found.append((entry_id, site, on, _event_id(event)))
        if len(chunk) < SCAN_CHUNK:
            return found
        start = "(" + chunk[-1][0].decode()


def _event_id(event: Any) -> str | None:
    event_id = event.get("event_id") if isinstance(event, dict) else None
    return event_id if isinstance(event_id, str) and len(event_id) == 36 else None


# Which entries the processor handled: stored (its own id in event_ids), or recorded.
_HANDLED = """
SELECT c.i, CASE WHEN l.outcome IS NOT NULL THEN l.outcome ELSE 'stored' END AS outcome
FROM unnest($1::bytea[], $2::text[], $3::text[]) WITH ORDINALITY AS c (entry_id, site_id, event_id, i)
LEFT JOIN ledger_entries AS l USING (entry_id)
WHERE l.entry_id IS NOT NULL OR EXISTS (
    SELECT FROM event_ids AS e
    WHERE c.event_id ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$'
        AND e.event_id = c.event_id::uuid AND e.site_id = c.site_id AND e.entry_id = c.entry_id
)
"""


async def _handled(
    conn: asyncpg.Connection, entries: list[tuple[bytes, str, date, str | None]]
) -> dict[int, str]:
    """Index in `entries`: the outcome it was counted under."""
    if not entries:
        return {}
    records = await conn.fetch(
        _HANDLED,
        [entry[0] for entry in entries],
        [entry[1] for entry in entries],
        [entry[3] for entry in entries],
    )
    return {record["i"] - 1: _OUTCOME_OF.get(record["outcome"], "stored") for record in records}


async def verify(
    source: LedgerSource,
    pool: asyncpg.Pool,
    *,
    site_id: str | None = None,
    day: date | None = None,
    oldest: date | None = None,
    attempts: int = VERIFY_ATTEMPTS,
    pause_s: float = 1.0,
) -> tuple[list[LedgerDay], list[LedgerDay]]:
    """(every day read, the days that do not balance); a day that differs is read again,
    up to `attempts` times, so that only a difference that persists is reported."""
    for attempt in range(attempts):
        days = await read_ledger(source, pool, site_id=site_id, day=day, oldest=oldest)
        different = [d for d in days if d.unaccounted != 0]
        if not different or attempt == attempts - 1:
            return days, different
        await asyncio.sleep(pause_s)
    raise AssertionError("unreachable")


def format_day(day: LedgerDay) -> str:
    extras = Counter({f"ignored {k}": v for k, v in day.ignored.items()})
    extras.update({f"rejected {k}": v for k, v in day.rejected.items()})
    line = (
        f"{day.date} {day.site_id or '(no site)'}: accepted {day.accepted}"
        + (f" + replayed {day.replayed}" if day.replayed else "")
        + f" = stored {day.stored} + duplicates {day.duplicates} + dropped {day.dropped}"
        f" + dead-lettered {day.dead_lettered} + in the stream {day.in_stream}"
    )
    if day.unaccounted > 0:
        line += f"  DIFFERS: {day.unaccounted} not found"
    elif day.unaccounted < 0:
        line += f"  DIFFERS: {-day.unaccounted} more found than accepted"
    if extras:
        line += " (" + ", ".join(f"{k} {v}" for k, v in sorted(extras.items())) + ")"
    return line


async def _verify_command(args: argparse.Namespace, settings: Settings) -> int:
    client = async_client(settings)
    try:
        async with asyncpg.create_pool(settings.database_url, min_size=1, max_size=2) as pool:
            # Older days' counts at the edge have expired: nothing to reconcile them with.
            today = datetime.now(UTC).date()
            oldest = None if args.date else today - timedelta(days=LEDGER_TTL_DAYS - 1)
            source = LedgerSource.of(client, settings)
            days, different = await verify(
                source, pool, site_id=args.site, day=args.date, oldest=oldest
            )
    except (*REDIS_FAILURES, asyncpg.PostgresError) as exc:
        print(f"cannot read the ledger: {exc!r}", file=sys.stderr)
        return 2
    finally:
        await client.aclose()
    for day in days:
        print(format_day(day))
    if different:
        print(f"{len(different)} of {len(days)} site-days do not balance", file=sys.stderr)
        return 1
    print(f"balanced: {len(days)} site-days")
    return 0


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date as YYYY-MM-DD: {value!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m processor.ledger",
        description="Reconcile the delivery ledger: accepted = stored + duplicates + dropped"
        " + dead-lettered + still in the stream, per site and UTC day.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="reconcile, and name any difference")
    check.add_argument("--site", help="one site only")
    check.add_argument("--date", type=_date, help="one UTC day only (YYYY-MM-DD)")
    args = parser.parse_args(argv)
    return asyncio.run(_verify_command(args, settings_or_exit()))


if __name__ == "__main__":
    sys.exit(main())
