"""Disk space for checkpoints: refuse a save the disk cannot hold before writing a byte, and turn a
write that ran out of space anyway into one PipelineError that says what to delete.

Each message ends with advice from the caller (`advice()`, called only when it is needed: sizing
the directories it names walks them).
"""
from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from pipeline.core.errors import PipelineError

# Headroom over a checkpoint's size: manifest.json, its temporary copy and file-system overhead.
SPACE_MARGIN_BYTES = 1 << 20
SPACE_MARGIN_FRACTION = 0.05
# how torch and safetensors word a write that failed for lack of space
_FULL_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_DISK_WORDS = ("no space left", "os error 28", "storagefull", "quota exceeded", "unexpected pos",
                    "file write failed")


def ensure_space(root: Path, needed_bytes: int, what: str, advice: Callable[[], str]) -> None:
    """Raise PipelineError unless the disk holding root (or its nearest existing parent) has
    `needed_bytes` free plus a margin (SPACE_MARGIN_BYTES + SPACE_MARGIN_FRACTION of it)."""
    free = free_bytes(root)
    margin = SPACE_MARGIN_BYTES + int(needed_bytes * SPACE_MARGIN_FRACTION)
    if free < needed_bytes + margin:
        raise PipelineError(f"not enough disk space for {what} in {root}: it needs about "
                            f"{human_bytes(needed_bytes)} plus {human_bytes(margin)} headroom but only "
                            f"{human_bytes(free)} is free there. {advice()}")


@contextmanager
def full_disk_is_an_error(root: Path, needed_bytes: int, what: str, advice: Callable[[], str]) -> Iterator[None]:
    """Turn a write that failed for lack of space into one PipelineError; other errors pass."""
    try:
        yield
    except Exception as exc:
        if not _is_full_disk(exc):
            raise
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise PipelineError(f"could not write {what} in {root}: the disk filled up ({detail}); it needs about "
                            f"{human_bytes(needed_bytes)} and {human_bytes(free_bytes(root))} is free now. "
                            f"{advice()}") from exc


def _is_full_disk(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:  # the cause or context may hold the errno
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL_DISK_ERRNOS:
            return True
        if any(word in str(exc).lower() for word in _FULL_DISK_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds path, or would hold it once created."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def disk_bytes(path: Path) -> int:
    """Space a file or directory tree takes on disk (allocated blocks, not apparent size)."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    return sum(_allocated(p) for p in files)


def _allocated(file: Path) -> int:
    st = file.stat()
    return max(st.st_size, getattr(st, "st_blocks", 0) * 512)


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; binary units, as df -h and du -h print them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
