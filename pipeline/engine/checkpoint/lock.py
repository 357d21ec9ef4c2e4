"""One training run per checkpoints directory: `RunLock`, an flock on checkpoints/.lock that names its
holder, so a second run is refused with a message saying who holds it."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError

LOCK = ".lock"


class RunLock:
    """`with RunLock(root): ...` keeps a second training run off the same checkpoints directory.

    It holds an exclusive fcntl.flock on root/.lock, which the kernel drops when the process
    dies however it dies, and writes the holder into the file as JSON ({"pid", "host",
    "started", "command"}) so that a refused run can name it. Entering raises PipelineError
    (exit code 2) at once, never waits, when:
    - another live process holds the lock (the message names its PID, host, start and command);
    - the file names a live process of this host that is not this one but holds no flock (a
      reused PID, or a run on a file system flock does not reach: the message says how to tell
      and how to remove the file);
    - the file names another host, whose processes cannot be checked from here (the message
      says so and how to remove it if that run is gone).
    A file left by a dead process of this host is taken over with one warning line on stderr.
    Leaving removes the file. Under torch DDP only rank 0 should take it.
    """

    def __init__(self, root: Path, command: str | None = None):
        self.root = Path(root)
        self.path = self.root / LOCK
        self.command = command if command is not None else shlex.join(sys.argv)
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = self._open_locked()
        try:
            self._take_over(_read_holder(fd))
            _write_holder(fd, {"pid": os.getpid(), "host": socket.gethostname(),
                               "started": datetime.now().astimezone().isoformat(timespec="seconds"),
                               "command": self.command})
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is None:
            return
        if _same_file(self._fd, self.path):
            self.path.unlink()  # before closing: a run that opened it meanwhile sees it is gone
        os.close(self._fd)
        self._fd = None

    def _open_locked(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_flock(fd):
                holder = _read_holder(fd)
                os.close(fd)
                raise PipelineError(self._in_use_message(holder))
            if _same_file(fd, self.path):
                return fd
            os.close(fd)  # its holder removed it between our open and flock: lock the new one

    def _take_over(self, holder: dict[str, Any] | None) -> None:
        """The flock is ours; the file may still name a holder that flock could not see."""
        if not holder:
            return
        if holder.get("host") != socket.gethostname():
            raise PipelineError(self._other_host_message(holder))
        pid = holder.get("pid")
        if pid != os.getpid() and _alive(pid):
            raise PipelineError(self._unlocked_holder_message(holder))
        print(f"WARNING: {self.path} was left by PID {pid} on {holder.get('host')} (started "
              f"{holder.get('started')}), which is no longer running: taking it over", file=sys.stderr)

    def _in_use_message(self, holder: dict[str, Any] | None) -> str:
        if not holder:
            return (f"{self.root} is in use by another training run, which is starting and has not written "
                    f"{self.path} yet: wait for it to finish, or point paths.checkpoints elsewhere")
        pid, host = holder.get("pid"), holder.get("host")
        stop = f"stop it (kill {pid})" if host == socket.gethostname() else f"stop it on {host}"
        return (f"{self.root} is in use by another training run: PID {pid} on host {host}, started "
                f"{holder.get('started')}, command: {holder.get('command')}. Wait for it to finish, {stop}, "
                "or point paths.checkpoints elsewhere to train separately")

    def _unlocked_holder_message(self, holder: dict[str, Any]) -> str:
        # a live process that holds no flock on the file: most likely its id was reused, but a run
        # on a file system where flock does not reach would look the same, so do not guess
        return (f"{self.path} names PID {holder.get('pid')} on host {holder.get('host')} (started "
                f"{holder.get('started')}, command: {holder.get('command')}) as the training run using "
                f"{self.root}; that process is running but does not hold the lock. If it is that run, wait "
                f"for it to finish or point paths.checkpoints elsewhere; if not (process ids get reused), "
                f"delete {self.path} and rerun")

    def _other_host_message(self, holder: dict[str, Any]) -> str:
        return (f"{self.path} says a training run on host {holder.get('host')} holds {self.root} (PID "
                f"{holder.get('pid')}, started {holder.get('started')}, command: {holder.get('command')}); "
                f"a process on another host cannot be checked from {socket.gethostname()}. If that run is "
                f"still going, wait for it or point paths.checkpoints elsewhere; if it is gone, delete "
                f"{self.path} and rerun")


def _try_flock(fd: int) -> bool:
    """True when this fd now holds the lock, False when another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return True  # a file system without flock: the holder record alone decides
        raise


def _same_file(fd: int, path: Path) -> bool:
    try:
        mine, now = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def _read_holder(fd: int) -> dict[str, Any] | None:
    """The record in the lock file; None when empty or unreadable (being written, or garbage)."""
    try:
        holder = json.loads(os.pread(fd, 1 << 16, 0).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _write_holder(fd: int, holder: dict[str, Any]) -> None:
    data = (json.dumps(holder) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _alive(pid: Any) -> bool:
    """Whether a process with this id runs on this host (a zombie has finished: not alive)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True
