"""Run the HTTP server: `python -m ingest`."""

# The signal handler goes in before the heavy imports, on purpose:
# ruff: noqa: E402

import signal
import sys
from collections.abc import Callable
from types import FrameType

Handler = Callable[[int, FrameType | None], None]


class EarlyStop:
    """SIGTERM and SIGINT from the first line of the process on.

    Python's default would kill the process (status -15) while it still loads its
    modules, and uvicorn, once it stops on a signal, raises that signal again under the
    handler it found at start: Python's default, again -15. With this one in place, a
    signal is recorded until the server can take it, then handed to the server, and the
    one uvicorn raises again lands here and ends nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._forward: Handler | None = None

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self)

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self._forward is None:
            self.signum = signum  # only a flag: hand_over acts on it
        else:
            self._forward(signum, frame)

    def hand_over(self, forward: Handler) -> None:
        self._forward = forward
        if self.signum is not None:  # it came while the process was starting
            forward(self.signum, None)


early_stop = EarlyStop()
if __name__ == "__main__":
    early_stop.install()

import logging

import uvicorn

from common.config import settings_or_exit
from common.logs import configure
from ingest.app import create_app
from ingest.server import SERVER_OPTIONS

logger = logging.getLogger("ingest")

# Requests still in flight at a stop get this long; then uvicorn cancels them. Without a
# limit, one client that never finishes sending its body would keep the server up.
GRACEFUL_SHUTDOWN_S = 5


def main() -> int:
    settings = settings_or_exit()
    configure(settings.log_level)
    if early_stop.signum is not None:  # asked to stop while loading: nothing to undo
        logger.info("stopped before starting (signal %d)", early_stop.signum)
        return 0
    logger.info("starting with %r", settings)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        **SERVER_OPTIONS,
    )
    server = uvicorn.Server(config)
    early_stop.hand_over(server.handle_exit)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
