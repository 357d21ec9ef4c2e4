"""How a stage's process stands to what started it, for every stage: a worker of a launch
(pipeline/core/launch.py) or a stage under `dvc repro`, which must not outlive DVC."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

# How often a stage under DVC looks whether DVC still runs: well inside a step, and reading one
# /proc file costs microseconds.
WATCH_SECONDS = 0.1


def inside_launch() -> bool:
    """True in a worker started by torchrun or accelerate launch (each sets LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def first_process() -> bool:
    """This process alone, or rank 0 of a launch (torchrun sets RANK)."""
    return os.environ.get("RANK", "0") == "0"


def stop_with_driver() -> None:
    """Under `dvc repro` (which sets DVC_STAGE), a SIGTERM to this process when DVC ends: a SIGTERM
    to dvc's PID kills it at once (it handles none, dvc/stage/run.py) and would leave train running
    unwatched; this way train checkpoints at the step and exits 143. A worker of a launch watches
    its launcher, which watches DVC. Linux only (it reads /proc)."""
    if "DVC_STAGE" not in os.environ or not sys.platform.startswith("linux"):
        return
    watched = os.getppid() if inside_launch() else _dvc_process()
    started = _start_time(watched)
    if started is None:   # it ended before we looked
        os.kill(os.getpid(), signal.SIGTERM)
        return
    threading.Thread(target=_signal_when_ended, args=(watched, started), name="stop-with-dvc",
                     daemon=True).start()


def _dvc_process() -> int:
    """The nearest ancestor that did not inherit this stage's DVC_STAGE: DVC itself. DVC runs the
    command as `$SHELL -c CMD` (`/bin/sh -c CMD` where SHELL is unset, as in a container): bash runs
    a single command in place, but dash, Debian's /bin/sh, runs it as its child and outlives DVC.
    PID 1 may be DVC (`docker run IMAGE dvc repro`) or, where DVC ended before we looked, the init
    that adopted us: watched either way, never taken for a DVC that ended."""
    stage = os.environ["DVC_STAGE"]
    pid = os.getppid()
    while pid > 1 and _environment(pid).get("DVC_STAGE") == stage:
        pid = _parent(pid)
    return pid


def _signal_when_ended(pid: int, started: str) -> None:
    # the start time tells the process from a later one given the same PID
    while _start_time(pid) == started:
        time.sleep(WATCH_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)


def _environment(pid: int) -> dict[str, str]:
    """The environment `pid` was started with; empty where it cannot be read (another user's)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (entry.decode(errors="replace").partition("=") for entry in raw.split(b"\0") if entry)
    return {name: value for name, _, value in pairs}


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces): state, ppid, ... (proc(5))."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def _parent(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else 1


def _start_time(pid: int) -> str | None:
    """When `pid` started (field 22 of proc(5)'s stat); None once it has ended, zombie included."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return fields[19]
