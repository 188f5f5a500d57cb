"""GET /stats while PostgreSQL cannot answer: 503 with Retry-After for every code of the
SQLSTATE classes that mean "not now" (08, 53, 57), shown on a real server; 500 for the rest.

The server reads as a role of its own with one connection allowed and a statement
timeout of 2 s (below the client's command timeout of 5 s, so that PostgreSQL is the one
to cancel). The test holds a lock on the stats table to keep a query running on demand.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from common.config import Settings
from common.migrate import database_unavailable, prepare_database
from tests.conftest import free_port, settings_env
from tests.processes import Service
from tests.servers import PrivatePostgres

READER = "stats_reader"
STATS = {"site_id": "s", "date": "2026-01-01"}


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.start()
        asyncio.run(_prepare(server.url))
        yield server
    finally:
        server.close()


async def _prepare(url: str) -> None:
    await prepare_database(url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE ROLE {READER} LOGIN CONNECTION LIMIT 1")
        await conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER}")
        await conn.execute(f"ALTER ROLE {READER} SET statement_timeout = '2s'")
    finally:
        await conn.close()


@pytest.fixture
async def admin(postgres: PrivatePostgres) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(postgres.url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def server(
    settings: Settings, postgres: PrivatePostgres, tmp_path: Path
) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    """`python -m ingest` reading as READER, once GET /stats answers 200."""
    url = postgres.url.replace("postgres@", f"{READER}@", 1)
    own = dataclasses.replace(settings, database_url=url, port=free_port())
    service = Service("ingest", settings_env(own), tmp_path / "ingest.log")
    try:
        await service.wait_for_port(own.port)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{own.port}", timeout=10) as http:
            deadline = time.monotonic() + 15
            while (await http.get("/stats", params=STATS)).status_code != 200:
                assert time.monotonic() < deadline, service.output()
                await asyncio.sleep(0.1)
            yield service, http
        await service.stop()  # its exit status: tests/test_signals.py
    finally:
        service.kill()


async def _blocked_query(
    admin: asyncpg.Connection, http: httpx.AsyncClient
) -> asyncio.Task[httpx.Response]:
    """A GET /stats whose query waits on the test's lock, holding READER's one connection."""
    request = asyncio.create_task(http.get("/stats", params=STATS))
    deadline = time.monotonic() + 1.5
    while not await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND wait_event_type = 'Lock'",
        READER,
    ):
        assert time.monotonic() < deadline, "the query never waited on the lock"
        await asyncio.sleep(0.01)
    return request


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "unavailable"
    assert response.headers["retry-after"] == "1"


async def test_stats_answers_503_for_too_many_connections_and_a_statement_timeout(
    server: tuple[Service, httpx.AsyncClient], admin: asyncpg.Connection
) -> None:
    service, http = server
    async with admin.transaction():
        await admin.execute("LOCK TABLE daily_site_stats IN ACCESS EXCLUSIVE MODE")
        first = await _blocked_query(admin, http)
        # The pool needs a second connection, and the role may have only one.
        _assert_unavailable(await http.get("/stats", params=STATS))
        # The first is cancelled by statement_timeout while it waits.
        _assert_unavailable(await first)
    assert (await http.get("/stats", params=STATS)).status_code == 200
    output = service.output()
    assert "answering 503 (SQLSTATE 53300)" in output  # too_many_connections, class 53
    assert "answering 503 (SQLSTATE 57014)" in output  # query_canceled, class 57


async def test_stats_answers_503_when_its_backend_is_terminated_mid_query_then_recovers(
    server: tuple[Service, httpx.AsyncClient], admin: asyncpg.Connection
) -> None:
    service, http = server
    async with admin.transaction():
        await admin.execute("LOCK TABLE daily_site_stats IN ACCESS EXCLUSIVE MODE")
        request = await _blocked_query(admin, http)
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", READER
        )
        _assert_unavailable(await request)
    # The pool connects again by itself (at first the role's one slot may still be
    # held by the backend that is ending: 53300, a 503 too).
    deadline = time.monotonic() + 5
    while (response := await http.get("/stats", params=STATS)).status_code != 200:
        _assert_unavailable(response)
        assert time.monotonic() < deadline, service.output()
        await asyncio.sleep(0.1)
    # asyncpg reports the server's admin_shutdown (57P01) in mid-query as class 08.
    assert "answering 503 (SQLSTATE 08003)" in service.output(), service.output()
    assert "Traceback" not in service.output()


async def test_other_database_errors_stay_500_and_are_logged(
    server: tuple[Service, httpx.AsyncClient], admin: asyncpg.Connection
) -> None:
    service, http = server
    await admin.execute(f"REVOKE SELECT ON daily_site_path_counts FROM {READER}")
    try:
        response = await http.get("/stats", params=STATS)
    finally:
        await admin.execute(f"GRANT SELECT ON daily_site_path_counts TO {READER}")
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert "retry-after" not in response.headers
    output = service.output()
    assert "ERROR report.endpoints: reporting query failed" in output
    assert "InsufficientPrivilegeError" in output


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_code_of_classes_08_53_57_is_unavailable_and_no_other_code_is() -> None:
    codes = [cls for cls in _subclasses(asyncpg.PostgresError) if cls.sqlstate]
    unavailable = [cls for cls in codes if database_unavailable(cls("x"))]
    assert {cls.sqlstate[:2] for cls in unavailable} == {"08", "53", "57"}
    assert unavailable == [cls for cls in codes if cls.sqlstate[:2] in ("08", "53", "57")]
    assert asyncpg.QueryCanceledError in unavailable  # 57014, statement_timeout
    assert asyncpg.TooManyConnectionsError in unavailable  # 53300
    assert asyncpg.CannotConnectNowError in unavailable  # 57P03, starting up
    assert database_unavailable(ConnectionRefusedError()) and database_unavailable(TimeoutError())
    assert database_unavailable(asyncpg.InterfaceError("pool is closing"))
    assert not database_unavailable(asyncpg.DataError("invalid input for query argument"))
