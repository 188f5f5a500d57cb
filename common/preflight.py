"""Check that Redis and PostgreSQL answer, and say plainly how to start them if not.

`python -m common.preflight` exits 0 when both answer, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import sys

import asyncpg

from common.config import Settings, redact_url, settings_or_exit
from common.redis_clients import REDIS_FAILURES, async_client

HINT = """\
{what} is not reachable at {url}: {error}
  - installed but stopped? `make services` starts a private one under .services/
  - or start the system one, e.g. {system}
  - or point {variable} at a running server."""


async def check_redis(settings: Settings) -> str | None:
    client = async_client(settings, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.ping()
    except REDIS_FAILURES as exc:
        return str(exc) or type(exc).__name__
    finally:
        await client.aclose()
    return None


async def check_postgres(url: str) -> str | None:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except asyncpg.InvalidCatalogNameError:
        return None  # the server answers; the database is created on start
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return str(exc) or type(exc).__name__
    await conn.close()
    return None


async def problems(settings: Settings) -> list[str]:
    redis_error, postgres_error = await asyncio.gather(
        check_redis(settings), check_postgres(settings.database_url)
    )
    found = []
    if redis_error:
        found.append(
            HINT.format(
                what="Redis",
                url=redact_url(settings.redis_url),
                error=redis_error,
                system="`redis-server --daemonize yes --save '' --appendonly no`",
                variable="REDIS_URL",
            )
        )
    if postgres_error:
        found.append(
            HINT.format(
                what="PostgreSQL",
                url=redact_url(settings.database_url),
                error=postgres_error,
                system="`pg_ctlcluster <version> main start` or `systemctl start postgresql`",
                variable="DATABASE_URL",
            )
        )
    return found


def main() -> int:
    settings = settings_or_exit()
    found = asyncio.run(problems(settings))
    for problem in found:
        sys.stderr.write(problem + "\n")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
