"""GET /openapi.json: every route of the server (ingest, reporting, operations) in
OpenAPI 3.1, built once at start. docs/api.md says the same in prose; the tests check
this document against the OpenAPI schema, check that it names every route the server
has, and check real answers against its response schemas."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from processor.ledger import FLOWS
from report.query import METRICS, PERIODS

_ERROR = {"$ref": "#/components/schemas/Error"}
_PLAUSIBLE_ERROR = {"$ref": "#/components/schemas/PlausibleError"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, description: str, *, required: bool = False, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema or {"type": "string"},
    }


_EVENT_ERRORS = {
    "400": _json(_ERROR, "invalid fields, each named in `detail`"),
    "403": _json(_ERROR, "a browser origin that is not allowed"),
    "413": _json(_ERROR, "the body exceeds MAX_BODY_BYTES"),
    "415": _json(_ERROR, "a content type that cannot hold JSON"),
    "429": _json(_ERROR, "over ADDRESS_RATE_LIMIT or SITE_RATE_LIMIT (Retry-After)"),
    "503": _json(_ERROR, "overloaded, or Redis did not confirm the write (Retry-After)"),
}
_SITE_ID = _query("site_id", "the site", required=True)
_STATS_COMMON = [
    _SITE_ID,
    _query("period", "day, 7d, 30d, month, 6mo, 12mo or custom", enum=list(PERIODS), default="30d"),
    _query("date", "YYYY-MM-DD (default: today in the site's time zone); custom: A,B"),
    _query("metrics", f"comma-separated, of: {', '.join(METRICS)}", default="visitors"),
    _query("filters", "`;`-joined property==value or property!=value; `|` lists, `*` wildcards"),
]
_STATS_ERRORS = {
    "400": _json(_PLAUSIBLE_ERROR, "a parameter Plausible would refuse, in its words"),
    "401": _json(_PLAUSIBLE_ERROR, "no API key, or one that may not read the site"),
    "429": _json(_PLAUSIBLE_ERROR, "over KEY_RATE_LIMIT (Retry-After)"),
    "503": _json(_ERROR, "the database cannot answer now (Retry-After)"),
}
_CSV = {"text/csv": {"schema": {"type": "string"}}}


def _document() -> dict[str, Any]:
    event_post = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Event"}}},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "beacon-analytics",
            "version": "1",
            "description": "Web analytics: events in, figures out. Prose: docs/api.md.",
        },
        "paths": {
            "/event": {
                "post": {
                    "summary": "One event",
                    **event_post,
                    "responses": {
                        "202": _json(
                            {"$ref": "#/components/schemas/Accepted"}, "in the stream (or ignored)"
                        ),
                        **_EVENT_ERRORS,
                    },
                }
            },
            "/events": {
                "post": {
                    "summary": "A batch of events: a JSON array, or NDJSON",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Event"},
                                }
                            },
                            "application/x-ndjson": {"schema": {"type": "string"}},
                        },
                    },
                    "responses": {
                        "202": _json(
                            {
                                "type": "object",
                                "required": ["accepted", "event_ids", "rejected"],
                                "properties": {
                                    "accepted": {"type": "integer"},
                                    "event_ids": {"type": "array", "items": {"type": "string"}},
                                    "rejected": {"type": "array", "items": {"type": "object"}},
                                },
                            },
                            "valid events accepted, invalid ones reported by index",
                        ),
                        **_EVENT_ERRORS,
                    },
                }
            },
            "/event.gif": {
                "get": {
                    "summary": "The no-script pixel: the fields of POST /event as parameters",
                    "parameters": [
                        _SITE_ID,
                        _query("event_type", "the event's name", required=True),
                        _query("path", "the page's path"),
                    ],
                    "responses": {
                        "200": {
                            "description": "a 1x1 GIF",
                            "content": {"image/gif": {"schema": {"type": "string"}}},
                        },
                        "400": _json(_ERROR, "invalid parameters"),
                    },
                }
            },
            "/api/event": {
                "post": {
                    "summary": "Plausible's Events API, for its trackers (docs/compatibility.md)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "responses": {
                        "202": {
                            "description": "ok",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "400": _json({"type": "object"}, "Plausible's error shape"),
                    },
                }
            },
            "/api/send": {
                "post": {
                    "summary": "Umami's /api/send, for its trackers (docs/compatibility.md)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "responses": {
                        "200": _json(
                            {"type": "object"},
                            "the event id, or {beep: boop} for what is not stored",
                        ),
                        "400": _json({"type": "object"}, "invalid"),
                    },
                }
            },
            "/script.js": {
                "get": {
                    "summary": "Our tracker",
                    "responses": {
                        "200": {
                            "description": "the script (gzip where accepted; ETag)",
                            "content": {"application/javascript": {"schema": {"type": "string"}}},
                        },
                        "304": {"description": "the copy the client holds is current"},
                    },
                }
            },
            "/stats": {
                "get": {
                    "summary": "One day of a site: the original report",
                    "parameters": [_SITE_ID, _query("date", "YYYY-MM-DD, default today (UTC)")],
                    "responses": {
                        "200": _json(
                            {"$ref": "#/components/schemas/DailyStats"}, "the day's figures"
                        ),
                        "400": _json(_ERROR, "a bad parameter"),
                        "401": _json(_ERROR, "no valid API key"),
                        "403": _json(_ERROR, "the key may not read the site"),
                        "503": _json(_ERROR, "the database cannot answer now"),
                    },
                }
            },
            "/api/v1/stats/realtime/visitors": {
                "get": {
                    "summary": "Visitors of the last 5 minutes: a bare integer",
                    "parameters": [_SITE_ID],
                    "responses": {"200": _json({"type": "integer"}, "the count"), **_STATS_ERRORS},
                }
            },
            "/api/v1/stats/aggregate": {
                "get": {
                    "summary": "Metrics over a period (Plausible's Stats API v1)",
                    "parameters": [
                        *_STATS_COMMON,
                        _query("compare", "previous_period: add change and comparison_value"),
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["results"],
                                "properties": {
                                    "results": {
                                        "type": "object",
                                        "additionalProperties": {
                                            "type": "object",
                                            "required": ["value"],
                                            "properties": {
                                                "value": {"type": ["number", "null"]},
                                                "change": {"type": ["number", "null"]},
                                                "comparison_value": {"type": ["number", "null"]},
                                            },
                                        },
                                    }
                                },
                            },
                            "each metric's value",
                        ),
                        **_STATS_ERRORS,
                    },
                }
            },
            "/api/v1/stats/timeseries": {
                "get": {
                    "summary": "Metrics per hour (period=day), day or month",
                    "parameters": [
                        *_STATS_COMMON,
                        _query("interval", "day or month", enum=["day", "month", "date"]),
                        _query("format", "json or csv", enum=["json", "csv"]),
                    ],
                    "responses": {
                        "200": {
                            "description": "a row per bucket, empty ones included",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Rows"}
                                },
                                **_CSV,
                            },
                        },
                        **_STATS_ERRORS,
                    },
                }
            },
            "/api/v1/stats/breakdown": {
                "get": {
                    "summary": "Metrics per value of a property",
                    "parameters": [
                        *_STATS_COMMON,
                        _query(
                            "property",
                            "event:page, event:name, event:props:KEY or visit:*",
                            required=True,
                        ),
                        _query(
                            "limit",
                            "rows a page, 1 to 1000",
                            type="integer",
                            minimum=1,
                            maximum=1000,
                            default=100,
                        ),
                        _query("page", "from 1", type="integer", minimum=1, default=1),
                        _query("format", "json or csv", enum=["json", "csv"]),
                    ],
                    "responses": {
                        "200": {
                            "description": "by the first metric, then the value",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Rows"}
                                },
                                **_CSV,
                            },
                        },
                        **_STATS_ERRORS,
                    },
                }
            },
            "/api/v1/export/events": {
                "get": {
                    "summary": "A range's raw events, streamed",
                    "parameters": [
                        _SITE_ID,
                        _query("from", "YYYY-MM-DD, first local day", required=True),
                        _query("to", "YYYY-MM-DD, last local day", required=True),
                        _query("format", "ndjson (default) or csv", enum=["ndjson", "csv"]),
                    ],
                    "responses": {
                        "200": {
                            "description": "one event a line, in time order",
                            "content": {
                                "application/x-ndjson": {"schema": {"type": "string"}},
                                **_CSV,
                            },
                        },
                        **_STATS_ERRORS,
                    },
                }
            },
            "/api/v1/sites": {
                "get": {
                    "summary": "The sites this key may read",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["sites"],
                                "properties": {
                                    "sites": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["site_id", "time_zone"],
                                            "properties": {
                                                "site_id": {"type": "string"},
                                                "time_zone": {"type": "string"},
                                            },
                                        },
                                    }
                                },
                            },
                            "sorted by id",
                        ),
                        **_STATS_ERRORS,
                    },
                }
            },
            "/dashboard": {"get": _page("The site list")},
            "/dashboard/{site_id}": {
                "get": {
                    **_page("A site's dashboard"),
                    "parameters": [
                        {
                            "name": "site_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                }
            },
            "/dashboard/assets/{file}": {
                "get": {
                    "summary": "The dashboard's module and style sheet",
                    "parameters": [
                        {
                            "name": "file",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {"description": "the file"},
                        "404": {"description": "no such file"},
                    },
                }
            },
            "/health": {"get": _status("Liveness, as before (the same as /healthz)")},
            "/healthz": {"get": _status("Liveness: the process answers")},
            "/readyz": {
                "get": {
                    "summary": "Readiness: Redis takes writes, the backlog is bounded, PostgreSQL is current",
                    "responses": {
                        "200": _json({"type": "object"}, "ready"),
                        "503": _json({"type": "object"}, "not ready: `failed` names each check"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of every ingest process",
                    "responses": {
                        "200": {
                            "description": "the text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/ledger": {
                "get": {
                    "summary": "The delivery ledger of a site's UTC day: what became of each"
                    " accepted event (docs/operations.md)",
                    "parameters": [_SITE_ID, _query("date", "YYYY-MM-DD, default today (UTC)")],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/LedgerDay"}, "the counts"),
                        "400": _json(_ERROR, "a bad parameter"),
                        "401": _json(_ERROR, "no valid API key"),
                        "403": _json(_ERROR, "the key may not read the site"),
                        "503": _json(_ERROR, "Redis or the database cannot answer now"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                }
            },
        },
        "components": {"schemas": _SCHEMAS},
    }


def _page(summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "responses": {
            "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}
        },
    }


def _status(summary: str) -> dict[str, Any]:
    return {"summary": summary, "responses": {"200": _json({"type": "object"}, "ok")}}


_LEDGER_COUNTS = (*FLOWS, "unaccounted")
_SCHEMAS: dict[str, Any] = {
    "Event": {
        "type": "object",
        "required": ["site_id", "event_type"],
        "properties": {
            "site_id": {"type": "string", "minLength": 1},
            "event_type": {"type": "string", "minLength": 1},
            "path": {"type": "string"},
            "url": {"type": "string"},
            "referrer": {"type": "string"},
            "screen_width": {"type": "integer", "minimum": 1, "maximum": 100000},
            "props": {
                "type": "object",
                "additionalProperties": {"type": ["string", "number", "boolean"]},
            },
            "interactive": {"type": "boolean"},
            "user_id": {"type": "string"},
            "timestamp": {"type": "string", "format": "date-time"},
            "event_id": {"type": "string", "format": "uuid"},
        },
    },
    "Accepted": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"enum": ["accepted", "ignored"]},
            "event_id": {"type": "string"},
        },
    },
    "Error": {
        "type": "object",
        "required": ["error", "message", "detail"],
        "properties": {
            "error": {"type": "string", "description": "a machine-readable code"},
            "message": {"type": "string"},
            "detail": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    },
    "PlausibleError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "description": "Plausible's message"},
            "code": {"type": "string", "description": "a machine-readable code"},
            "field": {"type": "string", "description": "the parameter at fault"},
        },
    },
    "DailyStats": {
        "type": "object",
        "required": ["site_id", "date", "total_views", "unique_users", "top_paths"],
        "properties": {
            "site_id": {"type": "string"},
            "date": {"type": "string", "format": "date"},
            "total_views": {"type": "integer"},
            "unique_users": {"type": "integer"},
            "top_paths": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["path", "views"],
                    "properties": {"path": {"type": "string"}, "views": {"type": "integer"}},
                },
            },
        },
    },
    "LedgerDay": {
        "type": "object",
        "required": [*_LEDGER_COUNTS, "site_id", "date", "ignored", "rejected", "balanced"],
        "properties": {
            "site_id": {"type": "string"},
            "date": {"type": "string", "format": "date"},
            **{name: {"type": "integer"} for name in _LEDGER_COUNTS},
            "ignored": {"type": "object", "additionalProperties": {"type": "integer"}},
            "rejected": {"type": "object", "additionalProperties": {"type": "integer"}},
            "balanced": {"type": "boolean"},
        },
    },
    "Rows": {
        "type": "object",
        "required": ["results"],
        "properties": {"results": {"type": "array", "items": {"type": "object"}}},
    },
}

DOCUMENT = _document()

_BODY = orjson.dumps(DOCUMENT)


async def openapi_json(request: Request) -> Response:
    return Response(_BODY, media_type="application/json")
