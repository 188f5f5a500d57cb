"""The HTTP application: the ingest routes and GET /stats on one server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypedDict

import orjson
import redis.asyncio as redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from common.config import Settings
from common.errors import error_body
from common.redis_clients import REDIS_FAILURES, AsyncRedis, async_client
from common.shards import shards_of
from ingest.admission import Admission
from ingest.asgi import send_json
from ingest.backlog import BacklogMonitor
from ingest.compat import PlausibleEventEndpoint, UmamiSendEndpoint
from ingest.edge import EdgeGuard
from ingest.endpoints import BatchEndpoint, EventEndpoint, PixelEndpoint
from ingest.geo import CountryLookup
from ingest.intake import Intake
from ingest.metrics import IngestMetrics, MetricsPublisher, exposition
from ingest.readiness import Readiness
from ingest.redis_pipe import CommandPipe, RedisPipe, pack
from ingest.slot_pipe import SlotPipe
from ingest.stream_writer import StreamWriter
from ingest.tracker import TrackerScript
from ingest.visitors import VisitorHasher
from processor.ledger import LedgerSource
from report import dashboard, stats_api
from report.access import ReportingAccess
from report.cache import AnswerCache, ReusedAnswers
from report.endpoints import StatsDatabase, stats
from report.export import EXPORTS_AT_ONCE, export_events
from report.ledger import ledger
from report.openapi import openapi_json
from sites.live import LiveRegistry

logger = logging.getLogger(__name__)


class State(TypedDict):
    intake: Intake
    metrics: MetricsPublisher
    stats_db: StatsDatabase
    reporting_access: ReportingAccess
    rollups_have_visits: bool
    answer_cache: AnswerCache
    export_slots: asyncio.Semaphore
    readiness: Readiness
    ledger: LedgerSource
    ledger_slot: asyncio.Semaphore


def redis_client(settings: Settings) -> AsyncRedis:
    timeout_s = settings.redis_timeout_ms / 1000
    # No hidden retries: a request that cannot be confirmed in time gets a 503 instead.
    return async_client(
        settings,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


def stream_pipe(settings: Settings, client: AsyncRedis, shard: Settings) -> CommandPipe:
    """The stream writer's connection for one shard: on a cluster, to its slot's master."""
    # The consumer group exists wherever events are: a processor cannot create it once
    # Redis is at maxmemory (XGROUP CREATE is refused there), so the writer does.
    on_connect = [pack("XGROUP", "CREATE", shard.stream_key, shard.consumer_group, "0", "MKSTREAM")]
    if isinstance(client, redis.RedisCluster):
        return SlotPipe(client, shard.stream_key, settings.redis_url, on_connect)
    return RedisPipe(settings.redis_url, on_connect)


async def health(request: Request) -> Response:
    """Liveness (GET /healthz, and GET /health as before): the process answers HTTP."""
    return Response(b'{"status":"ok"}', media_type="application/json")


async def metrics(request: Request) -> Response:
    """GET /metrics: the server's totals, over all its processes (ingest/metrics.py)."""
    publisher: MetricsPublisher = request.state.metrics
    try:
        snapshots = await publisher.all_snapshots()
    except REDIS_FAILURES:  # Redis away: this process's own counts, still true
        snapshots = [publisher.metrics.snapshot()]
    backlog = request.state.intake.backlog.backlog
    body = generate_latest(exposition(snapshots, backlog))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def ready(request: Request) -> Response:
    """Readiness (GET /readyz): 200, or 503 naming each check that failed."""
    readiness: Readiness = request.state.readiness
    failed = await readiness.failures()
    if failed:
        body = {"status": "unavailable", "failed": failed}
        return Response(orjson.dumps(body), status_code=503, media_type="application/json")
    return Response(b'{"status":"ready"}', media_type="application/json")


class IngestRouter:
    """Hands the ingest routes straight to their raw ASGI endpoints; the rest to Starlette.

    The beacon routes are the hot path: Starlette's middleware stack and router cost
    about 15% of the server's time per request there (measured with py-spy, see the
    README), and they need none of it. Lifespan and every other route go to Starlette.

    A reporting question asked exactly as one a moment ago is answered from the cache
    here too (report/cache.py ReusedAnswers), before Starlette and the request's parsing.

    A plain function that returns the handler's coroutine rather than awaiting it: the
    router's frame then takes no part when a request resumes after its Redis write.
    (uvicorn is told the interface, see ingest/server.py: it cannot infer it.)
    """

    def __init__(
        self,
        routes: dict[str, tuple[ASGIApp, frozenset[str]]],
        fallback: Starlette,
        reused: ReusedAnswers,
    ):
        self._routes = routes
        self._fallback = fallback
        self._reused = reused

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        route = self._routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            # A reporting question asked exactly so a moment ago: its answer at once.
            if scope["type"] == "http" and scope["method"] == "GET":
                sending = self._reused.sender(scope, send)
                if sending is not None:
                    return sending
            return self._fallback(scope, receive, send)
        endpoint, methods = route
        if scope["method"] not in methods:
            allow = ", ".join(sorted(methods)).encode()
            detail = error_body("method_not_allowed", f"use {allow.decode()}")
            return send_json(send, 405, detail, [(b"allow", allow)])
        return endpoint(scope, receive, send)


