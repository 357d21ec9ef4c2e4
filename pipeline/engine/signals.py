"""SIGTERM and SIGINT while training: the step finishes, a checkpoint is written, then the run exits
130 (SIGINT) or 143 (SIGTERM).

The handler only records the signal: it writes nothing, since the stream it would write to may be
the one that is gone (a `| tee` killed by the same Ctrl-C), and a failed write there must not stop
the checkpoint. The loop says what it does once the step is over (pipeline/engine/trainer.py).
"""
from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from pipeline.core.errors import PipelineError

# One Ctrl-C can reach a process more than once within milliseconds: from the terminal and again
# from a driver or launcher that forwards it. Only a signal this long after the first is a second
# one, which aborts at once.
SAME_SIGNAL_SECONDS = 2.0


class TrainingInterrupted(PipelineError):
    """SIGTERM/SIGINT: the step finished and a checkpoint was written; rerun to resume."""

    every_process = True

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


@contextmanager
def signals_caught() -> Iterator[dict[str, int]]:
    """SIGTERM/SIGINT set a flag the loop checks after each step; a second one aborts at once."""
    caught: dict[str, int] = {}
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    first_at: list[float] = []

    def handler(signum, frame):
        if caught:
            if time.monotonic() - first_at[0] > SAME_SIGNAL_SECONDS:
                raise KeyboardInterrupt
            return
        first_at.append(time.monotonic())
        caught["signum"] = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
