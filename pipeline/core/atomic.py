"""Outputs appear whole or not at all: write aside, then rename into place."""
from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _aside(final: Path, tag: str) -> Path:
    return final.with_name(f".{final.name}.{tag}-{os.getpid()}")


@contextmanager
def staging_dir(final: str | Path, marker: str | None = None) -> Iterator[Path]:
    """Yield an empty directory beside `final`; on success it replaces `final` in one rename.

    On an exception the staging directory is removed and `final` is left as it was.

    A `final` that is a mount point (a container's volume on models/final) cannot be renamed: the
    staging directory is then inside it and its contents replace `final`'s one rename each, the
    `marker` file (the one its readers look for first: config.json, manifest.json) removed first
    and put back last, so that no reader takes a half-replaced directory for a whole one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if is_mount_point(final):
        with _staging_inside(final, marker) as stage:
            yield stage
        return
    with _empty_stage(_aside(final, "tmp")) as stage:
        yield stage
    old = _aside(final, "old")
    if final.exists():
        final.rename(old)
    stage.rename(final)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _empty_stage(stage: Path) -> Iterator[Path]:
    """An empty staging directory (one a killed run left there is removed first), removed again if
    the work inside it raises."""
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


@contextmanager
def _staging_inside(final: Path, marker: str | None) -> Iterator[Path]:
    # on the mount's own file system: renames stay atomic
    with _empty_stage(final / f".staging.tmp-{os.getpid()}") as stage:
        yield stage
    if marker:
        (final / marker).unlink(missing_ok=True)
    for old in final.iterdir():   # the old outputs, and what a killed run staged here
        if old == stage or old.name == "lost+found":   # an ext4 volume's own
            continue
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    for new in sorted(stage.iterdir(), key=lambda p: p.name == marker):
        new.rename(final / new.name)
    stage.rmdir()


def is_mount_point(path: Path) -> bool:
    """Whether `path` is mounted on (a volume, a bind mount, a tmpfs): os.path.ismount, or listed
    in /proc/self/mountinfo, which also names a bind mount from the same file system."""
    if os.path.ismount(path):
        return True
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:   # Linux: field 5 is the mount point
            points = {_unescape(line.split()[4]) for line in fh}
    except OSError:
        return False
    return str(path.resolve()) in points


def _unescape(field: str) -> str:
    """mountinfo writes a space, tab, newline and backslash in octal: \\040."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


@contextmanager
def staging_file(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success it is fsynced and renamed onto `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _aside(final, "tmp")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with staging_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")
