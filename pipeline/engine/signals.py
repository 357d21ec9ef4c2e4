"""SIGTERM and SIGINT while training: the step finishes, a checkpoint is written, then the run exits."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from pipeline.core.errors import PipelineError


class TrainingInterrupted(PipelineError):
    """SIGTERM/SIGINT: the step finished and a checkpoint was written; rerun to resume."""

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

    def handler(signum, frame):
        if caught:
            raise KeyboardInterrupt
        caught["signum"] = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step and checkpointing (signal again to abort)",
              flush=True)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
