"""benchmarks/statements.py: its times are those of the processor's own statements."""

from __future__ import annotations

import asyncpg

from benchmarks.statements import measure, report


async def test_it_times_each_statement_of_the_batches_and_the_fold(
    db: asyncpg.Pool, database_url: str
) -> None:
    result = await measure(database_url, events=600, batch_size=200, visits=True)

    seconds = result["seconds"]
    for statement in (
        "STORE_STAGED",
        "CREATE_VISITOR_DAYS",
        "APPLY",
        "COPY to event_staging",
        "BEGIN and COMMIT",
        "the fold: FOLD_DUE",
        "the fold: APPLY",
    ):
        assert seconds[statement] > 0, statement
    assert result["events"] == 600 and result["raw_copy"] > 0
    assert sum(seconds.values()) < result["elapsed"]
    # What it timed is what was stored, counted and folded.
    assert await db.fetchval("SELECT count(*) FROM events") == 600
    visits = await db.fetchval("SELECT sum(visits) FROM daily_site_stats")
    folded = await db.fetchval(
        "SELECT sum(visits) FROM daily_dimension_stats WHERE dimension = 'visit:device'"
    )
    assert 0 < visits == folded
    assert "the statements alone allow at most" in report(result, visits=True)
