"""The HTTP connection as the open internet uses it: uvicorn's httptools protocol with the
bounds nginx puts on its clients.

- Time: a connection must deliver a whole request head within HEADER_TIMEOUT_MS of
  opening, and after each response the next head within KEEP_ALIVE_MS (an idle
  keep-alive connection is closed then); a body must be whole within BODY_TIMEOUT_MS of
  its head. A request being answered has no deadline here (its Redis write has its own).
- Size: the request target may hold 8 KiB (else 414), the headers 16 KiB together (else
  431: names and values, as nginx counts them), checked once the head is whole; a head
  that comes in several reads is refused as soon as it passes both limits and 1 KiB,
  so that a client cannot make the parser keep more; the
  bodies being received, all together, 32 MiB (else a body that is not alone gets 503).
- Number: a client address may hold MAX_CONNECTIONS_PER_ADDRESS connections (as nginx's
  limit_conn: one attacker cannot take every place; beyond it a new one is answered 503
  and closed); at MAX_CONNECTIONS a new connection takes the place of one that has waited
  longest for its client (for a request head, else for the rest of a body: a normal
  client sends both at once; else an idle keep-alive one); when every connection is busy
  with a request being answered, the new one is answered 503 and closed.

An error answer is sent, then the connection closed lingering (nginx's lingering_close):
its sending side first, while what the client still sends is dropped, so that the client
reads the answer rather than a reset.

Memory: a connection waiting for a request head holds about 3 KB (4.7 KB once it has sent
part of one), one receiving a body about 8.5 KB with its request's task (measured).

Deadlines need no timer per connection: each kind has one timeout, so entries added in
time order stay in time order, and one timer per process takes the expired ones off the
front of each queue, twice a second.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict, deque
from itertools import chain
from typing import Any, ClassVar

import httptools
import orjson
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

from common.errors import error_body
from ingest.admission import address_key
from ingest.client import ClientResolver

logger = logging.getLogger(__name__)

MAX_TARGET_BYTES = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024
# Bytes of an unfinished head kept at most before it is refused. The exact limits above
# are checked by the parser's callbacks; this bounds what the parser itself buffers (a
# 64 MB header, say), give or take one read (at most 256 KiB with uvloop).
_MAX_HEAD_BYTES = MAX_TARGET_BYTES + MAX_HEADER_BYTES + 1024
_SWEEP_INTERVAL_S = 0.5
# Request bodies being received, all connections together: beyond it, a body that is not
# the only one is refused (503). Every connection may otherwise hold MAX_BODY_BYTES.
BODY_BUDGET_BYTES = 32 * 1024 * 1024
LINGER_S = 2.0
# A client sends its request head right after connecting: one that has sent none for this
# long may make room at the cap. Short enough that a flood of new connections cannot keep
# every place young (make bench, step 6b), long enough for a request on its way.
MIN_WAIT_BEFORE_EVICTION_S = 0.25
# EdgeProtocol._head_bytes past the head: its body is being received; it is being answered.
_BODY = -1
_ANSWERING = -2


@dataclasses.dataclass(frozen=True, slots=True)
class EdgeLimits:
    header_timeout_s: float
    keep_alive_s: float
    body_timeout_s: float
    max_connections: int
    max_connections_per_address: int = 0  # 0: no limit
    trusted_proxies: str = ""  # not limited per address


class _AddressFull(Exception):
    """The client's address holds as many connections as it may."""


class _Refused(Exception):
    """A request refused by a parser callback, with its answer."""

    def __init__(self, status: int, code: str, message: str, field: str):
        super().__init__(message)
        self.answer = _answer(status, code, message, field)


def _answer(status: int, code: str, message: str, field: str) -> bytes:
    """A whole HTTP response that closes the connection, in our error shape."""
    body = orjson.dumps(error_body(code, message, [{"field": field, "message": message}]))
    head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n"
    retry = b"retry-after: 1\r\n" if status == 503 else b""
    return STATUS_LINE[status] + head % len(body) + retry + b"\r\n" + body


_TIMED_OUT = _answer(408, "request_timeout", "the request was not sent in time", "request")
_BUSY = _answer(503, "too_many_connections", "the server is busy; retry later", "connection")
_BODIES_REFUSED = (503, "too_many_bodies", "the server is receiving too much; retry later", "body")
_TARGET_TOO_LONG = (414, "uri_too_long", f"request target over {MAX_TARGET_BYTES} bytes", "url")
_HEADERS_TOO_LARGE = (
    431,
    "headers_too_large",
    f"request headers over {MAX_HEADER_BYTES} bytes together",
    "headers",
)


