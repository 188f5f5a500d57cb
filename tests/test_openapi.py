"""GET /openapi.json: a valid OpenAPI 3.1 document (openapi-spec-validator), naming
every route the server has, whose response schemas the server's real answers meet."""

from __future__ import annotations

import re
from typing import Any

import httpx
import jsonschema
from openapi_spec_validator import validate
from starlette.routing import Mount, Route

from common.config import Settings
from ingest.app import create_app


async def document(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    spec: dict[str, Any] = response.json()
    return spec


async def test_the_document_is_valid_openapi_naming_every_route(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    spec = await document(http)
    validate(spec)  # raises on any fault
    app = create_app(settings)
    served: set[tuple[str, str]] = set()
    for path, (_, methods) in app._routes.items():
        served |= {(path, method.lower()) for method in methods if method in ("GET", "POST")}
    for route in app._fallback.routes:
        if isinstance(route, Mount):
            served.add((f"{route.path}/{{file}}", "get"))
        elif isinstance(route, Route):
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
            served |= {(path, m.lower()) for m in route.methods or () if m != "HEAD"}
    described = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert served == described


def check(spec: dict[str, Any], path: str, method: str, response: httpx.Response) -> None:
    """The answer meets the document's schema for its path, method and status."""
    answer = spec["paths"][path][method]["responses"][str(response.status_code)]
    content_type = response.headers["content-type"].split(";")[0]
    schema = answer["content"][content_type]["schema"]
    if content_type == "application/json":
        root = {"components": spec["components"], **schema}
        jsonschema.validate(response.json(), root, cls=jsonschema.Draft202012Validator)


async def test_real_answers_meet_the_response_schemas(http: httpx.AsyncClient) -> None:
    spec = await document(http)
    event = {"site_id": "s.example", "event_type": "page_view", "path": "/", "props": {"a": 1}}
    check(spec, "/event", "post", await http.post("/event", json=event))
    check(spec, "/event", "post", await http.post("/event", json={"site_id": "s.example"}))
    check(spec, "/events", "post", await http.post("/events", json=[event, {"site_id": ""}]))
    check(spec, "/stats", "get", await http.get("/stats", params={"site_id": "s.example"}))
    check(
        spec,
        "/stats",
        "get",
        await http.get("/stats", params={"site_id": "s.example", "date": "x"}),
    )
    stats = "/api/v1/stats"
    site = {"site_id": "s.example"}
    check(
        spec,
        f"{stats}/realtime/visitors",
        "get",
        await http.get(f"{stats}/realtime/visitors", params=site),
    )
    for params in (
        site | {"metrics": "visitors,bounce_rate", "compare": "previous_period"},
        site | {"period": "x"},
    ):
        check(
            spec, f"{stats}/aggregate", "get", await http.get(f"{stats}/aggregate", params=params)
        )
    check(spec, f"{stats}/timeseries", "get", await http.get(f"{stats}/timeseries", params=site))
    breakdown = site | {"property": "visit:source"}
    check(spec, f"{stats}/breakdown", "get", await http.get(f"{stats}/breakdown", params=breakdown))
    check(spec, "/api/v1/sites", "get", await http.get("/api/v1/sites"))
    check(spec, "/dashboard", "get", await http.get("/dashboard"))
    check(spec, "/healthz", "get", await http.get("/healthz"))
