"""A stage under `dvc repro` stops when DVC ends (pipeline/core/driver.py), whichever shell DVC ran
it with: bash runs a single command in place, dash (/bin/sh on Debian, and DVC's shell wherever
SHELL is unset, as in a container) keeps itself between DVC and the stage. A real process tree
stands in for DVC here: a Python process without DVC_STAGE that runs the stage as `SHELL -c CMD`
with DVC_STAGE set, as dvc/stage/run.py does; tests/test_interrupts.py does it with DVC itself."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The stage: watch the driver, say so, then wait for a SIGTERM and record it.
STAGE = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    from pipeline.core.driver import stop_with_driver
    signal.signal(signal.SIGTERM, lambda *_: (Path(sys.argv[1]).write_text("SIGTERM"), sys.exit(143)))
    stop_with_driver()
    Path(sys.argv[2]).write_text("watching")
    time.sleep(60)
""")

# The stand-in for DVC: run the stage through the shell, report the stage's PID, wait.
DRIVER = textwrap.dedent("""
    import os, subprocess, sys
    shell, stage, caught, ready = sys.argv[1:]
    env = dict(os.environ, DVC_STAGE="train")
    cmd = f"{sys.executable} -c '{stage}' {caught} {ready}"
    child = subprocess.Popen([shell, "-c", cmd], env=env)
    child.wait()
""")


def _shells() -> list[str]:
    found = [shutil.which(name) for name in ("sh", "bash")]
    return sorted({os.path.realpath(path) for path in found if path})


def _wait_for(path: Path, seconds: float) -> str | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    return None


def _start(tmp_path: Path, shell: str, env: dict[str, str]) -> tuple[subprocess.Popen, Path, Path]:
    caught, ready = tmp_path / "caught", tmp_path / "ready"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, shell, STAGE.replace("'", '"'), str(caught),
                               str(ready)], cwd=ROOT, env=env, start_new_session=True)
    assert _wait_for(ready, 60) == "watching", "the stage never started"
    return driver, caught, ready


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watch reads /proc")
@pytest.mark.parametrize("shell", _shells())
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_stage_under_dvc_gets_sigterm_when_dvc_ends(tmp_path, shell, how):
    env = {k: v for k, v in os.environ.items() if k != "DVC_STAGE"}
    driver, caught, _ = _start(tmp_path, shell, env)
    driver.send_signal(getattr(signal, how))
    driver.wait(timeout=30)
    try:
        assert _wait_for(caught, 10) == "SIGTERM", f"the stage under {shell} outlived its driver"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)


def _own_pid_namespace() -> list[str] | None:
    """A command prefix that runs its command as PID 1 of a new PID namespace, as a container's
    first process is; None where this user may not (unshare needs root or user namespaces)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    prefix = [unshare, "--pid", "--fork", "--mount-proc"]
    tried = subprocess.run([*prefix, "true"], capture_output=True)
    return prefix if tried.returncode == 0 else None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watch reads /proc")
def test_dvc_as_the_first_process_of_a_container_is_watched_not_taken_for_gone(tmp_path):
    """`docker run IMAGE dvc repro`: DVC is PID 1, as init is to a process whose driver ended."""
    prefix = _own_pid_namespace()
    if prefix is None:
        pytest.skip("unshare --pid is not permitted here (needs root or user namespaces)")
    env = {k: v for k, v in os.environ.items() if k != "DVC_STAGE"}
    caught, ready = tmp_path / "caught", tmp_path / "ready"
    driver = subprocess.Popen([*prefix, sys.executable, "-c", DRIVER, "/bin/sh", STAGE.replace("'", '"'),
                               str(caught), str(ready)], cwd=ROOT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and not caught.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)   # ten looks of the watch
        assert not caught.exists(), "the stage stopped while DVC, PID 1, still ran"
        assert ready.read_text() == "watching"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watch reads /proc")
def test_a_stage_outside_dvc_is_not_watched(tmp_path):
    """Snakemake sets no DVC_STAGE: its jobs are its own to stop, and a run started by hand and
    left behind by its shell (nohup) goes on."""
    env = {k: v for k, v in os.environ.items() if k != "DVC_STAGE"}
    stage_only = STAGE.replace("stop_with_driver()", "import os; os.environ.pop('DVC_STAGE'); stop_with_driver()")
    caught, ready = tmp_path / "caught", tmp_path / "ready"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, "/bin/sh", stage_only.replace("'", '"'), str(caught),
                               str(ready)], cwd=ROOT, env=env, start_new_session=True)
    try:
        assert _wait_for(ready, 60) == "watching"
        driver.kill()
        driver.wait(timeout=30)
        assert _wait_for(caught, 2) is None
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
