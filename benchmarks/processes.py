"""Starting the measured processes, pinned to a core, and reading their peak memory."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpus() -> tuple[int | None, int | None]:
    """(service core, load generator core), or (None, None) where pinning is not possible."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2 or shutil.which("taskset") is None:
        return None, None
    return available[0], available[1]


def pinned(command: list[str], cpu: int | None) -> list[str]:
    return command if cpu is None else ["taskset", "-c", str(cpu), *command]


def memory_mb(pid: int, field: str) -> float:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM, ...) in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise LookupError(field)


class Measured:
    """A child process whose peak resident memory is known once it has stopped.

    The peak is the kernel's high-water mark of the process's own memory (VmHWM, reset
    by exec), sampled until the exit; ru_maxrss would count the pages the child shared
    with this (large) benchmark process between fork and exec.
    """

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path):
        self.command = command
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.peak_rss_mb: float | None = None
        self.returncode: int | None = None

    def wait(self, timeout: float) -> int:
        """Wait for the exit, sampling the peak RSS meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            self._sample_peak()
            try:
                self.returncode = self.process.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    self.process.kill()
                    deadline = time.monotonic() + 10
                continue
            self._log.close()
            return self.returncode

    def _sample_peak(self) -> None:
        try:
            self.peak_rss_mb = memory_mb(self.process.pid, "VmHWM")
        except (FileNotFoundError, ProcessLookupError, ValueError, LookupError):
            pass  # exited between the checks: the last sample stands

    def check_running(self) -> None:
        """Fail loudly if the process has exited on its own."""
        if self.process.poll() is not None:
            raise self.failure("exited while it was measured")

    def failure(self, what: str) -> RuntimeError:
        """An error saying what went wrong, with the end of the process's log: the logs
        live in a temporary folder that is gone once the benchmark stops."""
        self._log.flush()
        with open(self._log.name, "rb") as log:
            tail = log.read()[-3000:].decode(errors="replace")
        return RuntimeError(
            f"{' '.join(self.command)} {what} (status {self.process.poll()}):\n{tail}"
        )

    def stop(self) -> None:
        if self.returncode is None:
            self._sample_peak()  # the high-water mark so far, before shutting down
            self.process.send_signal(signal.SIGTERM)
            self.wait(timeout=15)


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


@contextlib.contextmanager
def http_server(
    module: str, env: dict[str, str], port: int, cpu: int | None, log_path: Path
) -> Iterator[Measured]:
    """`python -m module` listening on `port`, pinned to `cpu`; stopped on exit."""
    server = Measured(pinned([sys.executable, "-m", module], cpu), env, log_path)
    try:
        wait_for_port(port, server.process)
        yield server
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
