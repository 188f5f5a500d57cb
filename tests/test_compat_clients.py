"""The trackers of others, unchanged, against our compatibility routes, end to end.

@umami/node runs in node; @plausible-analytics/tracker in a real browser (Debian's
chromium, headless, driven by Playwright). Both come from the npm registry at test set-up
(tests/npm_clients.py). What they send goes through a real ingest server into the test's
stream, and the processor stores it: the rows are compared with what each client was told
to send. The wire-level checks of both routes are in tests/test_compat_http.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson
import pytest
import redis.asyncio as redis
from playwright.async_api import Page, Request, Response, async_playwright

from common.config import Settings
from tests.browser import DESKTOP_USER_AGENT, HOST_RULES, PageOrigin, require_chromium
from tests.conftest import drain

if TYPE_CHECKING:  # imported as a plugin below, which must come first
    from tests.npm_clients import NpmClients

pytest_plugins = ("tests.npm_clients",)

WEBSITE = "6f7a2b1c-3d4e-4f50-8a6b-7c8d9e0f1a2b"
NODE_SECONDS = 30
# The columns a client's event gives, as stored.
STORED = (
    "site_id event_type path hostname referrer source utm_source utm_medium click_id"
    " screen_width device browser browser_version os props interactive"
).split()


async def stored_events(db: asyncpg.Pool) -> dict[str, dict[str, Any]]:
    """Every stored event by its id, in the order of receipt."""
    rows = await db.fetch(
        f"SELECT event_id::text, {', '.join(STORED)} FROM events ORDER BY received_at"
    )
    return {
        row.pop("event_id"): {**row, "props": orjson.loads(row["props"] or "null")}
        for row in map(dict, rows)
    }


# --- @umami/node ----------------------------------------------------------------------

# As its README shows it used, in CommonJS: the package is CommonJS for node (no "type" or
# "exports"; its ES module build is only named in "module", for bundlers), so the README's
# `import umami from '@umami/node'` gives node the module object, with the client in
# .default. Each answer is read back so that a failure can say what the server answered
# (the client itself never looks).
UMAMI_SCRIPT = """
const umami = require('@umami/node').default;

async function main([hostUrl, websiteId]) {
  umami.init({ websiteId, hostUrl });
  const answers = [];
  for (const send of [
    () => umami.track({ url: '/pricing?utm_source=newsletter', title: 'Pricing', hostname: 'shop.example' }),
    () => umami.track('signup', { plan: 'pro', seats: 3 }),
    () => umami.identify({ company: 'Acme' }),
  ]) {
    const response = await send();
    answers.push({ status: response.status, body: await response.text() });
  }
  console.log(JSON.stringify({ node: process.version, answers }));
}

