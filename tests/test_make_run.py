"""`make run` on a machine where Redis and PostgreSQL are installed but none answers: it
starts private ones, migrates, serves, says where, and stores what it is sent.

The test's servers are its own (free ports, a directory of its own), so that the
machine's own Redis and PostgreSQL, which other tests use, are never stopped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from tests.conftest import ROOT, free_port


@pytest.fixture
def nothing_running() -> Iterator[dict[str, str]]:
    """The environment of a `make run` whose Redis and PostgreSQL ports answer nothing."""
    # Readable by the postgres user, whom services.sh runs PostgreSQL as under root.
    directory = tempfile.mkdtemp(prefix="make-run-", dir="/tmp")
    os.chmod(directory, 0o755)
    redis_port, pg_port = free_port(), free_port()
    env = {
        **os.environ,
        "SERVICES_DIR": directory,
        "REDIS_PORT": str(redis_port),
        "PG_PORT": str(pg_port),
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{pg_port}/analytics",
        "PORT": str(free_port()),
        "REGISTRY_REFRESH_MS": "200",
    }
    try:
        yield env
    finally:
        subprocess.run(
            ["scripts/services.sh", "stop"], cwd=ROOT, env=env, capture_output=True, timeout=60
        )
        shutil.rmtree(directory, ignore_errors=True)


def test_make_run_starts_private_servers_where_none_answers_and_serves(
    nothing_running: dict[str, str],
) -> None:
    base_url = f"http://127.0.0.1:{nothing_running['PORT']}"
    with tempfile.TemporaryFile() as log:
        run = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=ROOT,
            env=nothing_running,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one group: make, run.sh, the server, the processor
        )
        try:
            with httpx.Client(base_url=base_url, timeout=5) as http:
                _wait_until_ready(http, run, log)
                today = datetime.now(UTC).date().isoformat()
                event = {"site_id": "first.example", "event_type": "page_view", "path": "/"}
                assert http.post("/event", json=event).status_code == 202
                deadline = time.monotonic() + 30
                while (
                    http.get(f"/stats?site_id=first.example&date={today}").json().get("total_views")
                    != 1
                ):
                    assert time.monotonic() < deadline, "the event was not counted"
                    time.sleep(0.1)
        finally:
            os.killpg(run.pid, signal.SIGTERM)
            run.wait(timeout=30)
        log.seek(0)
        output = log.read().decode(errors="replace")
    assert "Redis: started on port" in output and "PostgreSQL: started on port" in output
    assert f"readiness: http://localhost:{nothing_running['PORT']}/readyz" in output


def _wait_until_ready(http: httpx.Client, run: subprocess.Popen[bytes], log: object) -> None:
    deadline = time.monotonic() + 120  # a virtualenv check, initdb, migrations
    while True:
        assert run.poll() is None, "make run exited before it served"
        try:
            if http.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "make run was not ready within 120 s"
        time.sleep(0.2)
