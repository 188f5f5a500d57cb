"""What the browser tests share: Debian's chromium, driven headless by Playwright, and a
site's own origin for the test pages.

Chromium resolves every *.example host name to 127.0.0.1 (HOST_RULES), so that a page on
shop.example is not localhost to a tracker. `make test` installs chromium where it is
missing (scripts/install-package.sh chromium); a test without it fails, it is not skipped, so
that a missing install cannot pass for a green run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHROMIUM = "/usr/bin/chromium"
# Headless Chromium calls itself HeadlessChrome, which the bot filter drops.
DESKTOP_USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
HOST_RULES = "--host-resolver-rules=MAP *.example 127.0.0.1"

# A POST to the origin: (path, body, request headers) -> (status, answer body).
PostHandler = Callable[[str, bytes, Message], tuple[int, bytes]]


def require_chromium() -> str:
    assert os.path.exists(CHROMIUM), (
        f"{CHROMIUM} is missing: `make test` installs it (scripts/install-package.sh chromium)"
    )
    return CHROMIUM


class PageOrigin:
    """A site's origin on a port of its own: HTML pages and other files by path (any
    query ignored), and POSTs to `post`, if given."""

    def __init__(self, post: PostHandler | None = None) -> None:
        self.pages: dict[str, str] = {}
        self.files: dict[str, tuple[bytes, str]] = {}  # path: (body, content type)
        pages, files = self.pages, self.files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path in files:
                    self._answer(200, *files[path])
                elif path in pages:
                    self._answer(200, pages[path].encode(), "text/html; charset=utf-8")
                else:
                    self._answer(404, b"not found", "text/plain")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if post is None:
                    self._answer(404, b"not found", "text/plain")
                    return
                status, answer = post(self.path, body, self.headers)
                self._answer(status, answer, "application/json")

            def _answer(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str, host: str = "shop.example") -> str:
        return f"http://{host}:{self.port}{path}"

    def __enter__(self) -> PageOrigin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
