"""Who may write and read, over real HTTP against `python -m ingest`, with the registry
changed by `python -m sites` while the server runs: SITES_MODE, Origin checks, API keys
on GET /stats, and the rate limits."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import httpx
import orjson
import redis.asyncio as redis

from common.config import Settings
from common.constants import EVENT_FIELD
from tests.conftest import drain, make_processor, run_module
from tests.test_edge_http import CHROME
from tests.test_processor import enqueue

TODAY = datetime.now(UTC).date().isoformat()


def sites_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return run_module(settings, "sites", *args)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


async def _eventually(check: Callable[[], Awaitable[bool]], within: float = 5) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.05)


def _event(site_id: str, path: str = "/") -> dict[str, str]:
    return {"site_id": site_id, "event_type": "page_view", "path": path}


async def _ignored_counts(client: redis.Redis, settings: Settings) -> dict[str, int]:
    """The delivery ledger's counts of ignored events, "<reason>:<site>": count."""
    raw = await client.hgetall(f"{settings.ledger_key_prefix}{TODAY}")
    return {
        field.decode().removeprefix("ignored:"): int(count)
        for field, count in raw.items()
        if field.startswith(b"ignored:")
    }


def _registered(settings: Settings) -> Settings:
    return dataclasses.replace(settings, sites_mode="registered", registry_refresh_ms=200)


async def test_registered_mode_ignores_unknown_sites_until_they_are_added(
    db: asyncpg.Pool,
    redis_client: redis.Redis,
    settings: Settings,
    start_server: Callable[[Settings], str],
) -> None:
    settings = _registered(settings)
    headers = {"user-agent": CHROME}
    async with httpx.AsyncClient(base_url=start_server(settings), headers=headers) as http:
        await _eventually(lambda: _accepts_any(http))
        unknown = await http.post("/event", json=_event("new.example"))
        assert (unknown.status_code, unknown.json()) == (202, {"status": "ignored"})
        assert await redis_client.xlen(settings.stream_key) == 0

        _ok(sites_cli(settings, "add", "new.example"))

        async def stored_now() -> bool:
            answer = await http.post("/event", json=_event("new.example"))
            return bool(answer.json()["status"] == "accepted")

        await _eventually(stored_now)  # within seconds, no restart
        batch = await http.post("/events", json=[_event("new.example"), _event("other")])
        answer = batch.json()
        assert (answer["accepted"], answer["ignored"], len(answer["event_ids"])) == (1, 1, 1)

        _ok(sites_cli(settings, "remove", "new.example"))

        async def ignored_again() -> bool:
            answer = await http.post("/event", json=_event("new.example"))
            return bool(answer.json()["status"] == "ignored")

        await _eventually(ignored_again)

    async def counted() -> bool:  # in the server's next write, just after its answer
        counts = await _ignored_counts(redis_client, settings)
        return counts.get("site_not_registered:other") == 1 and (
            counts.get("site_not_registered:new.example", 0) >= 2
        )

    await _eventually(counted)
    stored = await redis_client.xlen(settings.stream_key)
    assert stored >= 2  # the accepted ones, and only those: ignored events are never enqueued