main(process.argv.slice(2));
"""


@contextlib.contextmanager
def script_folder(npm_clients: NpmClients, script: str) -> Iterator[str]:
    """A folder with the script as client.cjs, whose node_modules are the installed
    clients (so that it requires them by their package names)."""
    with tempfile.TemporaryDirectory() as folder:
        os.symlink(npm_clients.node_modules, Path(folder, "node_modules"))
        Path(folder, "client.cjs").write_text(script)
        yield folder


async def run_node(npm_clients: NpmClients, script: str, *args: str) -> dict[str, Any]:
    """What the script printed, as JSON."""
    node = shutil.which("node")
    assert node is not None, "node is not installed"
    with script_folder(npm_clients, script) as folder:
        process = await asyncio.create_subprocess_exec(
            node,
            "client.cjs",
            *args,
            cwd=folder,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), NODE_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(f"node did not finish within {NODE_SECONDS} s") from None
    assert process.returncode == 0, f"node exited with {process.returncode}:\n{stderr.decode()}"
    return dict(orjson.loads(stdout))


async def test_umami_node_page_view_and_custom_event_are_stored_and_identify_is_not(
    npm_clients: NpmClients,
    settings: Settings,
    db: asyncpg.Pool,
    redis_client: redis.Redis,
    start_server: Callable[[Settings], str],
) -> None:
    settings = dataclasses.replace(settings, store_client_info=True)  # to see its agent
    base_url = start_server(settings)
    result = await run_node(npm_clients, UMAMI_SCRIPT, base_url, WEBSITE)
    answers = [(a["status"], orjson.loads(a["body"])) for a in result["answers"]]
    # Stored events are answered with their id, not "beep boop" (a bot's answer): the
    # client's own User-Agent is not taken for a bot.
    assert [status for status, _ in answers] == [200, 200, 200]
    assert [list(body) for _, body in answers] == [["event_id"], ["event_id"], []]

    await drain(settings, redis_client, db)
    stored = await stored_events(db)
    assert list(stored) == [body["event_id"] for _, body in answers[:2]]
    page_view, custom = stored.values()
    agents = await db.fetch("SELECT DISTINCT user_agent FROM events")
    assert [row["user_agent"] for row in agents] == [f"Mozilla/5.0 Umami/{result['node']}"]
    # The agent names no browser, system or device: nothing is made up for them.
    assert page_view == {
        **dict.fromkeys(STORED),
        "site_id": WEBSITE,
        "event_type": "page_view",
        "path": "/pricing",
        "hostname": "shop.example",
        "source": "newsletter",
        "utm_source": "newsletter",
        "interactive": True,
    }
    assert custom == {
        **dict.fromkeys(STORED),
        "site_id": WEBSITE,
        "event_type": "signup",
        "path": "/",  # the client sends no url with a named event
        "props": {"plan": "pro", "seats": "3"},
        "interactive": True,
    }


# --- @plausible-analytics/tracker -----------------------------------------------------

TRACKER_PATH = "/js/plausible.js"
WAIT_SECONDS = 10


@pytest.fixture
def site_server(npm_clients: NpmClients) -> Iterator[PageOrigin]:
    """The pages' own origin, as a site that bundles the tracker serves it: its pages, and
    the package's ES module build as it is in node_modules."""
    tracker = npm_clients.file("@plausible-analytics/tracker", "plausible.js")
    with PageOrigin() as server:
        server.files[TRACKER_PATH] = (tracker.read_bytes(), "text/javascript")
        yield server


def app_page(endpoint: str, **options: object) -> str:
    """A page that imports the tracker and starts it as its README says. The tracker sends
    nothing from an automated browser (navigator.webdriver, which Playwright's Chromium
    sets) unless window.__plausible is set: its own rule, for Plausible's tests."""
    config = orjson.dumps({"domain": "shop.example", "endpoint": endpoint, **options}).decode()
    return (
        "<!doctype html><html><head><title>Shop</title>"
        "<script>window.__plausible = true</script>"
        '<script type="module">'
        f"import {{ init, track }} from '{TRACKER_PATH}';"
        f"init({config});"
        "window.track = track;"  # for the test to call, as the app's own code would
        "</script></head><body><p>the shop</p></body></html>"
    )


class Tracked:
    """What the page sent to the ingest server, and each answer's status and
    x-plausible-dropped header (how many of its events were not stored)."""

    def __init__(self, page: Page, endpoint: str) -> None:
        self.sent: list[dict[str, Any]] = []
        self.answers: list[tuple[int, str | None]] = []

        def on_request(request: Request) -> None:
            if request.url == endpoint and request.method == "POST":
                self.sent.append(orjson.loads(request.post_data or "null"))

        def on_response(response: Response) -> None:
            if response.url == endpoint and response.request.method == "POST":
                self.answers.append((response.status, response.headers.get("x-plausible-dropped")))

        page.on("request", on_request)
        page.on("response", on_response)

    async def answered(self, count: int) -> list[tuple[int, str | None]]:
        """The answers, once `count` requests have been answered."""
        deadline = time.monotonic() + WAIT_SECONDS
        while len(self.answers) < count:
            assert time.monotonic() < deadline, f"{self}"
            await asyncio.sleep(0.05)
        return self.answers

    async def stored(self, client: redis.Redis, stream_key: str, count: int) -> None:
        """Wait until the stream holds `count` events."""
        deadline = time.monotonic() + WAIT_SECONDS
        while (arrived := await client.xlen(stream_key)) < count:
            assert time.monotonic() < deadline, f"{arrived} of {count} events arrived; {self}"
            await asyncio.sleep(0.05)

    def __str__(self) -> str:
        return f"the page sent {self.sent}, answered {self.answers}"


