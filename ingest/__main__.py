"""Run the HTTP server: `python -m ingest`."""

import logging
import sys

import uvicorn

from common.config import settings_or_exit
from common.logs import configure
from ingest.app import create_app
from ingest.server import SERVER_OPTIONS

logger = logging.getLogger("ingest")


def main() -> int:
    settings = settings_or_exit()
    configure(settings.log_level)
    logger.info("starting with %r", settings)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        **SERVER_OPTIONS,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
