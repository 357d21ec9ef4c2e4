"""Errors a user can fix: the CLI prints the message alone and exits non-zero, no traceback."""
from __future__ import annotations

import errno
import os
import re
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
# A disk (or a quota) that filled up while a stage wrote its outputs.
FULL_DISK = {errno.ENOSPC, errno.EDQUOT}
# A staged output's name (pipeline/core/atomic.py): `.tokens.tmp-123` stands for `tokens`.
_STAGED = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-\d+$")


def unwritable(exc: OSError, paths: dict[str, Any]) -> PipelineError | None:
    """The one-line error for an OSError on a path a stage writes, naming the params.paths key it
    is under (`paths`: that section); None for any other OSError (a bug: its traceback is kept)."""
    if exc.errno not in _UNWRITABLE | FULL_DISK or not exc.filename:
        return None
    path = output_path(Path(os.fsdecode(exc.filename)).absolute())
    under = sorted((len(Path(value).absolute().parts), key) for key, value in paths.items()
                   if value and path.is_relative_to(Path(value).absolute()))
    key = f"paths.{under[-1][1]}" if under else None
    if exc.errno in FULL_DISK:  # the staged copy is removed: what was there before is kept
        where = f"or set {key} to a disk with room" if key else "or write to a disk with room"
        return PipelineError(f"cannot write {path}: the disk is full ({exc.strerror}); nothing was replaced: "
                             f"free space on it (df -h {path.parent}), {where}")
    blocker = next((p for p in (path, *path.parents) if p.is_file()), None)
    if exc.errno in (errno.EEXIST, errno.ENOTDIR) and blocker:
        where = f"or set {key} to a folder" if key else "or write elsewhere"
        return PipelineError(f"cannot write {path}: {blocker} is a file, not a folder: move it away, {where}")
    where = f"or set {key} to a path you can write" if key else "or run where you can write"
    return PipelineError(f"cannot write {exc.filename} ({exc.strerror}): make it writable, {where}")


def output_path(path: Path) -> Path:
    """The output a staged path will become: data/.tokens.tmp-123/.train.bin.tmp-123 -> data/tokens/train.bin."""
    return Path(*(_STAGED.sub(r"\g<name>", part) for part in path.parts))
