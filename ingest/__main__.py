"""Run the HTTP server: `python -m ingest`."""

# The signal handler goes in before the heavy imports, on purpose: a SIGTERM that comes
# while they load must end the process with status 0 (see common/signals.py).

from common.signals import early_stop

if __name__ == "__main__":
    early_stop.install()

import logging
import sys

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
