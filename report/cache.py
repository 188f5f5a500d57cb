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

from starlette.responses import Response

logger = logging.getLogger(__name__)

MAX_BYTES = 64 * 2**20
STALE_LIMIT_S = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class _Answer:
    body: bytes
    media_type: str | None
    headers: tuple[tuple[str, str], ...]
    made_at: float  # time.monotonic() when its computation started

    def response(self) -> Response:
        return Response(self.body, media_type=self.media_type, headers=dict(self.headers))


def _answer_of(response: Response, started: float) -> _Answer | None:
    if response.status_code != 200:
        return None
    headers = tuple(
        (name, value) for name, value in response.headers.items()
        if name not in ("content-length", "content-type")
    )  # fmt: skip
    return _Answer(bytes(response.body), response.media_type, headers, started)


class AnswerCache:
    def __init__(self, max_age_ms: int):
        self._max_age_s = max_age_ms / 1000
        self._answers: OrderedDict[Hashable, _Answer] = OrderedDict()
        self._bytes = 0
        self._computing: dict[Hashable, asyncio.Task[Response]] = {}

    async def answer(self, key: Hashable, compute: Callable[[], Awaitable[Response]]) -> Response:
        if self._max_age_s == 0:
            return await compute()
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
