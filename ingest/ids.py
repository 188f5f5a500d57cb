"""Time-ordered event ids (UUIDv7, RFC 9562): new ids land at the end of the unique index."""

import os
import time

_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0b10 << 62
_RAND_A_MASK = 0xFFF
_RAND_B_MASK = (1 << 62) - 1


def uuid7() -> str:
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (millis & 0xFFFF_FFFF_FFFF) << 80
        | _VERSION_7
        | (rand >> 62 & _RAND_A_MASK) << 64
        | _VARIANT_RFC
        | rand & _RAND_B_MASK
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
