"""Where a batch's database time goes: `python -m benchmarks.statements [--visits]`.

One connection stores the bench's events (benchmarks/data.py) in batches one after
another, as a processor's writer does but with nothing else running, and times every
statement: the database's share of each, per event, without the overlap, the Redis work
or the waits of a drain. With --visits the batches count visits and dimensions, and their
visits are folded at the end, as a drain does. Beside it, a raw COPY of the same rows in
the same batches (the bench's reference): its time per row over the statements' time per
event is the most a processor storing these rows could reach as a ratio to raw COPY,
were its Python free and perfectly overlapped. Works in a database of its own, dropped
at the end. docs/performance.md has what it found.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from benchmarks import data
from benchmarks.context import drop_database
from benchmarks.steps import raw_copy
from common.config import Settings
from common.constants import EVENT_FIELD
from common.migrate import prepare_database
from processor import rollups, store
from processor.decode import Entry, decode_entries
from processor.folding import ALL_DAYS, EVERYTHING, fold_ended
from processor.store import Counting, months_of, prepare_connection, store_rows

_TIMED = ("fetch", "fetchrow", "fetchval", "execute", "copy_records_to_table")
# The statements a batch and a fold run, by their names in the code.
_NAMES = {
    getattr(module, name): name
    for module, names in (
        (store, ("STORE_AND_COUNT", "STORE_STAGED")),
        (rollups, ("APPLY", "CREATE_VISITOR_DAYS", "LOCK_VISITOR_DAYS", "FOLD_DUE", "FIND_DUE")),
    )
    for name in names
}


class TimedConnection:
    """A connection whose statements add their time to `seconds`, by what they run: the
    table a COPY goes to, the statement's name in the code, or its first line."""

    def __init__(self, conn: asyncpg.Connection, seconds: defaultdict[str, float]):
        self._conn = conn
        self._seconds = seconds
        self.stage = ""  # says which part of the work a statement is of

    def transaction(self) -> _TimedTransaction:
        return _TimedTransaction(self._conn.transaction(), self)

    def add(self, label: str, started: float) -> None:
        self._seconds[self.stage + label] += time.perf_counter() - started

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._conn, name)
        if name not in _TIMED:
            return method

        async def timed(query: str, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await method(query, *args, **kwargs)
            finally:
                self.add(_label(name, query), started)

        return timed


class _TimedTransaction:
    """BEGIN and COMMIT (the commit waits for its WAL to reach the disk), timed."""

    def __init__(self, transaction: Any, conn: TimedConnection):
        self._transaction = transaction
        self._conn = conn

    async def __aenter__(self) -> None:
        started = time.perf_counter()
        await self._transaction.__aenter__()
        self._conn.add("BEGIN and COMMIT", started)

    async def __aexit__(self, *exc_info: Any) -> None:
        started = time.perf_counter()
        await self._transaction.__aexit__(*exc_info)
        self._conn.add("BEGIN and COMMIT", started)


def _label(method: str, query: str) -> str:
    if method == "copy_records_to_table":
        return f"COPY to {query}"
    return _NAMES.get(query) or query.strip().splitlines()[0][:60]


async def measure(database_url: str, events: int, batch_size: int, visits: bool) -> dict[str, Any]:
    payloads, _ = data.stream_payloads(events)
    entries: list[Entry] = [
        (b"%d-0" % number, {EVENT_FIELD: payload}) for number, payload in enumerate(payloads)
    ]
    rows = decode_entries(entries).rows
    seconds: defaultdict[str, float] = defaultdict(float)
    conn = await asyncpg.connect(database_url)
    try:
        await prepare_connection(conn)
        months = sorted(months_of(rows))
        await conn.execute(store.ENSURE_PARTITIONS, [month.isoformat() for month in months])
        timed = TimedConnection(conn, seconds)
        counting = Counting(visits=visits)
        started = time.perf_counter()
        for start in range(0, len(rows), batch_size):
            await store_rows(timed, rows[start : start + batch_size], counting=counting)  # type: ignore[arg-type]
        if visits:
            timed.stage = "the fold: "
            await fold_ended(timed, counting, EVERYTHING, sweep_from=ALL_DAYS)  # type: ignore[arg-type]
        elapsed = time.perf_counter() - started
        copy_rate = await raw_copy(conn, rows, batch_size)
    finally:
        await conn.close()
    return {"elapsed": elapsed, "seconds": seconds, "events": len(rows), "raw_copy": copy_rate}


def _slowest_first(seconds: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(seconds.items(), key=lambda item: -item[1])


def report(result: dict[str, Any], visits: bool) -> str:
    events = result["events"]
    seconds: defaultdict[str, float] = result["seconds"]
    in_statements = sum(seconds.values())
    row_micros = 1e6 / result["raw_copy"]
    event_micros = in_statements / events * 1e6
    lines = [
        f"{events:,} events, {'counting visits' if visits else 'without visits'}: "
        f"{events / result['elapsed']:,.0f} events/s one batch after another",
        f"{'µs/event':>9}  statement",
        *(f"{s / events * 1e6:9.2f}  {label}" for label, s in _slowest_first(seconds)),
        f"{event_micros:9.2f}  all statements",
        f"{(result['elapsed'] - in_statements) / events * 1e6:9.2f}  the processor's Python between them",
        f"raw COPY of the same rows: {result['raw_copy']:,.0f} rows/s ({row_micros:.2f} µs a row);"
        f" the statements alone allow at most {row_micros / event_micros:.3f} of it",
    ]
    return "\n".join(lines)


async def _in_own_database(
    settings: Settings, work: Callable[[str], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """`work` on a database made for it on DATABASE_URL's server, dropped afterwards."""
    server_url = settings.database_url.rsplit("/", 1)[0]
    database = f"analytics_statements_{uuid.uuid4().hex[:8]}"
    try:
        await prepare_database(f"{server_url}/{database}")
        return await work(f"{server_url}/{database}")
    finally:
        await drop_database(server_url, database)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", action="store_true", help="count visits and dimensions")
    parser.add_argument("--events", type=int, default=100_000)
    settings = Settings.from_env()
    parser.add_argument("--batch-size", type=int, default=settings.batch_size)
    args = parser.parse_args()
    result = asyncio.run(
        _in_own_database(
            settings, lambda url: measure(url, args.events, args.batch_size, args.visits)
        )
    )
    print(report(result, args.visits))


if __name__ == "__main__":
    main()