def create_app(settings: Settings, edge: EdgeGuard | None = None) -> IngestRouter:
    """`edge`: the server's connection guard, whose counts GET /metrics reports."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        client = redis_client(settings)
        try:
            await client.ping()
        except REDIS_FAILURES as exc:
            logger.warning("Redis is not reachable yet (%r); ingest answers 503 until it is", exc)
        # One writer per stream shard (common/shards.py), each with its own connection.
        shards = [shard.settings for shard in shards_of(settings)]
        writers = [
            StreamWriter(
                stream_pipe(settings, client, shard),
                shard.stream_key,
                shard.ledger_key_prefix,
                settings.redis_timeout_ms / 1000,
                counts,
            )
            for shard in shards
        ]
        publisher = MetricsPublisher(client, settings.stream_key, counts)
        backlog = BacklogMonitor(
            client,
            [shard.stream_key for shard in shards],
            settings.consumer_group,
            settings.max_backlog,
        )
        # In the background: events need only Redis, so PostgreSQL may be down at start.
        stats_db = StatsDatabase(settings.database_url)
        stats_db.start()
        registry = LiveRegistry(lambda: stats_db.pool, settings.registry_refresh_ms / 1000)
        registry.start()
        if settings.sites_mode == "open":
            logger.warning(
                "SITES_MODE=open: events for any site_id are stored "
                "(SITES_MODE=registered stores only those of registered sites)"
            )
        admission = Admission(settings, registry)
        admission.start()
        intake = Intake(
            writers[0],
            VisitorHasher(client, settings.salt_key_prefix, settings.max_age_seconds),
            backlog,
            admission,
            CountryLookup(),
            settings.store_client_info,
            tuple(writers) if len(writers) > 1 else (),
        )
        backlog.start()
        publisher.start()
        access = ReportingAccess(registry, settings.key_rate_limit)
        reused.access = access
        # Start-up objects live as long as the process: keep them out of every collection,
        # and collect young objects less often (pauses showed in the p99 latency).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        try:
            yield {
                "intake": intake,
                "stats_db": stats_db,
                "reporting_access": access,
                # The Stats API reads visits from the rollups only where they hold them.
                "rollups_have_visits": settings.count_visits,
                "answer_cache": answers,
                "export_slots": asyncio.Semaphore(EXPORTS_AT_ONCE),
                "readiness": Readiness(client, settings.stream_key, backlog, stats_db),
                "metrics": publisher,
                "ledger": LedgerSource.of(client, settings),
                "ledger_slot": asyncio.Semaphore(1),
            }
            for writer in writers:
                await writer.aclose()
        finally:
            await publisher.stop()
            admission.stop()
            await registry.aclose()
            await stats_db.aclose()
            await backlog.stop()
            await client.aclose()

    counts = IngestMetrics(edge)  # the endpoints', the stream writer's and the edge's
    answers = AnswerCache(settings.report_cache_ms)
    reused = ReusedAnswers(answers)
    posts = frozenset({"POST", "OPTIONS"})
    ingest_routes: dict[str, tuple[ASGIApp, frozenset[str]]] = {
        "/event": (EventEndpoint(settings, counts), posts),
        "/events": (BatchEndpoint(settings, counts), posts),
        "/event.gif": (PixelEndpoint(settings, counts), frozenset({"GET", "OPTIONS"})),
        # The trackers of others, unchanged (ingest/compat.py).
        "/api/event": (PlausibleEventEndpoint(settings, counts), posts),
        "/api/send": (UmamiSendEndpoint(settings, counts), posts),
        "/script.js": (TrackerScript(), frozenset({"GET", "HEAD"})),
    }
    reporting = Starlette(
        routes=[
            Route("/stats", stats, methods=["GET"]),
            Route("/api/v1/stats/realtime/visitors", stats_api.realtime_visitors, methods=["GET"]),
            Route("/api/v1/stats/aggregate", stats_api.aggregate, methods=["GET"]),
            Route("/api/v1/stats/timeseries", stats_api.timeseries, methods=["GET"]),
            Route("/api/v1/stats/breakdown", stats_api.breakdown, methods=["GET"]),
            Route("/api/v1/export/events", export_events, methods=["GET"]),
            *dashboard.routes(),
            Route("/openapi.json", openapi_json, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/healthz", health, methods=["GET"]),
            Route("/readyz", ready, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/ledger", ledger, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    return IngestRouter(ingest_routes, reporting, reused)