async def test_an_umami_website_id_names_its_registered_site(
    db: asyncpg.Pool,
    redis_client: redis.Redis,
    settings: Settings,
    start_server: Callable[[Settings], str],
) -> None:
    """A site switched from Umami keeps its own site_id: its tracker's website id maps to
    it (in registered mode too), within seconds of `sites update`; unmapped ids are
    site ids of their own, as before."""
    await db.execute("TRUNCATE sites")
    settings = _registered(settings)
    website = "6f7a2b1c-3d4e-4f50-8a6b-7c8d9e0f1a2b"
    _ok(sites_cli(settings, "add", "shop.example", "--umami-website", website.upper()))
    send = {"type": "event", "payload": {"website": website, "url": "https://shop.example/"}}
    headers = {"user-agent": CHROME}
    async with httpx.AsyncClient(base_url=start_server(settings), headers=headers) as http:
        await _eventually(lambda: _accepts_any(http))
        answer = await http.post("/api/send", json=send)
        assert answer.status_code == 200 and "event_id" in answer.json()
        [(_, fields)] = await redis_client.xrange(settings.stream_key)
        assert orjson.loads(fields[EVENT_FIELD])["site_id"] == "shop.example"

        _ok(sites_cli(settings, "update", "shop.example", "--no-umami-website"))

        async def ignored_now() -> bool:  # the bare id is no registered site
            answer = await http.post("/api/send", json=send)
            return bool(answer.json() == {"beep": "boop"})

        await _eventually(ignored_now)
    await db.execute("TRUNCATE sites")


async def test_plausibles_route_drops_unregistered_domains_and_says_how_many(
    db: asyncpg.Pool,
    redis_client: redis.Redis,
    settings: Settings,
    start_server: Callable[[Settings], str],
) -> None:
    """One request for two domains, one registered: one event stored, and Plausible's
    x-plausible-dropped header counts the other, as Plausible answers for a site it does
    not know."""
    await db.execute("TRUNCATE sites")
    settings = _registered(settings)
    _ok(sites_cli(settings, "add", "a.example"))
    body = {"n": "pageview", "u": "https://a.example/", "d": "a.example,b.example"}
    headers = {"user-agent": CHROME, "content-type": "text/plain"}
    async with httpx.AsyncClient(base_url=start_server(settings), headers=headers) as http:
        await _eventually(lambda: _accepts_any(http))
        answer = await http.post("/api/event", content=orjson.dumps(body))
    assert (answer.status_code, answer.text) == (202, "ok")
    assert answer.headers["x-plausible-dropped"] == "1"
    [(_, fields)] = await redis_client.xrange(settings.stream_key)
    assert orjson.loads(fields[EVENT_FIELD])["site_id"] == "a.example"
    counts = await _ignored_counts(redis_client, settings)
    assert counts["site_not_registered:b.example"] == 1
    await db.execute("TRUNCATE sites")


async def _accepts_any(http: httpx.AsyncClient) -> bool:
    """Whether the server has read the registry (it answers 503 until then)."""
    answer = await http.post("/event", json=_event("probe.invalid"))
    return answer.status_code == 202


async def test_browser_events_are_ignored_from_origins_that_are_not_the_sites(
    db: asyncpg.Pool,
    redis_client: redis.Redis,
    settings: Settings,
    start_server: Callable[[Settings], str],
) -> None:
    settings = _registered(settings)
    _ok(
        sites_cli(settings, "add", "shop", "--domain", "shop.example", "--domain", "*.blog.example")
    )
    _ok(sites_cli(settings, "add", "anywhere"))  # no domains: any origin
    async with httpx.AsyncClient(base_url=start_server(settings)) as http:
        await _eventually(lambda: _accepts_any(http))

        async def status(site: str, origin: str | None) -> str:
            headers = {"user-agent": CHROME, **({"origin": origin} if origin else {})}
            answer = await http.post("/event", json=_event(site), headers=headers)
            assert answer.status_code == 202
            return str(answer.json()["status"])

        assert await status("shop", "https://shop.example") == "accepted"
        assert await status("shop", "http://shop.example:8080") == "accepted"
        assert await status("shop", "https://SHOP.example") == "accepted"
        assert await status("shop", "https://blog.example") == "accepted"
        assert await status("shop", "https://www.blog.example") == "accepted"
        assert await status("shop", None) == "accepted"  # a back end: no Origin
        assert await status("shop", "https://evil.example") == "ignored"
        assert await status("shop", "https://shop.example.evil.example") == "ignored"
        assert await status("shop", "https://www.shop.example") == "ignored"  # not listed
        assert await status("shop", "null") == "ignored"
        assert await status("anywhere", "https://evil.example") == "accepted"
    counts = await _ignored_counts(redis_client, settings)
    counts.pop("site_not_registered:probe.invalid")  # the probes of _accepts_any
    assert counts == {"origin_not_allowed:shop": 4}
    assert await redis_client.xlen(settings.stream_key) == 7


