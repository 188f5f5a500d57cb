"""SIGTERM and SIGINT from the first line of a process to its last.

Imported before anything heavy (it imports only `signal`): Python's default would kill
the process (status -15) while it still loads its modules (about 0.3 s), and uvicorn,
once it stops on a signal, raises that signal again under the handler it found at
start: Python's default again. With this handler in place, a signal is recorded until
the process can take it, then handed on; it stays installed to the end, so no signal
ever meets Python's default.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType

Handler = Callable[[int, FrameType | None], None]


class EarlyStop:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._forward: Handler | None = None

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self)

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum  # only a flag, unless someone takes it
        if self._forward is not None:
            self._forward(signum, frame)

    def hand_over(self, forward: Handler | None) -> None:
        """Send signals to `forward` from now on, and any that came before; None: keep
        them here again."""
        self._forward = forward
        if forward is not None and self.signum is not None:
            forward(self.signum, None)


early_stop = EarlyStop()
