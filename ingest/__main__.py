"""Run the HTTP server: `python -m ingest`."""

import logging
import sys

import uvicorn

from common.config import settings_or_exit
from common.logs import configure
from ingest.app import create_app

logger = logging.getLogger("ingest")


def main() -> int:
    settings = settings_or_exit()
    configure(settings.log_level)
    logger.info("starting with %r", settings)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,  # X-Forwarded-For is read by ingest.client, from trusted proxies only
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
