"""What makes a string storable: the one rule the edge and the processor both apply."""

from __future__ import annotations


def text_fault(value: str, max_bytes: int | None = None) -> str | None:
    """Why PostgreSQL could not store `value` within `max_bytes` bytes of UTF-8 (None: no
    length limit), or None when it can.

    PostgreSQL text holds valid UTF-8 without NUL: a string with a lone surrogate has no
    UTF-8 form at all. The limits (common.constants) are in bytes because index entries
    are, and a character takes one to four of them.

    Callers on a hot path may pass, without calling this, a string that `isascii()`, is
    no longer than max_bytes and holds no NUL: this would find nothing else to refuse.
    """
    if value.isascii():  # O(1) in CPython: one byte per character, no surrogate
        size = len(value)
    else:
        try:
            size = len(value.encode())
        except UnicodeEncodeError:
            return "must be valid Unicode text (a lone surrogate has no UTF-8 form)"
    if max_bytes is not None and size > max_bytes:
        return f"longer than {max_bytes} bytes (UTF-8)"
    if "\x00" in value:
        return "must not contain NUL characters"
    return None
