"""Manage the site registry: `python -m sites add|list|show|update|remove`.

Exit status: 0 done, 1 refused (a site unknown or registered already, a bad domain or
time zone: nothing was changed), 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

import asyncpg

from common.config import Settings, redact_url, settings_or_exit
from common.migrate import DatabaseUnfit, prepare_database
from sites import registry
from sites.model import Site, SiteError, check_domain, check_site_id, check_time_zone


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sites", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add = commands.add_parser("add", help="register a site")
    add.add_argument("site_id", metavar="SITE_ID")
    add.add_argument(
        "--domain",
        action="append",
        default=[],
        metavar="D",
        help="a hostname it may be tracked from; *.example.com for all its subdomains too "
        "(repeat for several)",
    )
    add.add_argument("--time-zone", default="UTC", metavar="TZ", help="e.g. Europe/Berlin")

    commands.add_parser("list", help="every registered site, a line each")

    show = commands.add_parser("show", help="one site in full")
    show.add_argument("site_id", metavar="SITE_ID")

    update = commands.add_parser("update", help="change a site's domains or time zone")
    update.add_argument("site_id", metavar="SITE_ID")
    update.add_argument("--add-domain", action="append", default=[], metavar="D")
    update.add_argument("--remove-domain", action="append", default=[], metavar="D")
    update.add_argument("--time-zone", metavar="TZ")

    remove = commands.add_parser("remove", help="unregister a site")
    remove.add_argument("site_id", metavar="SITE_ID")
    remove.add_argument(
        "--delete-data",
        action="store_true",
        help="also delete its events and aggregates, in the same transaction",
    )
    return parser


def _describe(site: Site) -> str:
    return "\n".join(
        [
            f"site_id:    {site.site_id}",
            f"domains:    {', '.join(site.domains) or '(any)'}",
            f"time zone:  {site.time_zone}",
            f"created at: {site.created_at.isoformat(timespec='seconds')}",
            f"updated at: {site.updated_at.isoformat(timespec='seconds')}",
        ]
    )


async def _run(args: argparse.Namespace, conn: asyncpg.Connection) -> str:
    """What to print; raises SiteError for anything refused."""
    if args.command == "list":
        sites = await registry.all_sites(conn)
        if not sites:
            return "no sites registered"
        width = max(len(site.site_id) for site in sites)
        return "\n".join(
            f"{site.site_id:<{width}}  {site.time_zone:<20}  {', '.join(site.domains) or '(any)'}"
            for site in sites
        )
    site_id = check_site_id(args.site_id)
    if args.command == "add":
        domains = [check_domain(d) for d in args.domain]
        site = await registry.add(conn, site_id, domains, check_time_zone(args.time_zone))
        return "registered\n" + _describe(site)
    if args.command == "show":
        return _describe(await registry.get(conn, site_id))
    if args.command == "update":
        time_zone = None if args.time_zone is None else check_time_zone(args.time_zone)
        site = await registry.update(
            conn,
            site_id,
            add_domains=[check_domain(d) for d in args.add_domain],
            remove_domains=[check_domain(d) for d in args.remove_domain],
            time_zone=time_zone,
        )
        return "updated\n" + _describe(site)
    deleted = await registry.remove(conn, site_id, delete_data=args.delete_data)
    lines = [f"removed site {site_id}"]
    lines += [f"deleted {count} rows from {table}" for table, count in deleted.items()]
    if args.delete_data:
        lines.append("events for it still in the stream, or sent from now on, are stored again")
    return "\n".join(lines)


async def _with_database(
    settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[str]]
) -> str:
    await prepare_database(settings.database_url)
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await work(conn)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = settings_or_exit()
    try:
        output = asyncio.run(_with_database(settings, lambda conn: _run(args, conn)))
    except SiteError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except (OSError, asyncpg.PostgresError, DatabaseUnfit) as exc:
        sys.stderr.write(f"error: the database at {redact_url(settings.database_url)}: {exc}\n")
        return 2
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
