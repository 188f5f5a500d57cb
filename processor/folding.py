"""Folding: adding visits that have ended to the dimension rollups, once each.

A batch keeps the site's and the pages' figures current, but what a visit adds to its
source, device, entry page and the other dimensions is counted when the visit has ended
(no event of its visitor for 30 minutes): counted per event instead, every page view
would rewrite a row for each of a visit's fifteen dimension values. Folded, a visit is
counted once, and the visits folded together share their rows.

Each visitor-day row says until when its visits are folded (folded_until): the dimension
rollups hold exactly the visits that had ended by then. A batch that changes such a visit
(a late event, docs/metrics.md) changes the rollups with it, so when a visit is folded
changes how soon it shows there, never what they add up to. Rows are locked while they
are folded or written: any number of processors may fold and write at once.

Which rows are due: each processor remembers the visitor-days it wrote and when their
last visit ends; a sweep finds in the table what no processor remembers (rows written by
a processor that stopped, or more than one remembers): every SWEEP_EVERY folds for recent
days, and for all days when a processor starts.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from common.constants import MICROS_PER_DAY
from processor.counting import VisitorDay, VisitorDayRows, count_fold
from processor.health import Health
from processor.months import reopen, write_horizon
from processor.rollups import FIND_DUE, FOLD_DUE, RollupChanges
from processor.store import Counting, apply_changes
from processor.visits import decode_visits

logger = logging.getLogger(__name__)

# Visitor-days per fold transaction: bounds the time their locks are held.
FOLD_ROWS = 5_000
SWEEP_EVERY = 60
# Days before the latest event's that the periodic sweep looks at (late events' days
# further back are left to the sweep of a processor's start).
SWEEP_DAYS = 2
ALL_DAYS = -1_000_000  # as a day number: long before 1970, all of them
EVERYTHING = 2**63 - 1


async def fold_ended(
    conn: asyncpg.Connection, counting: Counting, until: int, *, sweep_from: int | None = None
) -> int:
    """Fold the visits that ended by `until` (microseconds since 1970) of the visitor-days
    `counting` remembers, and with `sweep_from` (a day number) also of those the table
    has from that day on: returns how many visitor-days were folded."""
    keys = {key for key, open_until in counting.due.items() if open_until <= until}
    if sweep_from is not None:
        found = await conn.fetch(FIND_DUE, sweep_from, until)
        keys.update((r["site_id"], r["day"], r["visitor"]) for r in found)
    ordered = sorted(keys)
    folded = 0
    for start in range(0, len(ordered), FOLD_ROWS):
        folded += await _fold(conn, counting, ordered[start : start + FOLD_ROWS], until)
    return folded


async def _fold(
    conn: asyncpg.Connection, counting: Counting, keys: list[VisitorDay], until: int
) -> int:
    changes = RollupChanges()
    folded = 0
    async with conn.transaction():
        taken = await conn.fetch(
            FOLD_DUE, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], until
        )
        for record in taken:
            open_until, folded_until = record["open_until"], record["folded_until"]
            if folded_until >= open_until:  # folded already (by another processor)
                continue
            key = (record["site_id"], record["day"], record["visitor"])
            if open_until > until:  # extended by another processor meanwhile
                counting.due[key] = open_until
                continue
            count_fold(changes, key, decode_visits(record["visits"]), folded_until, until)
            folded += 1
        if folded:
            await apply_changes(conn, changes, VisitorDayRows())
            horizon = write_horizon(counting.max_age_s)
            await reopen(conn, {day for day in changes.days if day[1] < horizon})
    # Forget what is settled; what a batch holds now (skipped) is tried again next time.
    for record in taken:
        key = (record["site_id"], record["day"], record["visitor"])
        if key in counting.due and counting.due[key] <= until:
            del counting.due[key]
    return folded


def fold_until(counting: Counting) -> int:
    """Until when visits have ended: now, once the processor has read all there is; while
    it works through a backlog, the latest event it stored if that is earlier (it folds
    older events' visits as it reaches them)."""
    now = time.time_ns() // 1000
    return now if counting.caught_up else min(now, counting.newest)


class Folder:
    """Folds what has ended every `interval_s`; failures are logged and retried."""

    def __init__(self, pool: asyncpg.Pool, counting: Counting, interval_s: float, health: Health):
        self._pool = pool
        self._counting = counting
        self._interval_s = interval_s
        self._health = health
        self._folds = 0
        self._swept_all = False

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self._interval_s)
            except TimeoutError:
                await self.fold(fold_until(self._counting))

    async def fold(self, until: int, *, sweep_from: int | None = None) -> None:
        if sweep_from is None:
            if not self._swept_all:
                sweep_from = ALL_DAYS
            elif self._folds % SWEEP_EVERY == 0:
                sweep_from = self._counting.newest // MICROS_PER_DAY - SWEEP_DAYS
        try:
            async with self._pool.acquire() as conn:
                folded = await fold_ended(conn, self._counting, until, sweep_from=sweep_from)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            logger.warning("folding ended visits failed, will try again: %r", exc)
            self._health.failed("folding", exc)
            return
        self._folds += 1
        self._swept_all = self._swept_all or sweep_from == ALL_DAYS
        if folded:
            logger.debug("folded the ended visits of %d visitor-days", folded)
        self._health.recovered("folding")
