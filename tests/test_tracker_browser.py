"""The tracker in a real browser: Debian's chromium, headless, driven by Playwright.

A real ingest server serves /script.js and takes the events (the test's own stream); the
test pages come from a second origin, a small threaded http.server whose host names
(shop.example, news.example, stats.example for the ingest server) Chromium resolves to
127.0.0.1, so that the page is not localhost. What a visitor's browser sends is read back
from the stream, in order, with its fields.

Absence is shown without sleeping: the script says why it sends nothing (a console
warning, awaited), then a page that may send does so, and the stream holds only that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from email.message import Message
from typing import Any

import orjson
import pytest
import redis.asyncio as redis
from playwright.async_api import BrowserContext, Page, async_playwright

from common.config import Settings
from common.constants import EVENT_FIELD
from tests.browser import DESKTOP_USER_AGENT, HOST_RULES, PageOrigin, PostHandler, require_chromium

SCREEN = {"width": 1440, "height": 900}
QUEUE_SNIPPET = (
    "window.beacon = window.beacon || function () "
    "{ (window.beacon.q = window.beacon.q || []).push(arguments) };"
)
# What the tracker sends, as the stream carries it (the edge adds ids and times).
FIELDS = ("site_id", "event_type", "url", "referrer", "screen_width", "props", "path")
WAIT_SECONDS = 10


def first_party_proxy(ingest_url: str, proxied: list[bytes]) -> PostHandler:
    """POST /proxy/event forwarded to the ingest server, as a site's reverse proxy would
    do it for data-api; what passed is kept in `proxied`."""

    def forward(path: str, body: bytes, headers: Message) -> tuple[int, bytes]:
        if path != "/proxy/event":
            return 404, b"not found"
        proxied.append(body)
        forwarded = urllib.request.Request(
            f"{ingest_url}/event",
            data=body,
            headers={
                "content-type": headers.get("content-type", "text/plain"),
                "user-agent": headers.get("user-agent", ""),
            },
        )
        try:
            with urllib.request.urlopen(forwarded, timeout=5) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read()

    return forward


class Site:
    """One test's world: the ingest server, the page origin, the stream to read."""

    def __init__(
        self, settings: Settings, client: redis.Redis, pages: PageOrigin, proxied: list[bytes]
    ) -> None:
        self.stream_key = settings.stream_key
        self.redis = client
        self.pages = pages.pages
        self.proxied = proxied
        self.port = pages.port
        self.script_src = f"http://stats.example:{settings.port}/script.js"

    def url(self, path: str, host: str = "shop.example") -> str:
        return f"http://{host}:{self.port}{path}"

    def add_page(self, path: str, attributes: str, queued: str = "") -> str:
        """A page that loads the tracker with these attributes (and calls made before it
        loads, through the queue snippet); its URL on shop.example."""
        self.pages[path.split("#")[0]] = (
            "<!doctype html><html><head><title>t</title>"
            f"<script>{QUEUE_SNIPPET}{queued}</script>"
            f'<script defer src="{self.script_src}" {attributes}></script>'
            "</head><body><p>a page</p></body></html>"
        )
        return self.url(path)

    async def events(self) -> list[dict[str, Any]]:
        entries = await self.redis.xrange(self.stream_key)
        return [orjson.loads(fields[EVENT_FIELD]) for _, fields in entries]

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        """The stream's events once it holds `count` of them (more fail the caller's
        comparison); fails at the deadline with what did arrive."""
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            events = await self.events()
            if len(events) >= count:
                return events
            assert time.monotonic() < deadline, (
                f"{len(events)} of {count} events arrived: {[sent(e) for e in events]}"
            )
            await asyncio.sleep(0.05)


def sent(event: dict[str, Any]) -> dict[str, Any]:
    """The fields the tracker sets, as stored."""
    return {field: event[field] for field in FIELDS if field in event}


@pytest.fixture
def site(
    settings: Settings, redis_client: redis.Redis, start_server: Callable[[Settings], str]
) -> Iterator[Site]:
    ingest_url = start_server(settings)
    proxied: list[bytes] = []
    with PageOrigin(first_party_proxy(ingest_url, proxied)) as pages:
        yield Site(settings, redis_client, pages, proxied)


def write_preferences(profile: str, preferences: dict[str, Any]) -> None:
    """A new Chromium profile's preferences, as its settings page would save them."""
    os.mkdir(os.path.join(profile, "Default"))
    with open(os.path.join(profile, "Default", "Preferences"), "w") as file:
        json.dump(preferences, file)