async def test_open_mode_stores_any_site_and_says_so(
    db: asyncpg.Pool,
    redis_client: redis.Redis,
    settings: Settings,
    start_server: Callable[[Settings], str],
) -> None:
    async with httpx.AsyncClient(base_url=start_server(settings)) as http:
        answer = await http.post(
            "/event", json=_event("whatever"), headers={"origin": "https://x.example"}
        )
        assert answer.json()["status"] == "accepted"
    assert await redis_client.xlen(settings.stream_key) == 1


async def test_api_keys_guard_the_reporting_api_once_one_exists(
    db: asyncpg.Pool, settings: Settings, start_server: Callable[[Settings], str]
) -> None:
    settings = dataclasses.replace(settings, registry_refresh_ms=200)
    for site in ("a.example", "b.example"):
        _ok(sites_cli(settings, "add", site))
    async with httpx.AsyncClient(base_url=start_server(settings)) as http:

        async def stats(site: str, key: str | None = None) -> httpx.Response:
            headers = {"authorization": f"Bearer {key}"} if key else {}
            return await http.get("/stats", params={"site_id": site}, headers=headers)

        async def status_is(expected: int, site: str, key: str | None = None) -> bool:
            return (await stats(site, key)).status_code == expected

        await _eventually(lambda: status_is(200, "a.example"))  # no key yet: open
        output = _ok(sites_cli(settings, "key", "create", "--site", "a.example", "--name", "ci"))
        key = output.strip().splitlines()[-1]
        await _eventually(lambda: status_is(401, "a.example"))

        missing = await stats("a.example")
        assert missing.json()["error"] == "unauthorized"
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert (await stats("a.example", key)).status_code == 200
        assert (
            await stats("a.example", key[:-1] + ("A" if key[-1] != "A" else "B"))
        ).status_code == 401
        assert (await stats("a.example", "not-a-key")).status_code == 401
        forbidden = await stats("b.example", key)
        assert (forbidden.status_code, forbidden.json()["error"]) == (403, "forbidden")

        prefix = key[:11]
        _ok(sites_cli(settings, "key", "revoke", prefix))
        # The only key is revoked: no active key is left, so the API is open again.
        await _eventually(lambda: status_is(200, "b.example"))
        second = _ok(sites_cli(settings, "key", "create")).strip().splitlines()[-1]
        await _eventually(lambda: status_is(401, "b.example"))
        assert (await stats("a.example", key)).status_code == 401  # revoked stays refused
        assert (await stats("b.example", second)).status_code == 200  # all sites

    rows = await db.fetch("SELECT * FROM api_keys")
    assert len(rows) == 2
    for row in rows:
        for secret in (key, second, key[11:], second[11:]):
            assert secret not in repr(dict(row)) and secret.encode() not in bytes(row["key_hash"])


