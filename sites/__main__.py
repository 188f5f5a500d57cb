"""Manage the site registry: `python -m sites add|list|show|update|remove|erase-user`
and the reporting API's keys: `python -m sites key create|list|revoke`.

Exit status: 0 done, 1 refused (a site or key unknown or there already, a bad domain,
time zone or scope: nothing was changed), 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

import asyncpg

from common.config import Settings, redact_url, settings_or_exit
from common.migrate import DatabaseUnfit, prepare_database
from sites import keys, registry
from sites.model import (
    Site,
    SiteError,
    check_domain,
    check_site_id,
    check_time_zone,
    check_umami_website_id,
    check_user_id,
)


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
    add.add_argument(
        "--umami-website",
        metavar="UUID",
        help="its website id in Umami's tracker: events sent to /api/send with it are this site's",
    )

    commands.add_parser("list", help="every registered site, a line each")

    show = commands.add_parser("show", help="one site in full")
    show.add_argument("site_id", metavar="SITE_ID")

    update = commands.add_parser("update", help="change a site's domains or time zone")
    update.add_argument("site_id", metavar="SITE_ID")
    update.add_argument("--add-domain", action="append", default=[], metavar="D")
    update.add_argument("--remove-domain", action="append", default=[], metavar="D")
    update.add_argument("--time-zone", metavar="TZ")
    umami = update.add_mutually_exclusive_group()
    umami.add_argument("--umami-website", metavar="UUID")
    umami.add_argument("--no-umami-website", action="store_true")

    remove = commands.add_parser("remove", help="unregister a site")
    remove.add_argument("site_id", metavar="SITE_ID")
    remove.add_argument(
        "--delete-data",
        action="store_true",
        help="also delete its events, aggregates and keys, in the same transaction",
    )

    erase = commands.add_parser(
        "erase-user", help="delete one user's raw events (aggregate counts stay)"
    )
    erase.add_argument("site_id", metavar="SITE_ID")
    erase.add_argument("user_id", metavar="USER_ID")

    key = commands.add_parser("key", help="API keys of the reporting routes")
    key_commands = key.add_subparsers(dest="key_command", required=True, metavar="KEY_COMMAND")
    create = key_commands.add_parser("create", help="make a key; it is printed once, last")
    create.add_argument(
        "--site",
        action="append",
        default=[],
        metavar="SITE_ID",
        help="a site it may read (repeat for several; none: every site)",
    )
    create.add_argument("--scope", default="stats:read", choices=keys.SCOPES)
    create.add_argument("--name", default="", metavar="N", help="what it is for")
    key_commands.add_parser("list", help="every key: prefix, name, scope, sites, state")
    revoke = key_commands.add_parser("revoke", help="revoke a key by its prefix")
    revoke.add_argument(
        "prefix",
        metavar="PREFIX",
        help="ak_ and 8 characters, exactly as listed (or the whole key)",
    )
    return parser


def _describe(site: Site) -> str:
    return "\n".join(
        [
            f"site_id:    {site.site_id}",
            f"domains:    {', '.join(site.domains) or '(any)'}",
            f"time zone:  {site.time_zone}",
            f"umami id:   {site.umami_website_id or '(none)'}",
            f"created at: {site.created_at.isoformat(timespec='seconds')}",
            f"updated at: {site.updated_at.isoformat(timespec='seconds')}",
        ]
    )


def _describe_key(key: keys.ApiKey) -> str:
    state = "active" if key.revoked_at is None else f"revoked {key.revoked_at:%Y-%m-%d %H:%M}"
    return (
        f"{key.prefix}  {key.scope:<11}  {', '.join(key.site_ids) or '(all sites)'}  "
        f"created {key.created_at:%Y-%m-%d %H:%M}  {state}  {key.name}"
    ).rstrip()


async def _run_key(args: argparse.Namespace, conn: asyncpg.Connection) -> str:
    if args.key_command == "create":
        site_ids = [check_site_id(site_id) for site_id in args.site]
        secret, key = await keys.create(conn, name=args.name, scope=args.scope, site_ids=site_ids)
        return "\n".join(
            [
                "created (the key is shown this once; only its hash is kept):",
                _describe_key(key),
                secret,
            ]
        )
    if args.key_command == "list":
        return "\n".join(map(_describe_key, await keys.all_keys(conn))) or "no keys"
    return "revoked\n" + _describe_key(await keys.revoke(conn, args.prefix))


async def _run(args: argparse.Namespace, conn: asyncpg.Connection) -> str:
    """What to print; raises SiteError for anything refused."""
    if args.command == "key":
        return await _run_key(args, conn)
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
        umami = None if args.umami_website is None else check_umami_website_id(args.umami_website)
        site = await registry.add(conn, site_id, domains, check_time_zone(args.time_zone), umami)
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
            umami_website_id=(
                None if args.umami_website is None else check_umami_website_id(args.umami_website)
            ),
            drop_umami_website_id=args.no_umami_website,
        )
        return "updated\n" + _describe(site)
    if args.command == "erase-user":
        deleted = await registry.erase_user(conn, site_id, check_user_id(args.user_id))
        lines = [f"erased user {args.user_id!r} of site {site_id}"]
        lines += [f"deleted {count} rows from {table}" for table, count in deleted.items()]
        lines.append("aggregate counts stay: they identify no one")
        return "\n".join(lines)
    deleted = await registry.remove(conn, site_id, delete_data=args.delete_data)
    lines = [f"removed site {site_id}"]
    lines += [f"deleted {count} rows from {table}" for table, count in deleted.items()]
    if args.delete_data:
        lines.append(
            "its events still in the stream are dropped by processors in SITES_MODE=registered;"
            " in open mode they, and any sent from now on, are stored again"
        )
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