@contextlib.asynccontextmanager
async def browser(
    *, do_not_track: bool = False, gpc: bool = False
) -> AsyncIterator[BrowserContext]:
    """Headless chromium with a desktop User-Agent; with the visitor's privacy signals
    turned on the way the browser itself does: Do-Not-Track is a profile preference,
    Global Privacy Control a Chromium feature (navigator.globalPrivacyControl)."""
    args = [HOST_RULES]
    if gpc:
        args.append("--enable-features=GlobalPrivacyControl,GlobalPrivacyControlForce")
    with tempfile.TemporaryDirectory() as profile:
        write_preferences(profile, {"enable_do_not_track": do_not_track})
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile,
                executable_path=require_chromium(),
                headless=True,
                args=args,
                user_agent=DESKTOP_USER_AGENT,
                screen=SCREEN,
                viewport={"width": 1200, "height": 800},
            )
            try:
                yield context
            finally:
                await context.close()


async def goto_and_hear_refusal(page: Page, url: str, reason: str) -> None:
    """Load the page and wait for the tracker's warning that it sent nothing, and why."""
    async with page.expect_console_message(
        lambda message: message.text == f"beacon: not sent: {reason}", timeout=WAIT_SECONDS * 1000
    ):
        await page.goto(url)


async def a_page_that_sends(site: Site, page: Page) -> dict[str, Any]:
    """Load a page that may send, and wait for its page view: the sentinel after a page
    that must not have sent anything."""
    url = site.add_page("/sentinel", 'data-site="sentinel" data-allow-automation')
    before = len(await site.events())
    await page.goto(url)
    events = await site.wait_for(before + 1)
    assert sent(events[-1])["site_id"] == "sentinel"
    return events[-1]


async def test_a_visit_sends_each_page_view_and_custom_event_once_with_its_fields(
    site: Site,
) -> None:
    landing = site.add_page(
        "/landing",
        'data-site="shop.example" data-allow-automation',
        queued='beacon("queued_early", {props: {plan: "pro"}});',
    )
    site.pages["/article/42"] = f'<a id="out" href="{landing}">shop</a>'
    referrer = site.url("/", "news.example")  # strict-origin-when-cross-origin: the origin
    base = {"site_id": "shop.example", "referrer": referrer, "screen_width": SCREEN["width"]}

    def page_view(path: str) -> dict[str, Any]:
        return {**base, "event_type": "page_view", "url": site.url(path)}

    async with browser() as context:
        page = await context.new_page()
        await page.goto(site.url("/article/42", "news.example"))
        await page.click("#out")
        # The page view and the call queued before the script loaded leave in the same
        # moment, on two connections: either may reach the stream first.
        arrived = await site.wait_for(2)
        assert sorted(map(sent, arrived), key=lambda e: e["event_type"] != "page_view") == [
            page_view("/landing"),
            {**base, "event_type": "queued_early", "url": landing, "props": {"plan": "pro"}},
        ]
        expected = [sent(event) for event in arrived]

        await page.evaluate("history.pushState({}, '', '/products?id=1')")
        expected.append(page_view("/products?id=1"))
        assert list(map(sent, await site.wait_for(3))) == expected

        # Neither a jump to an anchor nor a replaceState that keeps the URL (scroll
        # restoration) is a new page view: the next one comes straight after.
        await page.evaluate("location.hash = 'reviews'")
        await page.evaluate("history.replaceState({scrollY: 120}, '', location.href)")
        await page.evaluate("history.pushState({}, '', '/checkout')")
        expected.append(page_view("/checkout"))
        assert list(map(sent, await site.wait_for(4))) == expected

        await page.evaluate("beacon('signup', {props: {plan: 'team', seats: '5'}})")
        expected.append(
            {
                **base,
                "event_type": "signup",
                "url": site.url("/checkout"),
                "props": {"plan": "team", "seats": "5"},
            }
        )
        assert list(map(sent, await site.wait_for(5))) == expected

        await page.evaluate("history.back()")  # popstate
        expected.append(page_view("/products?id=1#reviews"))
        assert list(map(sent, await site.wait_for(6))) == expected

        # Empty props are left out; and nothing else arrived before this last event.
        await page.evaluate("beacon('done', {props: {}})")
        expected.append({**page_view("/products?id=1#reviews"), "event_type": "done"})
        assert list(map(sent, await site.wait_for(7))) == expected


async def test_hash_routing_sends_the_path_with_its_hash(site: Site) -> None:
    app = site.add_page("/app#/home", 'data-site="shop.example" data-hash data-allow-automation')
    async with browser() as context:
        page = await context.new_page()
        await page.goto(app)
        expected: list[dict[str, Any]] = []
        # Assigning the hash fires hashchange and popstate: one page view.
        steps = [
            ("", "/app#/home"),
            ("location.hash = '#/settings'", "/app#/settings"),
            ("history.pushState(null, '', '#/profile')", "/app#/profile"),
            ("history.back()", "/app#/settings"),
        ]
        for script, path in steps:
            if script:
                await page.evaluate(script)
            expected.append(
                {
                    "site_id": "shop.example",
                    "event_type": "page_view",
                    "url": site.url(path),
                    "screen_width": SCREEN["width"],
                    "path": path,
                }
            )
            assert list(map(sent, await site.wait_for(len(expected)))) == expected
        await page.evaluate("beacon('opened_menu')")
        expected.append({**expected[-1], "event_type": "opened_menu"})
        assert list(map(sent, await site.wait_for(len(expected)))) == expected


