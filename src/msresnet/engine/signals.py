"""Graceful stop on SIGINT/SIGTERM: finish the step, checkpoint, exit 130/143; a second SIGINT exits at once.

The handler only sets a flag; the training loop checks it between steps, so a checkpoint is never written from
inside a signal handler. A second SIGINT while the first is being handled ends the process immediately with
``os._exit`` — safe because every checkpoint write is atomic, so the last good checkpoint stays intact.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType


class TrainingInterrupted(SystemExit):
    """Raised after the stop checkpoint is written; a ``SystemExit`` carrying 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, signum: int, checkpoint: str | None) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.checkpoint = checkpoint


class GracefulStop:
    """Context manager that turns SIGINT/SIGTERM into a stop request (only in the main thread)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop signal has arrived."""
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            os._exit(128 + signum)  # second Ctrl-C: the user wants out now
        self.signum = signum

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()