class _Deadlines:
    """Connections waiting for one thing, oldest first; each has `timeout_s` from its
    start. The hot path adds and deletes in `due` itself; a connection notes the queue
    it is in (`EdgeProtocol.waiting`), so that leaving it costs one deletion."""

    __slots__ = ("due", "timeout_s")

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.due: OrderedDict[EdgeProtocol, float] = OrderedDict()

    def oldest(self) -> EdgeProtocol | None:
        return next(iter(self.due), None)

    def oldest_since(self, before: float) -> EdgeProtocol | None:
        """The connection waiting longest, if it started waiting before `before`."""
        first = next(iter(self.due.items()), None)
        if first is None or first[1] - self.timeout_s - _SWEEP_INTERVAL_S > before:
            return None
        return first[0]

    def expired(self, now: float) -> list[EdgeProtocol]:
        due = self.due
        gone = []
        while due:
            connection, deadline = next(iter(due.items()))
            if deadline > now:
                break
            del due[connection]
            connection.waiting = None
            gone.append(connection)
        return gone


class EdgeGuard:
    """The deadlines and the connection count of one process's server."""

    def __init__(self, limits: EdgeLimits):
        self.limits = limits
        self.heads = _Deadlines(limits.header_timeout_s)
        self.idle = _Deadlines(limits.keep_alive_s)
        self.bodies = _Deadlines(limits.body_timeout_s)
        self.lingering = _Deadlines(LINGER_S)
        # A clock read by the hot path as an attribute, moved on by the sweep: deadlines
        # are as precise as the sweep anyway.
        self.now = 0.0
        self.body_bytes = 0  # of the bodies being received, by every connection
        self._timer: asyncio.TimerHandle | None = None
        self.closed_slow = 0
        self.evicted = 0
        self.refused_busy = 0
        self.refused_per_address = 0
        # Open connections by client address (address_key), of addresses that have any.
        self.per_address: dict[str, int] = {}
        self._proxies = ClientResolver(limits.trusted_proxies)

    def closed_by_reason(self) -> dict[str, int]:
        """What GET /metrics reports (analytics_ingest_connections_closed_total)."""
        return {
            "slow": self.closed_slow,
            "evicted_at_cap": self.evicted,
            "refused_at_cap": self.refused_busy,
            "refused_per_address": self.refused_per_address,
        }

    def admit_address(self, host: str) -> str | None:
        """The key that counts this connection against its address's limit (the caller
        gives it back with `release_address`); None when it is not counted. Raises
        _AddressFull at the limit."""
        limit = self.limits.max_connections_per_address
        if not limit or self._proxies.is_trusted(host):
            return None
        key = address_key(host)
        held = self.per_address.get(key, 0)
        if held >= limit:
            self.refused_per_address += 1
            raise _AddressFull
        self.per_address[key] = held + 1
        return key

    def release_address(self, key: str) -> None:
        held = self.per_address[key] - 1
        if held:
            self.per_address[key] = held
        else:
            del self.per_address[key]

    def start_sweeping(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None:
            self.now = loop.time()
            self._timer = loop.call_later(_SWEEP_INTERVAL_S, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self.now = now = loop.time()
        for connection in self.heads.expired(now) + self.idle.expired(now):
            connection.head_timed_out()
        for connection in self.bodies.expired(now):
            connection.answer_and_close(_TIMED_OUT)
        for connection in self.lingering.expired(now):
            connection.transport.close()
        self._timer = loop.call_later(_SWEEP_INTERVAL_S, self._sweep, loop)

    def make_room(self) -> bool:
        """Close one connection to make room for a new one: one answered already, else
        the one that has waited longest for a request head, else for the rest of a
        body, else an idle keep-alive one (a client served already, most likely a real
        one, who can connect again), if it has waited MIN_WAIT_BEFORE_EVICTION_S at
        least. False when there is none: every connection is busy with a request, or
        came only just now (a flood of new connections is refused, not let in to push
        out those that came a moment before it)."""
        for queue in (self.lingering, self.heads, self.bodies, self.idle):
            if queue is self.lingering:
                victim = queue.oldest()
            else:
                # Not one that has only just come: its request may be on its way still.
                victim = queue.oldest_since(self.now - MIN_WAIT_BEFORE_EVICTION_S)
            if victim is None:
                continue
            if queue is not self.lingering:
                self.evicted += 1
            # Closed at once, without an answer or lingering: that would keep its place.
            # Out of its queue now: its connection_lost comes later, and until then it
            # must not be chosen again.
            victim.leave_queue()
            victim.transport.close()
            return True
        return False


class _OneSend:
    """A response cycle's transport: the response head waits for the first write of the
    body and goes out with it, so that a small response is one send, not two (uvicorn
    writes each ASGI message as it comes). Everything after passes straight through. Not
    for HEAD requests, whose answers have no body to wait for."""

    __slots__ = ("_head", "_transport")

    def __init__(self, transport: asyncio.Transport):
        self._transport = transport
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif data.startswith(_RESPONSE_HEAD) and not data.startswith(_CONTINUE):
            self._head = data
        else:
            self._transport.write(data)

    def close(self) -> None:
        if self._head is not None:
            self._transport.write(self._head)
            self._head = None
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


_RESPONSE_HEAD = b"HTTP/1.1 "
_CONTINUE = b"HTTP/1.1 100 "


class EdgeProtocol(HttpToolsProtocol):
    """One client connection (see the module's docstring); `guard` is set per server."""

    guard: ClassVar[EdgeGuard]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Where the request is: >= 0 bytes of an unfinished head; _BODY, _ANSWERING.
        self._head_bytes = 0
        self._read_bytes = 0  # of the read being parsed
        self._body_bytes = 0  # of the body being received, counted in guard.body_bytes
        self._lingering = False  # answered and closing: see answer_and_close
        self._address_key: str | None = None  # counted in guard.per_address under it
        self.waiting: OrderedDict[EdgeProtocol, float] | None = None  # a queue's `due`
        # Memory: what uvicorn makes for every connection up front (flow control, the
        # pipeline queue, the request scope) is made here once a request head is whole,
        # so that a connection still waiting for one holds about 3 KB less.
        self.pipeline = None  # type: ignore[assignment]

    def wait_in(self, queue: _Deadlines) -> None:
        self.waiting = due = queue.due
        # guard.now may be one sweep old: a sweep more makes sure no timeout is cut short
        # (each is kept to within one sweep above it instead).
        due[self] = self.guard.now + queue.timeout_s + _SWEEP_INTERVAL_S

    def leave_queue(self) -> None:
        if self.waiting is not None:
            del self.waiting[self]
            self.waiting = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        guard = self.guard
        guard.start_sweeping(self.loop)
        # Once per connection, not per request: its start, and the cap's view of who has
        # waited how long, are then exact rather than one sweep old.
        guard.now = self.loop.time()
        client = get_remote_addr(transport)
        try:
            if client is not None:  # a Unix socket's peer has no address
                self._address_key = guard.admit_address(client[0])
        except _AddressFull:
            refused = True
        else:
            refused = len(self.connections) >= guard.limits.max_connections and not (
                guard.make_room()
            )
            if refused:
                guard.refused_busy += 1
                if self._address_key is not None:
                    guard.release_address(self._address_key)
                    self._address_key = None
        if refused:
            transport.write(_BUSY)
            transport.close()
            return
        # uvicorn's, less the flow control (made with the first request).
        self.connections.add(self)
        self.transport = transport
        self.server = get_local_addr(transport)
        self.client = client
        self.scheme = "https" if is_ssl(transport) else "http"
        self.wait_in(guard.heads)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:  # refused in connection_made: nothing was set up
            return
        self.leave_queue()
        if self._address_key is not None:
            self.guard.release_address(self._address_key)
            self._address_key = None
        self.guard.body_bytes -= self._body_bytes
        self._body_bytes = 0
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # answered already: the rest is dropped
        self._read_bytes = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                self.answer_and_close(exc.__context__.answer)
            else:
                raise
        except httptools.HttpParserError:
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # no WebSockets here
        else:
            state = self._head_bytes
            if state >= 0:  # the head is still unfinished after this read
                self._head_bytes = state = state + len(data)
                if state > _MAX_HEAD_BYTES:
                    too_long = len(self.url) > MAX_TARGET_BYTES
                    refusal = _Refused(*(_TARGET_TOO_LONG if too_long else _HEADERS_TOO_LARGE))
                    self.answer_and_close(refusal.answer)
            elif state == _BODY and self.waiting is None:
                # A body that did not come whole with its head: it has a deadline from
                # now. (One that did, the common case, never needs one.)
                self.wait_in(self.guard.bodies)

    def on_message_begin(self) -> None:
        # uvicorn's, less the scope: on_headers_complete makes it.
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        # The exact limits, once per head (in C but for the call). What a head that came
        # in several reads may hold meanwhile is bounded in data_received.
        if len(self.url) > MAX_TARGET_BYTES:
            raise _Refused(*_TARGET_TOO_LONG)
        # The head came in this read and earlier ones: only when those could hold more
        # than the limit are its headers counted (a normal head is far smaller).
        if self._head_bytes + self._read_bytes > MAX_HEADER_BYTES and (
            sum(map(len, chain.from_iterable(self.headers))) > MAX_HEADER_BYTES
        ):
            raise _Refused(*_HEADERS_TOO_LARGE)
        self._head_bytes = _BODY
        if self.waiting is not None:  # for this head (a new or a kept-alive connection)
            del self.waiting[self]
            self.waiting = None
        if self.flow is None:
            self.flow = FlowControl(self.transport)
            self.pipeline = deque()
        self.scope = {  # type: ignore[typeddict-item]  # the rest is filled in by uvicorn
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }
        super().on_headers_complete()
        if self.parser.get_method() != b"HEAD":
            self.cycle.transport = _OneSend(self.transport)  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        guard = self.guard
        self._body_bytes += len(body)
        guard.body_bytes += len(body)
        if guard.body_bytes > BODY_BUDGET_BYTES and self._body_bytes < guard.body_bytes:
            raise _Refused(*_BODIES_REFUSED)  # stops the parser: no part of it is used
        # uvicorn's, inlined (no WebSocket upgrade can be under way here).
        cycle = self.cycle
        if cycle.response_complete:
            return
        cycle.body += body
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        self._head_bytes = _ANSWERING
        if self.waiting is not None:  # a body that came in several reads
            del self.waiting[self]
            self.waiting = None
        if self._body_bytes:
            self.guard.body_bytes -= self._body_bytes
            self._body_bytes = 0
        # uvicorn's, inlined.
        cycle = self.cycle
        if cycle.response_complete:
            return
        cycle.more_body = False
        cycle.message_event.set()

    def on_response_complete(self) -> None:
        # uvicorn's, with the keep-alive timer replaced by the shared idle deadlines.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self.waiting is None:  # wait_in(guard.idle), inlined: once per request
            guard = self.guard
            idle = self.waiting = guard.idle.due
            idle[self] = guard.now + guard.idle.timeout_s + _SWEEP_INTERVAL_S

    def pause_writing(self) -> None:
        if self.flow is not None:  # else only an error answer is being written
            self.flow.pause_writing()

    def resume_writing(self) -> None:
        if self.flow is not None:
            self.flow.resume_writing()

    def head_timed_out(self) -> None:
        """Out of time for a request head: answered 408 if it began one, else closed."""
        self.guard.closed_slow += 1
        if self._head_bytes > 0:
            self.answer_and_close(_TIMED_OUT)
        else:
            self.transport.close()

    def answer_and_close(self, response: bytes) -> None:
        """Send an error answer, then close, lingering (as nginx does): a socket closed
        with a request still unread would reset, and the client might never read the
        answer. So its sending side is closed first, and what the client still sends is
        read and dropped until it closes too, or LINGER_S at most."""
        if self.cycle is not None and not self.cycle.response_complete:
            # A request whose body is cut off: its handler sees the client gone.
            self.cycle.keep_alive = False
        if self._lingering or self.transport.is_closing():
            return
        self.transport.write(response)
        self.leave_queue()
        self._lingering = True
        self.transport.write_eof()
        self.flow = self.flow or FlowControl(self.transport)
        self.flow.resume_reading()
        self.wait_in(self.guard.lingering)


def edge_protocol(limits: EdgeLimits) -> type[EdgeProtocol]:
    """The protocol class for one server, with its own guard (uvicorn makes one
    instance per connection and gives it no other place for shared state)."""
    return type("BoundedEdgeProtocol", (EdgeProtocol,), {"guard": EdgeGuard(limits)})
