"""One raw Redis connection that sends many commands in one write and reads the replies.

The ingest hot path writes thousands of XADDs a second. redis-py costs ~11 µs per
command even inside a pipeline (packing, reply parsing, a timeout entered per reply);
packing with hiredis and parsing all replies with one hiredis.Reader costs a fraction of
that. Everything else (backpressure checks, the salt) still goes through redis-py.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Protocol

import hiredis
from redis.connection import parse_url

# What the reader's gets() answers while the next reply is incomplete: not its default,
# False, which an integer reply of 0 equals (iter() compares with ==).
_INCOMPLETE = object()


def _reader() -> hiredis.Reader:
    return hiredis.Reader(notEnoughData=_INCOMPLETE)


class RedisPipeError(ConnectionError):
    """The connection failed or Redis refused the handshake: the replies are unknown."""


def pack(*args: bytes | str | int) -> bytes:
    return bytes(hiredis.pack_command(args))  # type: ignore[arg-type]  # its stub wants 1-tuples


class CommandPipe(Protocol):
    """What the stream writer writes through: a RedisPipe, or a cluster's (SlotPipe)."""

    async def execute(self, commands: list[bytes]) -> list[Any]: ...

    def close(self) -> None: ...


class RedisPipe:
    """Not safe for concurrent use: the caller keeps at most one `execute` in flight.

    `on_connect`: commands sent on every new connection before anything else, whose error
    replies are expected and ignored (creating something that may exist already).
    """

    def __init__(
        self,
        url: str,
        on_connect: list[bytes] | None = None,
        address: tuple[str, int] | None = None,
    ):
        """`address`: another node than the URL's (a cluster's), with the URL's credentials."""
        options = parse_url(url)
        self.host: str = options.get("host", "127.0.0.1")
        self._port: int = int(options.get("port", 6379))
        if address is not None:
            self.host, self._port = address
        self._ssl = ssl.create_default_context() if "connection_class" in options else None
        self._handshake: list[bytes] = []
        if options.get("password"):
            user = options.get("username") or "default"
            self._handshake.append(pack("AUTH", user, options["password"]))
        if options.get("db"):
            self._handshake.append(pack("SELECT", int(options["db"])))
        self._on_connect = list(on_connect or ())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = _reader()

    async def execute(self, commands: list[bytes]) -> list[Any]:
        """Send packed commands in one write; returns their replies in order.

        An error reply comes back as a hiredis.ReplyError in its place. Any failure,
        cancellation included, closes the connection; the next call reconnects.
        """
        try:
            if self._writer is None:
                await self._connect()
            assert self._writer is not None
            self._writer.write(b"".join(commands))
            return await self._read_replies(len(commands))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        self._parser = _reader()

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(
            self.host, self._port, ssl=self._ssl
        )
        if self._handshake:
            self._writer.write(b"".join(self._handshake))
            for reply in await self._read_replies(len(self._handshake)):
                if isinstance(reply, hiredis.ReplyError):
                    raise RedisPipeError(f"handshake refused: {reply}")
        if self._on_connect:
            self._writer.write(b"".join(self._on_connect))
            await self._read_replies(len(self._on_connect))  # errors expected: ignored

    async def _read_replies(self, count: int) -> list[Any]:
        assert self._reader is not None
        # iter(gets, _INCOMPLETE) takes every complete reply in C. One command in flight
        # at a time: whatever arrives belongs to these commands.
        replies: list[Any] = list(iter(self._parser.gets, _INCOMPLETE))
        while len(replies) < count:
            data = await self._reader.read(65536)
            if not data:
                raise RedisPipeError("connection closed by Redis")
            self._parser.feed(data)
            replies += iter(self._parser.gets, _INCOMPLETE)
        return replies
