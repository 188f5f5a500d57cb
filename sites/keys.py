"""API keys: their form and hash (the database side is added by the keys command)."""

from __future__ import annotations

import hashlib
import secrets
import string

PREFIX = "ak_"
PREFIX_LENGTH = 11  # "ak_" and 8 characters: public, how a key is listed and found
_SECRET_LENGTH = 32
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
_SECRET_ALPHABET = frozenset(string.ascii_letters + string.digits + "-_")


def new_key() -> str:
    head = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH - len(PREFIX)))
    return PREFIX + head + secrets.token_urlsafe(_SECRET_LENGTH)[:_SECRET_LENGTH]


def prefix_of(key: str) -> str | None:
    if len(key) != PREFIX_LENGTH + _SECRET_LENGTH or not key.startswith(PREFIX):
        return None
    if not set(key[len(PREFIX) :]) <= _SECRET_ALPHABET:
        return None
    return key[:PREFIX_LENGTH]


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
