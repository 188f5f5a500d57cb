"""Time-ordered event ids (UUIDv7, RFC 9562): new ids land at the end of the unique index."""

import os
import random

# asyncpg's UUID type (what it returns for uuid columns) renders its text in C: a third of
# the instructions of slicing bytes.hex() into five groups in Python, and the ingest
# server renders two UUIDs per event (the event id and the visitor id).
from asyncpg.pgproto.pgproto import UUID

# 48 bits of Unix milliseconds, then 80 random bits less the version and variant fields.
_FIXED_BITS = 0x7 << 76 | 0b10 << 62
_RANDOM_BITS = ~(0xF << 76 | 0b11 << 62) & ((1 << 80) - 1)

# Ids need uniqueness, not secrecy: a PRNG seeded from the OS is ~10x cheaper per id
# than os.urandom's system call. Reseeded in forked children so they never share a state.
_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))


def uuid7(epoch_micros: int) -> str:
    """An id for something that happened at `epoch_micros` (microseconds since the epoch):
    the ingest server passes the time of receipt it has already read."""
    millis = epoch_micros // 1000 & 0xFFFF_FFFF_FFFF
    value = millis << 80 | _random.getrandbits(80) & _RANDOM_BITS | _FIXED_BITS
    return str(UUID(value.to_bytes(16, "big")))