async def test_a_page_with_a_very_long_url_still_counts(site: Site) -> None:
    """The server takes at most 2,000 bytes of url: the tracker cuts it there."""
    page_url = site.add_page("/search", 'data-site="shop.example" data-allow-automation')
    long_url = page_url + "?q=" + "x" * 3_000
    async with browser() as context:
        page = await context.new_page()
        await page.goto(long_url)
        [event] = await site.wait_for(1)
    assert event["url"] == long_url[:2_000]
    assert "path" not in event  # the processor takes it from the url


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_a_local_page_sends_nothing_unless_allowed(site: Site, host: str) -> None:
    site.add_page("/dev", "data-site=dev data-allow-automation", queued='beacon("queued");')
    site.add_page("/dev-allowed", "data-site=dev data-allow-automation data-allow-localhost")
    async with browser() as context:
        page = await context.new_page()
        await goto_and_hear_refusal(page, site.url("/dev", host), "localhost")
        await page.evaluate("beacon('clicked')")
        sentinel = await a_page_that_sends(site, page)
        assert await site.events() == [sentinel]

        await page.goto(site.url("/dev-allowed", host))
        [*_, allowed] = await site.wait_for(2)
        assert sent(allowed) == {
            "site_id": "dev",
            "event_type": "page_view",
            "url": site.url("/dev-allowed", host),
            "screen_width": SCREEN["width"],
        }


async def test_an_automated_browser_sends_nothing_unless_allowed(site: Site) -> None:
    # Playwright's chromium says navigator.webdriver = true, as Selenium's would.
    robot = site.add_page("/robot", 'data-site="shop.example"', queued='beacon("queued");')
    async with browser() as context:
        page = await context.new_page()
        assert await page.evaluate("navigator.webdriver") is True
        await goto_and_hear_refusal(page, robot, "automation")
        sentinel = await a_page_that_sends(site, page)
        assert await site.events() == [sentinel]


@pytest.mark.parametrize("signal", ["do_not_track", "gpc"])
async def test_a_visitor_who_asks_not_to_be_tracked_is_not_where_the_site_respects_it(
    site: Site, signal: str
) -> None:
    respecting = site.add_page(
        "/private", 'data-site="shop.example" data-allow-automation data-respect-dnt'
    )
    ignoring = site.add_page("/public", 'data-site="shop.example" data-allow-automation')
    async with browser(**{signal: True}) as context:
        page = await context.new_page()
        asked = (
            "navigator.doNotTrack" if signal == "do_not_track" else "navigator.globalPrivacyControl"
        )
        assert await page.evaluate(asked) in ("1", True)
        await goto_and_hear_refusal(page, respecting, "do not track")
        sentinel = await a_page_that_sends(site, page)
        assert await site.events() == [sentinel]
        # Without data-respect-dnt the same visitor is counted.
        await page.goto(ignoring)
        [*_, counted] = await site.wait_for(2)
        assert (counted["event_type"], counted["url"]) == ("page_view", ignoring)


async def test_data_api_sends_to_a_first_party_proxy(site: Site) -> None:
    proxied = site.add_page(
        "/proxied", 'data-site="shop.example" data-allow-automation data-api="/proxy/event"'
    )
    async with browser() as context:
        page = await context.new_page()
        await page.goto(proxied)
        await page.evaluate("beacon('through_proxy', {props: {via: 'proxy'}})")
        events = await site.wait_for(2)
    assert [sent(event)["event_type"] for event in events] == ["page_view", "through_proxy"]
    # Both went through the page's own origin, none straight to the ingest server's /event.
    assert sorted(orjson.loads(body)["event_type"] for body in site.proxied) == [
        "page_view",
        "through_proxy",
    ]


@pytest.mark.parametrize(
    "without_beacon",
    ["delete Navigator.prototype.sendBeacon", "Navigator.prototype.sendBeacon = () => false"],
    ids=["missing", "refusing"],
)
async def test_fetch_with_keepalive_stands_in_for_send_beacon(
    site: Site, without_beacon: str
) -> None:
    url = site.add_page("/old", 'data-site="shop.example" data-allow-automation')
    async with browser() as context:
        await context.add_init_script(without_beacon)
        page = await context.new_page()
        await page.goto(url)
        await page.evaluate("beacon('clicked', {props: {button: 'buy'}})")
        events = await site.wait_for(2)
    assert sorted(sent(event)["event_type"] for event in events) == ["clicked", "page_view"]
    assert {"button": "buy"} in [event.get("props") for event in events]