@contextlib.asynccontextmanager
async def desktop_chromium() -> AsyncIterator[Page]:
    """A page of headless chromium with a desktop User-Agent; *.example is 127.0.0.1."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=require_chromium(),
            headless=True,
            args=[HOST_RULES],
        )
        try:
            context = await browser.new_context(user_agent=DESKTOP_USER_AGENT)
            yield await context.new_page()
        finally:
            await browser.close()


def unordered(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows in an order of their own: a navigation sends two requests at once."""
    return sorted(rows, key=lambda row: (row["path"], row["event_type"]))


def row(**columns: object) -> dict[str, Any]:
    """A stored event of the browser's: what its User-Agent says, the rest as given."""
    return {
        **dict.fromkeys(STORED),
        "hostname": "shop.example",
        "site_id": "shop.example",
        "device": "Desktop",
        "browser": "Chrome",
        "browser_version": "131.0",
        "os": "Linux",
        "interactive": True,
        **columns,
    }


async def test_the_plausible_npm_tracker_in_a_browser_sends_a_visit_stored_once_each(
    site_server: PageOrigin,
    settings: Settings,
    db: asyncpg.Pool,
    redis_client: redis.Redis,
    start_server: Callable[[Settings], str],
) -> None:
    endpoint = f"{start_server(settings)}/api/event"
    site_server.pages["/landing"] = app_page(endpoint)
    site_server.pages["/article"] = f'<a id="shop" href="{site_server.url("/landing")}">shop</a>'

    async with desktop_chromium() as page:
        tracked = Tracked(page, endpoint)
        await page.goto(site_server.url("/article", "news.example"))
        await page.click("#shop")
        await tracked.stored(redis_client, settings.stream_key, 1)
        # Each navigation sends the page left's engagement and the new page's view.
        await page.evaluate("history.pushState({}, '', '/products?id=1')")
        await tracked.stored(redis_client, settings.stream_key, 3)
        await page.evaluate("history.pushState({}, '', '/checkout')")
        await tracked.stored(redis_client, settings.stream_key, 5)
        answer = await page.evaluate(
            "() => new Promise(resolve =>"
            "  track('Signup', {props: {plan: 'pro'}, callback: resolve}))"
        )
        await tracked.stored(redis_client, settings.stream_key, 6)
        assert await tracked.answered(6) == [(202, None)] * 6

    assert answer == {"status": 202}  # the tracker read our answer (CORS allowed it)
    assert [event["n"] for event in tracked.sent] == [
        "pageview", "engagement", "pageview", "engagement", "pageview", "Signup",
    ]  # fmt: skip
    await drain(settings, redis_client, db)
    referred = {"referrer": "news.example", "source": "news.example"}
    assert unordered((await stored_events(db)).values()) == unordered(
        [
            row(event_type="page_view", path="/landing", **referred),
            row(event_type="engagement", path="/landing", interactive=False),
            row(event_type="page_view", path="/products", **referred),
            row(event_type="engagement", path="/products", interactive=False),
            row(event_type="page_view", path="/checkout", **referred),
            row(event_type="Signup", path="/checkout", props={"plan": "pro"}, **referred),
        ]
    )
    # Engagement events are stored but are not page views; one visitor sent them all.
    stats = await db.fetch("SELECT site_id, total_views, unique_users FROM daily_site_stats")
    assert list(map(tuple, stats)) == [("shop.example", 3, 1)]