async def test_a_key_over_its_rate_gets_429_with_retry_after(
    db: asyncpg.Pool, settings: Settings, start_server: Callable[[Settings], str]
) -> None:
    settings = dataclasses.replace(settings, registry_refresh_ms=200, key_rate_limit=3)
    key = _ok(sites_cli(settings, "key", "create")).strip().splitlines()[-1]
    async with httpx.AsyncClient(base_url=start_server(settings)) as http:
        headers = {"authorization": f"Bearer {key}"}

        async def answered() -> bool:
            response = await http.get("/stats", params={"site_id": "s"}, headers=headers)
            return response.status_code == 200

        await _eventually(answered)  # the first of three
        statuses = [
            (await http.get("/stats", params={"site_id": "s"}, headers=headers)).status_code
            for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        limited = await http.get("/stats", params={"site_id": "s"}, headers=headers)
        assert limited.json()["error"] == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1


async def test_an_address_over_its_rate_gets_429_and_nothing_is_stored(
    redis_client: redis.Redis, settings: Settings, start_server: Callable[[Settings], str]
) -> None:
    settings = dataclasses.replace(settings, address_rate_limit=5)
    async with httpx.AsyncClient(base_url=start_server(settings)) as http:
        statuses = [
            (
                await http.post("/event", json=_event("s"), headers={"user-agent": CHROME})
            ).status_code
            for _ in range(8)
        ]
        assert statuses[:5] == [202] * 5
        assert 429 in statuses[5:]
        limited = await http.post("/event", json=_event("s"))
        assert limited.json()["detail"] == [
            {"field": "address", "message": "too many requests from this address; retry later"}
        ]
        assert limited.headers["retry-after"] == "1"
    assert await redis_client.xlen(settings.stream_key) == statuses.count(202)


async def test_a_site_over_its_event_rate_gets_429_and_others_go_on(
    redis_client: redis.Redis, settings: Settings, start_server: Callable[[Settings], str]
) -> None:
    settings = dataclasses.replace(settings, site_rate_limit=4)
    async with httpx.AsyncClient(base_url=start_server(settings)) as http:
        first = await http.post("/events", json=[_event("busy")] * 4)
        assert first.status_code == 202
        over = await http.post("/event", json=_event("busy"))
        assert (over.status_code, over.json()["detail"][0]["field"]) == (429, "site_id")
        assert (await http.post("/event", json=_event("calm"))).status_code == 202
    assert await redis_client.xlen(settings.stream_key) == 5


async def test_registered_processors_drop_events_of_sites_removed_while_in_the_stream(
    db: asyncpg.Pool, redis_client: redis.Redis, settings: Settings
) -> None:
    """Events accepted for a site, then the site removed with its data before they were
    processed: a processor in registered mode stores none of them (nothing reappears
    after the deletion); a registered site's events are stored as ever."""
    settings = _registered(settings)
    _ok(sites_cli(settings, "add", "kept.example"))
    _ok(sites_cli(settings, "add", "gone.example"))
    events = [_event("kept.example", f"/{i}") for i in range(50)]
    events += [_event("gone.example", f"/{i}") for i in range(50)]
    await enqueue(redis_client, settings, events)
    _ok(sites_cli(settings, "remove", "gone.example", "--delete-data"))
    await drain(settings, redis_client, db)
    per_site = dict(await db.fetch("SELECT site_id, count(*) FROM events GROUP BY site_id"))
    assert per_site == {"kept.example": 50}
    assert (
        await db.fetchval("SELECT count(*) FROM daily_site_stats WHERE site_id = 'gone.example'")
        == 0
    )


async def test_removing_a_site_while_a_processor_stores_its_events_leaves_none_behind(
    db: asyncpg.Pool, redis_client: redis.Redis, settings: Settings
) -> None:
    settings = dataclasses.replace(_registered(settings), batch_size=100)
    _ok(sites_cli(settings, "add", "busy.example"))
    await enqueue(
        redis_client, settings, [_event("busy.example", f"/{i % 97}") for i in range(40_000)]
    )
    stop = asyncio.Event()
    processor = asyncio.create_task(
        make_processor(settings, redis_client, db).run(stop, drain=True)
    )

    async def some_stored() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM events") > 0)

    await _eventually(some_stored, within=20)
    removed = await asyncio.to_thread(
        sites_cli, settings, "remove", "busy.example", "--delete-data"
    )
    assert removed.returncode == 0, removed.stderr
    assert not processor.done()  # the removal ran while batches were being stored
    await processor  # drains the rest of the stream
    for table in ("events", "daily_site_stats", "daily_site_path_counts", "visitor_days"):
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0, table
