"""`python -m ingest` and `python -m processor` as real processes that a test starts,
signals and watches, with their output kept in a file (a pipe could fill and stall them)."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT

_SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


class Service:
    def __init__(self, module: str, env: dict[str, str], log_path: Path):
        self.module = module
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def catches_sigterm(self) -> bool:
        """Whether the process has a SIGTERM handler of its own yet (Linux: the SigCgt
        mask in /proc). Before that, any SIGTERM kills it whatever the code does."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except FileNotFoundError:  # gone
            return False
        for line in status.splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & _SIGTERM_BIT)
        return False

    async def wait_until_it_catches_sigterm(self, within: float = 20) -> bool:
        """True once it does; False if it exited first."""
        deadline = time.monotonic() + within
        while not self.catches_sigterm():
            if self.process.poll() is not None:
                return False
            assert time.monotonic() < deadline, f"{self.module} never handled SIGTERM"
            await asyncio.sleep(0.002)
        return True

    async def wait_for_output(self, text: str, within: float = 20) -> None:
        assert await self.reaches(text, within), f"exited before {text!r}:\n{self.output()}"

    async def reaches(self, text: str, within: float = 20) -> bool:
        """True once `text` is in its output; False if it exited first."""
        deadline = time.monotonic() + within
        while text not in self.output():
            if self.process.poll() is not None:
                return False
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output()}"
            await asyncio.sleep(0.05)
        return True

    async def wait_for_port(self, port: int, within: float = 20) -> None:
        deadline = time.monotonic() + within
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.module} exited:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                assert time.monotonic() < deadline, f"port {port} never opened"
                await asyncio.sleep(0.05)

    async def wait_for_exit(self, within: float) -> int | None:
        """The exit status, or None if the process still runs after `within` seconds."""
        deadline = time.monotonic() + within
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.01)
        return self.process.returncode

    async def stop(self, within: float = 10) -> int | None:
        """SIGTERM, then the exit status (None: still running after `within` seconds)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.wait_for_exit(within)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