async def test_the_plausible_npm_tracker_with_hash_routing_stores_the_hash_route_as_path(
    site_server: PageOrigin,
    settings: Settings,
    db: asyncpg.Pool,
    redis_client: redis.Redis,
    start_server: Callable[[Settings], str],
) -> None:
    endpoint = f"{start_server(settings)}/api/event"
    site_server.pages["/app"] = app_page(endpoint, hashBasedRouting=True)

    async with desktop_chromium() as page:
        tracked = Tracked(page, endpoint)
        await page.goto(site_server.url("/app#/home"))
        await tracked.stored(redis_client, settings.stream_key, 1)
        await page.evaluate("location.hash = '#/settings'")
        await tracked.stored(redis_client, settings.stream_key, 3)
        await page.evaluate("track('Signup', {props: {plan: 'pro'}})")
        await tracked.stored(redis_client, settings.stream_key, 4)
        assert await tracked.answered(4) == [(202, None)] * 4

    assert [(event["n"], event["h"]) for event in tracked.sent] == [
        ("pageview", 1), ("engagement", 1), ("pageview", 1), ("Signup", 1),
    ]  # fmt: skip
    await drain(settings, redis_client, db)
    assert unordered((await stored_events(db)).values()) == unordered(
        [
            row(event_type="page_view", path="/app#/home"),
            row(event_type="engagement", path="/app#/home", interactive=False),
            row(event_type="page_view", path="/app#/settings"),
            row(event_type="Signup", path="/app#/settings", props={"plan": "pro"}),
        ]
    )


# --- Umami's own tracker, in a browser --------------------------------------------------

UMAMI_SCRIPT_PATH = "/umami.js"


async def test_umamis_tracker_in_a_browser_sends_a_visit_stored_once_each(
    umami_tracker: bytes,
    site_server: PageOrigin,
    settings: Settings,
    db: asyncpg.Pool,
    redis_client: redis.Redis,
    start_server: Callable[[Settings], str],
) -> None:
    """Umami's script.js (src/tracker/index.js of the npm package umami 2.10.0: its build
    only minifies it), served by the site, data-host-url pointing here. (Chromium sends
    another site only its origin as the referrer.) It sends the
    whole answer back in x-umami-cache on every later event (as Umami 2's server gave it
    a token): the preflights must allow that header, and the server ignores it."""
    site_server.files[UMAMI_SCRIPT_PATH] = (umami_tracker, "text/javascript")
    ingest_url = start_server(settings)
    endpoint = f"{ingest_url}/api/send"
    site_server.pages["/landing"] = (
        "<!doctype html><html><head><title>Shop</title>"
        f'<script defer src="{UMAMI_SCRIPT_PATH}" data-website-id="{WEBSITE}"'
        f' data-host-url="{ingest_url}"></script></head><body><p>the shop</p></body></html>'
    )
    site_server.pages["/article"] = f'<a id="shop" href="{site_server.url("/landing")}">shop</a>'

    caches: list[str | None] = []
    async with desktop_chromium() as page:
        tracked = Tracked(page, endpoint)
        page.on(
            "request",
            lambda r: (
                caches.append(r.headers.get("x-umami-cache"))
                if r.url == endpoint and r.method == "POST"
                else None
            ),
        )
        await page.goto(site_server.url("/article", "news.example"))
        await page.click("#shop")
        await tracked.stored(redis_client, settings.stream_key, 1)
        await page.evaluate("history.pushState({}, '', '/pricing?plan=team')")
        await tracked.stored(redis_client, settings.stream_key, 2)
        await page.evaluate("umami.track('signup', {plan: 'pro', seats: 3})")
        await tracked.stored(redis_client, settings.stream_key, 3)
        assert [status for status, _ in await tracked.answered(3)] == [200] * 3

    assert [event["type"] for event in tracked.sent] == ["event"] * 3
    # The first went without; each later one carried an earlier answer back.
    assert caches[0] is None and all(c and "event_id" in c for c in caches[1:]), caches
    await drain(settings, redis_client, db)
    umami = {"site_id": WEBSITE, "screen_width": 1280}
    assert list((await stored_events(db)).values()) == [
        row(event_type="page_view", path="/landing", referrer="news.example",
            source="news.example", **umami),
        # A navigation's referrer is the page before it, of the same site: no source.
        row(event_type="page_view", path="/pricing", **umami),
        row(event_type="signup", path="/pricing", props={"plan": "pro", "seats": "3"}, **umami),
    ]  # fmt: skip
