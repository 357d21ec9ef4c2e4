"""Errors a user can fix: the CLI prints the message alone and exits non-zero, no traceback."""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any


class PipelineError(Exception):
    """Bad input or a refused run. The message names the file or params key and what to do."""

    exit_code = 2
    # raised alike by every process of a launch (they agreed on it in the step's all-reduce): only
    # the first says it
    every_process = False


class BudgetExceeded(PipelineError):
    """The estimate stage's gate: over budget, or no plan fits in memory."""

    exit_code = 3


# A path a stage writes that it may not: read-only, no permission, or a file where a directory
# must be (a path under a regular file).
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST}


def unwritable(exc: OSError, paths: dict[str, Any]) -> PipelineError | None:
    """The one-line error for an OSError on a path a stage writes, naming the params.paths key it
    is under (`paths`: that section); None for any other OSError (a bug: its traceback is kept)."""
    if exc.errno not in _UNWRITABLE or not exc.filename:
        return None
    path = Path(os.fsdecode(exc.filename)).absolute()
    under = sorted((len(Path(value).absolute().parts), key) for key, value in paths.items()
                   if value and path.is_relative_to(Path(value).absolute()))
    where = f"or set paths.{under[-1][1]} to a path you can write" if under else "or run where you can write"
    return PipelineError(f"cannot write {exc.filename} ({exc.strerror}): make it writable, {where}")
