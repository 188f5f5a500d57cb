"""`python -m sites` end to end against the test database: the registry's commands and
what they refuse, with nothing half-done."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as redis

from common.config import Settings
from sites.model import SiteError, check_domain
from tests.conftest import drain, run_module
from tests.test_processor import enqueue


@pytest.fixture
async def registry_db(db: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    await db.execute("TRUNCATE sites")
    yield db
    await db.execute("TRUNCATE sites")


async def sites(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_module, settings, "sites", *args)


async def test_a_site_may_carry_its_umami_website_id_one_site_each(
    settings: Settings, registry_db: asyncpg.Pool
) -> None:
    website = "6f7a2b1c-3d4e-4f50-8a6b-7c8d9e0f1a2b"
    added = await sites(settings, "add", "shop", "--umami-website", website.upper())
    assert added.returncode == 0, added.stderr
    assert f"umami id:   {website}" in added.stdout  # in canonical form
    taken = await sites(settings, "add", "blog", "--umami-website", website)
    assert taken.returncode == 1 and "belongs to another site" in taken.stderr
    assert await registry_db.fetchval("SELECT count(*) FROM sites") == 1  # nothing half-done
    bad = await sites(settings, "update", "shop", "--umami-website", "not-a-uuid")
    assert bad.returncode == 1 and "not a UUID" in bad.stderr
    dropped = await sites(settings, "update", "shop", "--no-umami-website")
    assert "umami id:   (none)" in dropped.stdout
    assert (await sites(settings, "add", "blog", "--umami-website", website)).returncode == 0


async def test_a_site_is_added_listed_shown_updated_and_removed(
    settings: Settings, registry_db: asyncpg.Pool
) -> None:
    added = await sites(
        settings, "add", "shop", "--domain", "Shop.Example", "--domain", "*.blog.example",
        "--time-zone", "Europe/Berlin",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "domains:    *.blog.example, shop.example" in added.stdout
    row = await registry_db.fetchrow("SELECT domains, time_zone FROM sites WHERE site_id = 'shop'")
    assert (row["domains"], row["time_zone"]) == (
        ["*.blog.example", "shop.example"],
        "Europe/Berlin",
    )

    assert (await sites(settings, "add", "blog")).returncode == 0
    listed = await sites(settings, "list")
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["blog", "shop"]
    assert "UTC" in listed.stdout.splitlines()[0] and "(any)" in listed.stdout

    updated = await sites(
        settings, "update", "shop", "--add-domain", "bücher.example",
        "--remove-domain", "*.blog.example", "--time-zone", "America/New_York",
    )  # fmt: skip
    assert updated.returncode == 0, updated.stderr
    shown = await sites(settings, "show", "shop")
    assert "domains:    shop.example, xn--bcher-kva.example" in shown.stdout
    assert "time zone:  America/New_York" in shown.stdout

    removed = await sites(settings, "remove", "shop")
    assert (removed.returncode, removed.stdout.strip()) == (0, "removed site shop")
    assert await registry_db.fetchval("SELECT array_agg(site_id) FROM sites") == ["blog"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "shop", "--time-zone", "Mars/Olympus"], "not an IANA time zone"),
        (["add", "shop", "--domain", "https://shop.example/"], "without scheme, port or path"),
        (["add", "shop", "--domain", "shop..example"], "not a hostname"),
        (["add", "shop", "--domain", "ok.example", "--domain=-bad.example"], "not a hostname"),
        (["add", "x" * 129], "longer than 128 bytes"),
        (["add", "existing"], "registered already"),
        (["show", "missing"], "not registered"),
        (["update", "missing", "--time-zone", "UTC"], "not registered"),
        (
            ["update", "existing", "--add-domain", "ok.example", "--time-zone", "Nowhere"],
            "time zone",
        ),
        (["remove", "missing", "--delete-data"], "not registered"),
    ],
)
async def test_refused_commands_say_why_and_change_nothing(
    args: list[str], message: str, settings: Settings, registry_db: asyncpg.Pool
) -> None:
    assert (await sites(settings, "add", "existing", "--domain", "a.example")).returncode == 0
    before = [tuple(r) for r in await registry_db.fetch("SELECT * FROM sites")]
    refused = await sites(settings, *args)
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert message in refused.stderr and refused.stderr.startswith("error: ")
    assert [tuple(r) for r in await registry_db.fetch("SELECT * FROM sites")] == before


async def test_usage_errors_exit_2(settings: Settings) -> None:
    for args in ([], ["frobnicate"], ["add"], ["update", "shop", "--time-zone"]):
        done = await sites(settings, *args)
        assert done.returncode == 2, args
        assert "usage: python -m sites" in done.stderr


async def test_removing_with_its_data_deletes_every_row_of_that_site_only(
    settings: Settings, registry_db: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    events = [
        {"site_id": site, "event_type": "page_view", "path": f"/{n}", "user_id": f"u{n}"}
        for site in ("shop", "blog")
        for n in range(3)
    ]
    await enqueue(redis_client, settings, events)
    await drain(settings, redis_client, registry_db)
    assert (await sites(settings, "add", "shop")).returncode == 0

    removed = await sites(settings, "remove", "shop", "--delete-data")

    assert removed.returncode == 0, removed.stderr
    assert "deleted 3 rows from events" in removed.stdout
    assert "deleted 1 rows from daily_site_stats" in removed.stdout
    for table in ("events", "event_ids", "daily_site_stats", "daily_site_path_counts"):
        sites_left = await registry_db.fetch(f"SELECT DISTINCT site_id FROM {table}")
        assert [r["site_id"] for r in sites_left] == ["blog"], table


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        ("Shop.Example.", "shop.example"),
        ("*.Shop.Example", "*.shop.example"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("localhost", "localhost"),
    ],
)
def test_domains_are_kept_as_an_origin_names_them(text: str, domain: str) -> None:
    assert check_domain(text) == domain


@pytest.mark.parametrize(
    "text", ["shop.example:8080", "*.", "a" * 64 + ".example", "shop_example.com", "*.*.example"]
)
def test_what_is_not_a_hostname_is_refused(text: str) -> None:
    with pytest.raises(SiteError):
        check_domain(text)
