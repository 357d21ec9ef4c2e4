"""stdout and stderr that never raise, copied into a log file when the CLI is given `--log FILE`.

A stage's output may go to a terminal that is gone, a pipe whose reader died (`| tee` when Ctrl-C
reaches the whole process group, `| head`), or a closed descriptor. A failed write there must
never stop a training from checkpointing: every write goes through `NeverRaises`, which drops
what it cannot write. The log file is written from inside the process (no pipe that dies with the
terminal), so Snakemake's `log:` holds the whole output even when the stage is interrupted.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any

from pipeline.core.errors import PipelineError

# A write to a broken pipe or closed stream: OSError (EPIPE, EIO, EBADF) or ValueError (closed file).
_FAILED_WRITE = (OSError, ValueError)


class NeverRaises:
    """A text stream that writes to `stream`, and to `copy` when given, each line flushed at once;
    a destination that fails once is dropped, silently (there is nowhere left to say so)."""

    def __init__(self, stream: IO[str] | None, copy: IO[str] | None = None):
        self._stream, self._copy = stream, copy

    def write(self, text: str) -> int:
        self._copy = _written(self._copy, text)
        self._stream = _written(self._stream, text)
        return len(text)

    def flush(self) -> None:
        for target in (self._copy, self._stream):
            try:
                if target is not None:
                    target.flush()
            except _FAILED_WRITE:
                pass

    def isatty(self) -> bool:
        try:
            return bool(self._stream and self._stream.isatty())
        except _FAILED_WRITE:
            return False

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, ...: what the wrapped stream says
        return getattr(self._stream if self._stream is not None else sys.__stderr__, name)


def _written(target: IO[str] | None, text: str) -> IO[str] | None:
    """`target` after writing `text` to it, or None once a write to it failed."""
    if target is None:
        return None
    try:
        target.write(text)
        target.flush()
        return target
    except _FAILED_WRITE:
        return None


def install(log: Path | None = None, *, append: bool = False) -> None:
    """Route sys.stdout and sys.stderr through NeverRaises, both copied into `log` when given:
    emptied first, or appended to (`append`: the processes of one distributed launch share it)."""
    copy = None
    if log is not None:
        log = Path(log)
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            if not append:
                log.write_text("", encoding="utf-8")
            # O_APPEND for every writer, so a launcher's and its workers' lines never overwrite each other
            copy = open(log, "a", encoding="utf-8")
        except OSError as exc:
            raise PipelineError(f"cannot write the log file {log} ({exc.strerror}): make its directory "
                                "writable or give another --log") from None
    sys.stdout = NeverRaises(sys.stdout, copy)
    sys.stderr = NeverRaises(sys.stderr, copy)
