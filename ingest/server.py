"""How uvicorn serves the HTTP app: shared with the benchmark's bare reference app, so
that the two differ only in what the app itself does."""

from typing import Any

SERVER_OPTIONS: dict[str, Any] = {
    "interface": "asgi3",  # IngestRouter.__call__ returns a coroutine: uvicorn cannot infer it
    "loop": "uvloop",
    "http": "httptools",  # ingest/__main__.py uses ingest.edge's protocol, built on it
    "ws": "none",  # no WebSockets: an Upgrade request is an ordinary request
    "access_log": False,
    "log_config": None,
    "server_header": False,
    "proxy_headers": False,  # X-Forwarded-For is read by ingest.client, from trusted proxies only
}
