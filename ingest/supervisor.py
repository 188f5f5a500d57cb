"""INGEST_PROCESSES=N: N server processes on one port.

Each process binds the port with SO_REUSEPORT, so the kernel spreads new connections
over them (each has its own accept queue: no process wakes for another's connection).
All N share what must be shared through Redis already: the visitor salts, the stream
and its backlog, the ignored counts. Limits (connections, per-address and per-site
rates) are each process's own: with N processes they hold N times over.

The supervisor only starts them, hands each SIGTERM or SIGINT on, and waits. When one
exits on its own, it stops the others and exits 1, so that whatever runs the service
(systemd, Docker, Kubernetes) restarts all of it: a half-running server is harder to see.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from types import FrameType

from common.signals import early_stop

logger = logging.getLogger(__name__)

WORKER_ENV = "INGEST_WORKER"  # set in each server process: its number, from 1


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """The listening socket of one of several processes on the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def supervise(count: int) -> int:
    workers = [
        subprocess.Popen([sys.executable, "-m", "ingest"], env={**os.environ, WORKER_ENV: str(n)})
        for n in range(1, count + 1)
    ]
    logger.info("started %d server processes: %s", count, [w.pid for w in workers])
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    early_stop.hand_over(forward)
    failed = False
    running = list(workers)
    while running:
        pid, status = os.wait()  # resumed after a signal's handler (PEP 475)
        exited = next((w for w in running if w.pid == pid), None)
        if exited is None:
            continue
        running.remove(exited)
        exited.returncode = os.waitstatus_to_exitcode(status)
        if exited.returncode != 0 or not stopping:
            failed = True
            if not stopping:
                logger.error(
                    "server process %d exited (%d) on its own: stopping the others",
                    pid,
                    exited.returncode,
                )
                forward(signal.SIGTERM, None)
    return 1 if failed else 0
