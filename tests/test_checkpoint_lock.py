"""pipeline.engine.checkpoint.RunLock: one training run per checkpoints directory."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.engine import checkpoint as ckpt
from pipeline.core.errors import PipelineError

ROOT = Path(__file__).resolve().parent.parent
HOST = socket.gethostname()

HOLD_THE_LOCK = """
import sys, time
from pipeline.engine import checkpoint as ckpt
with ckpt.RunLock(sys.argv[1], command="python -m pipeline train"):
    print("locked", flush=True)
    time.sleep(120)
"""


def python(code, *args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env, **kwargs)


def exited_pid():
    child = python("pass")
    child.wait()  # reaped: the id names no process now
    return child.pid


def write_lock(root, **holder):
    record = {"pid": 1, "host": HOST, "started": "2024-05-01T09:00:00+00:00", "command": "python -m pipeline train"}
    (root / ckpt.LOCK).write_text(json.dumps(record | holder))


def test_a_second_run_on_the_same_directory_is_refused_naming_the_holder(tmp_path):
    with ckpt.RunLock(tmp_path, command="python -m pipeline train --params params.yaml"):
        holder = json.loads((tmp_path / ".lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == HOST
        with pytest.raises(PipelineError) as err:
            with ckpt.RunLock(tmp_path):
                pass
    message = str(err.value)
    assert err.value.exit_code == 2 and "\n" not in message
    assert f"PID {os.getpid()} on host {HOST}, started {holder['started']}" in message
    assert "command: python -m pipeline train --params params.yaml" in message
    assert f"kill {os.getpid()}" in message and "paths.checkpoints" in message
    assert not (tmp_path / ".lock").exists()  # released on leaving
    with ckpt.RunLock(tmp_path):
        pass


def test_a_run_killed_with_sigkill_leaves_a_lock_the_next_run_takes_over(tmp_path, capsys):
    child = python(HOLD_THE_LOCK, tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "locked\n"
        with pytest.raises(PipelineError, match=f"PID {child.pid} on host {HOST}"):
            ckpt.RunLock(tmp_path).__enter__()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with ckpt.RunLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    [warning] = capsys.readouterr().err.splitlines()
    assert warning.startswith("WARNING:") and f"PID {child.pid} on {HOST}" in warning
    assert "no longer running: taking it over" in warning


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, capsys):
    dead = exited_pid()
    write_lock(tmp_path, pid=dead)
    with ckpt.RunLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert capsys.readouterr().err == (f"WARNING: {tmp_path / '.lock'} was left by PID {dead} on {HOST} "
                                       "(started 2024-05-01T09:00:00+00:00), which is no longer running: "
                                       "taking it over\n")


def test_a_lock_naming_a_live_process_of_this_host_is_refused(tmp_path):
    write_lock(tmp_path, pid=os.getppid())  # alive, though it holds no flock
    with pytest.raises(PipelineError) as err:
        with ckpt.RunLock(tmp_path):
            pass
    message = str(err.value)
    assert f"names PID {os.getppid()} on host {HOST}" in message and "does not hold the lock" in message
    assert f"if not (process ids get reused), delete {tmp_path / '.lock'} and rerun" in message
    assert "kill" not in message  # it may be any program now


def test_a_lock_from_another_host_is_refused_with_how_to_remove_it(tmp_path):
    write_lock(tmp_path, host="gpu-box-7", pid=4242)
    before = (tmp_path / ".lock").read_text()
    with pytest.raises(PipelineError) as err:
        with ckpt.RunLock(tmp_path):
            pass
    message = str(err.value)
    assert "host gpu-box-7" in message and "PID 4242" in message and "2024-05-01T09:00:00" in message
    assert f"cannot be checked from {HOST}" in message
    assert f"if it is gone, delete {tmp_path / '.lock'} and rerun" in message
    assert (tmp_path / ".lock").read_text() == before  # not ours to remove
