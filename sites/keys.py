"""API keys for the reporting routes: their form, their hash, and the api_keys table.

A key is "ak_", 8 lower-case letters or digits (the public prefix, by which it is
listed, revoked and found), then 32 random URL-safe characters. Only its SHA-256 is
stored: keys are long random strings, so a fast hash is enough (as for GitHub's tokens).
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
_SECRET_ALPHABET = frozenset(string.ascii_letters + string.digits + "-_")
MAX_KEY_NAME = 200  # bytes


def new_key() -> str:
    """A new random key (not stored: see create)."""
    head = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH - len(PREFIX)))
    return PREFIX + head + secrets.token_urlsafe(_SECRET_LENGTH)[:_SECRET_LENGTH]


def prefix_of(key: str) -> str | None:
    """The key's prefix; None when the text cannot be one of our keys (cheap checks)."""
    if len(key) != PREFIX_LENGTH + _SECRET_LENGTH or not key.startswith(PREFIX):
        return None
    if not set(key[len(PREFIX) :]) <= _SECRET_ALPHABET:
        return None
    return key[:PREFIX_LENGTH]


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
    key_hash: bytes


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
    """Revoke the key of this prefix (its first 11 characters, as `key list` shows)."""
    record = await conn.fetchrow(
        f"UPDATE api_keys SET revoked_at = now() WHERE prefix = $1 AND revoked_at IS NULL"
        f" RETURNING {_COLUMNS}",
        prefix[:PREFIX_LENGTH],
    )
    if record is not None:
        return _key(record)
    if await conn.fetchval("SELECT 1 FROM api_keys WHERE prefix = $1", prefix[:PREFIX_LENGTH]):
        raise SiteError(f"key {prefix[:PREFIX_LENGTH]} is revoked already")
    raise SiteError(f"no key {prefix!r} (python -m sites key list shows them)")
