"""Answers of the reporting routes reused for a moment: the read side's freshness bound.

A busy dashboard asks the same questions many times a second, and a question over a
year of a large site takes PostgreSQL a while. An answer is reused for REPORT_CACHE_MS;
after that, the next request starts one new computation in the background and is
answered with the previous answer meanwhile (stale-while-revalidate), so no request
waits on PostgreSQL but the first of its kind. Every answer given is exact as of at most
REPORT_CACHE_MS plus the time its computation took; one older than that plus
STALE_LIMIT_S (PostgreSQL stopped answering) is not given: the request computes its own.

Concurrent first requests for the same answer share one computation. Only successful
answers are kept; the least recently used go beyond MAX_BYTES.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope, Send

from report.access import ReportingAccess

logger = logging.getLogger(__name__)

MAX_BYTES = 64 * 2**20
STALE_LIMIT_S = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class _Answer:
    body: bytes
    raw_headers: list[tuple[bytes, bytes]]  # as sent, content type and length included
    made_at: float  # time.monotonic() when its computation started

    def response(self) -> Response:
        response = Response(self.body)
        response.raw_headers = self.raw_headers
        return response


def _answer_of(response: Response, started: float) -> _Answer | None:
    if response.status_code != 200:
        return None
    return _Answer(bytes(response.body), list(response.raw_headers), started)


# A request as it was asked: its path, query string and whether it asks for CSV.
RequestKey = tuple[str, bytes, bool]
_MAX_REQUEST_KEYS = 10_000


class AnswerCache:
    def __init__(self, max_age_ms: int):
        self._max_age_s = max_age_ms / 1000
        self._answers: OrderedDict[Hashable, _Answer] = OrderedDict()
        self._bytes = 0
        self._computing: dict[Hashable, asyncio.Task[Response]] = {}
        # Requests asked before, by how they were asked: their site and answer's key.
        self._requests: dict[RequestKey, tuple[str, Hashable]] = {}

    def fresh_for(self, request: RequestKey) -> tuple[str, _Answer] | None:
        """The answer to a request asked exactly so before, and its site: while it is
        fresh, or while its refresh runs (as `answer` gives it then)."""
        asked = self._requests.get(request)
        if asked is None:
            return None
        site_id, key = asked
        kept = self._answers.get(key)
        if kept is None:
            return None
        age = time.monotonic() - kept.made_at
        refreshing = key in self._computing and age < self._max_age_s + STALE_LIMIT_S
        if age >= self._max_age_s and not refreshing:
            return None  # the full path starts its refresh
        return site_id, kept

    async def answer(
        self,
        key: Hashable,
        compute: Callable[[], Awaitable[Response]],
        *,
        request: RequestKey | None = None,
        site_id: str = "",
    ) -> Response:
        """`request`, `site_id`: how the question was asked, of which site, so that the
        next request asked the same way may be answered before any parsing (`fresh_for`)."""
        if self._max_age_s == 0:
            return await compute()
        if request is not None:  # (a request without a date asks of another day tomorrow)
            if len(self._requests) >= _MAX_REQUEST_KEYS and request not in self._requests:
                self._requests.clear()
            self._requests[request] = (site_id, key)
        kept = self._answers.get(key)
        now = time.monotonic()
        if kept is not None:
            age = now - kept.made_at
            if age < self._max_age_s:
                self._answers.move_to_end(key)
                return kept.response()
            if age < self._max_age_s + STALE_LIMIT_S:
                self._start(key, compute)  # for the next request; this one takes the last
                return kept.response()
        return await asyncio.shield(self._start(key, compute))

    def _start(
        self, key: Hashable, compute: Callable[[], Awaitable[Response]]
    ) -> asyncio.Task[Response]:
        task = self._computing.get(key)
        if task is None:
            task = self._computing[key] = asyncio.create_task(self._compute(key, compute))
            task.add_done_callback(_log_failure)
        return task

    async def _compute(self, key: Hashable, compute: Callable[[], Awaitable[Response]]) -> Response:
        started = time.monotonic()
        try:
            response = await compute()
        finally:
            del self._computing[key]
        answer = _answer_of(response, started)
        if answer is not None:
            self._keep(key, answer)
        return response

    def _keep(self, key: Hashable, answer: _Answer) -> None:
        old = self._answers.pop(key, None)
        if old is not None:
            self._bytes -= len(old.body)
        self._answers[key] = answer
        self._bytes += len(answer.body)
        while self._bytes > MAX_BYTES and len(self._answers) > 1:
            _, dropped = self._answers.popitem(last=False)
            self._bytes -= len(dropped.body)


def _log_failure(task: asyncio.Task[Response]) -> None:
    """A refresh nobody waited for that failed: the next request tries again."""
    if not task.cancelled() and task.exception() is not None:
        logger.warning("refreshing a reporting answer failed: %r", task.exception())


def request_key(scope: Scope) -> RequestKey:
    wants_csv = any(name == b"accept" and b"text/csv" in value for name, value in scope["headers"])
    return (scope["path"], scope["query_string"], wants_csv)


class ReusedAnswers:
    """Fresh answers sent straight from the cache, before Starlette's router and the
    request's parsing: a dashboard polled by many asks the same questions the same way.
    The key's check runs as on the full path (its rate counted); a request it refuses,
    or one not asked before, goes the full way, which words the refusal or computes."""

    def __init__(self, cache: AnswerCache):
        self._cache = cache
        self.access: ReportingAccess | None = None  # once the server's registry runs

    def sender(self, scope: Scope, send: Send) -> Awaitable[None] | None:
        found = self._cache.fresh_for(request_key(scope))
        if found is None or self.access is None:
            return None
        site_id, answer = found
        if self.access.check(Request(scope), site_id) is not None:
            return None
        return _send(send, answer)


async def _send(send: Send, answer: _Answer) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": answer.raw_headers})
    await send({"type": "http.response.body", "body": answer.body})
