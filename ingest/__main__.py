"""Run the HTTP server: `python -m ingest`."""

# The signal handler goes in before the heavy imports, on purpose: a SIGTERM that comes
# while they load must end the process with status 0 (see common/signals.py).

from common.signals import early_stop

if __name__ == "__main__":
    early_stop.install()

import logging
import os
import resource
import sys

import uvicorn

from common.config import settings_or_exit
from common.logs import configure
from ingest.app import create_app
from ingest.edge import EdgeLimits, edge_protocol
from ingest.server import SERVER_OPTIONS
from ingest.supervisor import WORKER_ENV, reuse_port_socket, supervise

logger = logging.getLogger("ingest")

# Requests still in flight at a stop get this long; then uvicorn cancels them. Without a
# limit, one client that never finishes sending its body would keep the server up.
GRACEFUL_SHUTDOWN_S = 5
# File descriptors kept for everything but client connections (Redis, PostgreSQL, logs).
RESERVED_FDS = 256


def connection_cap(wanted: int) -> int:
    """MAX_CONNECTIONS, lowered to what the file-descriptor limit allows once the soft
    limit is raised to the hard one (a server is expected to use what it may)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or wanted <= soft - RESERVED_FDS:
        return wanted
    cap = max(16, soft - RESERVED_FDS)
    logger.warning(
        "MAX_CONNECTIONS=%d is more than %d open files allow: %d connections at most",
        wanted,
        soft,
        cap,
    )
    return cap


def main() -> int:
    settings = settings_or_exit()
    configure(settings.log_level, settings.log_format)
    if early_stop.signum is not None:  # asked to stop while loading: nothing to undo
        logger.info("stopped before starting (signal %d)", early_stop.signum)
        return 0
    worker = os.environ.get(WORKER_ENV)  # one of several, started by the supervisor
    if worker is None:
        logger.info("starting with %r", settings)
        if settings.ingest_processes > 1:
            return supervise(settings.ingest_processes)
    limits = EdgeLimits(
        header_timeout_s=settings.header_timeout_ms / 1000,
        keep_alive_s=settings.keep_alive_ms / 1000,
        body_timeout_s=settings.body_timeout_ms / 1000,
        max_connections=connection_cap(settings.max_connections),
        max_connections_per_address=settings.max_connections_per_address,
        trusted_proxies=settings.trusted_proxies,
    )
    protocol = edge_protocol(limits)
    config = uvicorn.Config(
        create_app(settings, protocol.guard),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        **{**SERVER_OPTIONS, "http": protocol},
    )
    server = uvicorn.Server(config)
    early_stop.hand_over(server.handle_exit)
    # One of several on the port: a socket of its own, bound with SO_REUSEPORT.
    server.run(
        sockets=None if worker is None else [reuse_port_socket(settings.host, settings.port)]
    )
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
