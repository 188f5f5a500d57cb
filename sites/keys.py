"""API keys for the reporting routes: their form, their hash, and the api_keys table.

A key is "ak_", 8 lower-case letters or digits (the public prefix, by which it is
listed, revoked and found), then 32 random URL-safe characters (192 bits). Only its
SHA-256 is stored: keys are long random strings, so a fast hash is enough (as for
GitHub's tokens).
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import string
from datetime import datetime

import asyncpg

from common.text import text_fault
from sites.model import SiteError

PREFIX = "ak_"
PREFIX_LENGTH = 11  # "ak_" and 8 characters: public, how a key is listed and found
_SECRET_LENGTH = 32
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
_PREFIX_CHARACTERS = frozenset(_PREFIX_ALPHABET)
_SECRET_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_")
MAX_KEY_NAME = 200  # bytes


def new_key() -> str:
    """A new random key (not stored: see create)."""
    head = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH - len(PREFIX)))
    return PREFIX + head + secrets.token_urlsafe(_SECRET_LENGTH)[:_SECRET_LENGTH]


def prefix_of(key: str) -> str | None:
    """The key's prefix; None when the text cannot be one of our keys (cheap checks)."""
    if len(key) != PREFIX_LENGTH + _SECRET_LENGTH or not _is_prefix(key[:PREFIX_LENGTH]):
        return None
    if not _SECRET_CHARACTERS.issuperset(key[PREFIX_LENGTH:]):
        return None
    return key[:PREFIX_LENGTH]


def _is_prefix(text: str) -> bool:
    return (
        len(text) == PREFIX_LENGTH
        and text.startswith(PREFIX)
        and _PREFIX_CHARACTERS.issuperset(text[len(PREFIX) :])
    )


def hash_key(key: str) -> bytes:
    """What is stored of a key, and compared with what a request presents."""
    return hashlib.sha256(key.encode()).digest()


SCOPES = ("stats:read", "sites:admin")
_COLUMNS = "prefix, name, scope, site_ids, created_at, revoked_at, key_hash"


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKey:
    prefix: str
    name: str
    scope: str
    site_ids: tuple[str, ...]  # the sites it may read; empty: every site
    created_at: datetime
    revoked_at: datetime | None
    key_hash: bytes = dataclasses.field(repr=False)

    def may_read(self, site_id: str) -> bool:
        """Whether this key may read the site's figures (both scopes may read)."""
        return not self.site_ids or site_id in self.site_ids


def _key(record: asyncpg.Record) -> ApiKey:
    return ApiKey(
        record["prefix"],
        record["name"],
        record["scope"],
        tuple(record["site_ids"]),
        record["created_at"],
        record["revoked_at"],
        bytes(record["key_hash"]),
    )


async def create(
    conn: asyncpg.Connection, *, name: str, scope: str, site_ids: list[str]
) -> tuple[str, ApiKey]:
    """A new key and its record; the key itself is not kept anywhere."""
    if scope not in SCOPES:
        raise SiteError(f"scope {scope!r}: one of {', '.join(SCOPES)}")
    fault = text_fault(name, MAX_KEY_NAME)
    if fault is None and not name.isprintable():
        fault = "must be one line of printable characters"
    if fault is not None:
        raise SiteError(f"name {name!r}: {fault}")
    async with conn.transaction():
        if site_ids:
            known = await conn.fetch(
                "SELECT site_id FROM sites WHERE site_id = ANY($1::text[]) FOR KEY SHARE", site_ids
            )
            unknown = sorted(set(site_ids) - {record["site_id"] for record in known})
            if unknown:
                raise SiteError(f"not registered: {', '.join(unknown)} (python -m sites add)")
        while True:  # 36^8 prefixes: a collision is rare, but possible
            key = new_key()
            record = await conn.fetchrow(
                "INSERT INTO api_keys (prefix, key_hash, name, scope, site_ids)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (prefix) DO NOTHING"
                f" RETURNING {_COLUMNS}",
                key[:PREFIX_LENGTH],
                hash_key(key),
                name,
                scope,
                sorted(set(site_ids)),
            )
            if record is not None:
                return key, _key(record)


async def all_keys(conn: asyncpg.Connection) -> list[ApiKey]:
    records = await conn.fetch(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, prefix")
    return [_key(record) for record in records]


async def revoke(conn: asyncpg.Connection, prefix: str) -> ApiKey:
    """Revoke a key named by its prefix, exactly the 11 characters `key list` shows (no
    shorter match: a key is never revoked by a guess). A whole key is accepted too, and
    must be the stored one (its hash is checked)."""
    whole = prefix_of(prefix) is not None
    if not whole and not _is_prefix(prefix):
        shown = prefix if len(prefix) <= PREFIX_LENGTH else prefix[:PREFIX_LENGTH] + "..."
        raise SiteError(
            f"{shown!r} is not a key prefix: {PREFIX} and {PREFIX_LENGTH - len(PREFIX)}"
            " lower-case letters or digits, as python -m sites key list shows"
        )
    name = prefix[:PREFIX_LENGTH]
    async with conn.transaction():
        record = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM api_keys WHERE prefix = $1 FOR UPDATE", name
        )
        if record is None:
            raise SiteError(f"no key {name} (python -m sites key list shows them)")
        if whole and bytes(record["key_hash"]) != hash_key(prefix):
            raise SiteError(f"the text given is not the key {name} (its prefix alone will do)")
        if record["revoked_at"] is not None:
            raise SiteError(f"key {name} is revoked already")
        record = await conn.fetchrow(
            f"UPDATE api_keys SET revoked_at = now() WHERE prefix = $1 RETURNING {_COLUMNS}",
            name,
        )
    assert record is not None
    return _key(record)
