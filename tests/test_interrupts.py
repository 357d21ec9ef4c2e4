"""Interrupts that keep the step, on the real drivers: `snakemake` and `dvc repro` run train on tiny
params in a copy of the repository, are signalled once train has done a few steps, and the next
run of the same command resumes from the checkpoint the interrupted one wrote, ending with the
weights of an uninterrupted run. With `cost.num_devices: 2` the same commands train as 2 gloo
processes (pipeline/core/launch.py), signalled through torchrun, and the resumed run's loss curve
is the one-process run's, within the tolerance of tests/test_distributed.py.

Signals: a terminal's Ctrl-C (SIGINT to the driver's whole process group), and SIGTERM to the
driver's PID alone; a SIGINT to Snakemake's PID alone is the Ctrl-C case, as each of its jobs runs
in a session of its own (pipeline/tools/snakemake_support.py), so the group's SIGINT reaches
Snakemake alone too. The driver is started in a session of its own with SIGINT's default handler
restored: a background job of a non-interactive shell starts with SIGINT ignored, and the ignore
is inherited across exec, which would make a Ctrl-C test prove nothing.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from checkout import ROOT, TINY, copy_checkout
from pipeline.core import params as params_module
from trainkit import max_difference, train_losses
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
MAX_STEPS = 8
SIGNAL_AFTER_STEP = 2    # mid-train: signalled once the run has logged this step
# no checkpoint before the interrupt's own (the first validation would write one); the recipe whose
# fp32 curve is the same on every CPU (tests/trainkit.py), 2 sequences per micro-batch so that two
# processes can share a step's micro-batches. Steps of 8,192 tokens (~0.3 s each on one core) leave
# the signal seconds to land before the last step, however busy the machine.
LONGER_RUN = {"max_steps": MAX_STEPS, "tokens_per_step": 8192, "eval_every": 50, "checkpoint_every": 50,
              "log_every": 1, "optimizer": "adamw", "precision": "fp32", "micro_batch_size": 2, "lr": 0.02, "min_lr": 0.002}
LOSS_LOG = Path("reports/train_live/plots/metrics/train/loss.tsv")   # DVCLive: one row per step
DRIVERS = {"snakemake": [str(BIN / "snakemake"), "--cores", "2", "train"],
           "dvc": [str(BIN / "dvc"), "repro", "train"]}


def _env(without_shell: bool = False) -> dict[str, str]:
    """The driver's environment; `without_shell`: SHELL unset, as in a container, so DVC runs the
    stage with /bin/sh, which (dash) stays between DVC and the stage where bash would exec it."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    env.pop("PYTHONPATH", None)
    if without_shell:
        env.pop("SHELL", None)
    return env


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """Per driver, a copy of the repository where that driver has run everything before train."""
    base = tmp_path_factory.mktemp("interrupts")
    work = base / "repo"
    copy_checkout(work)
    merged = params_module.merge_files([ROOT / "params.yaml", ROOT / "params" / "demo.yaml", TINY])
    merged["train"].update(LONGER_RUN)
    merged["model"]["architecture"] = "gpt2"
    (work / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False, allow_unicode=True))
    _run([sys.executable, "-m", "pipeline", "demo-corpus", "--size-mb", "0.4"], work)
    ready = {}
    for driver, command in DRIVERS.items():
        ready[driver] = base / driver
        shutil.copytree(work, ready[driver], symlinks=True)
        before_train = [*command[:-1], "estimate"]
        _run(before_train, ready[driver])
    return ready


@pytest.fixture(scope="module")
def baseline(prepared, tmp_path_factory) -> dict:
    """The uninterrupted run's final weights: the one every resumed run must end with."""
    work = tmp_path_factory.mktemp("baseline") / "snakemake"
    shutil.copytree(prepared["snakemake"], work, symlinks=True)
    _run(DRIVERS["snakemake"], work)
    return {"weights": load_file(work / "models/final/model.safetensors"), "losses": train_losses(work)}


def _with_default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(work: Path, command: list[str], how: str) -> tuple[int, str]:
    """Start the driver, wait until train has logged SIGNAL_AFTER_STEP steps, signal it `how`. A
    SIGTERM to dvc alone kills it at once: the stage must see that itself (pipeline/core/driver.py),
    shown here in the harder case, a shell between DVC and the stage."""
    out = work / "driver.out"
    with open(out, "w") as sink:
        env = _env(without_shell=how == "SIGTERM")
        driver = subprocess.Popen(command, cwd=work, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                  start_new_session=True, preexec_fn=_with_default_sigint)
        deadline = time.monotonic() + 300
        while _steps_logged(work) < SIGNAL_AFTER_STEP:
            assert driver.poll() is None, f"the driver ended before step {SIGNAL_AFTER_STEP}:\n{out.read_text()}"
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
        if how == "ctrl-c":
            os.killpg(driver.pid, signal.SIGINT)
        else:
            driver.send_signal(getattr(signal, how))
        code = driver.wait(timeout=300)
        _wait_for_group(driver.pid)   # a stage whose driver ended first (dvc on SIGTERM) checkpoints
    return code, out.read_text()


def _wait_for_group(pgid: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"process group {pgid} still runs")


def _steps_logged(work: Path) -> int:
    try:
        return max(0, len((work / LOSS_LOG).read_text().splitlines()) - 1)   # less the header
    except FileNotFoundError:
        return 0


def _checkpoint_steps(work: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (work / "checkpoints").glob("step-*"))


@pytest.mark.parametrize("driver,how,processes", [
    ("snakemake", "ctrl-c", 1), ("snakemake", "SIGTERM", 1),
    ("dvc", "ctrl-c", 1), ("dvc", "SIGTERM", 1),
    ("snakemake", "ctrl-c", 2), ("dvc", "ctrl-c", 2)])
def test_an_interrupt_keeps_the_step_and_the_same_command_resumes(prepared, baseline, tmp_path, driver, how,
                                                                  processes):
    work = tmp_path / driver
    shutil.copytree(prepared[driver], work, symlinks=True)
    if processes > 1:  # one param; the plan changes, so estimate reruns before train
        _set_devices(work, processes)
    code, out = _interrupt(work, DRIVERS[driver], how)
    assert code != 0, out
    steps = _checkpoint_steps(work)
    assert len(steps) == 1 and SIGNAL_AFTER_STEP <= steps[0] < MAX_STEPS, (steps, out)
    said = _train_log(work) or out   # Snakemake: the stage's log; DVC: the terminal
    assert said.count(f"stopped after step {steps[0]}") == 1, said   # once, however many processes
    assert not list((work / ".snakemake" / "locks").glob("*")), "a lock left behind"

    rerun = _run(DRIVERS[driver], work)
    report = yaml.safe_load((work / "reports/train.json").read_text())
    assert report["resumed_from"] == f"step-{steps[0]:06d}", rerun.stdout + rerun.stderr
    assert report["world"] == processes
    weights = load_file(work / "models/final/model.safetensors")
    if processes == 1:
        assert max_difference(weights, baseline["weights"]) <= 1e-6
    else:
        # the curve, before and after the resume; the weights only to a looser bound: AdamW divides
        # by the root of tiny second moments, so the summation order of the all-reduce moves some
        # weights by ~1e-4 within 8 steps while every loss agrees to ~1e-6 (measured)
        assert train_losses(work) == pytest.approx(baseline["losses"], abs=1e-5)
        assert max_difference(weights, baseline["weights"]) < 1e-3
        if driver == "snakemake":   # the job asks for the GPUs it uses
            assert "gpu=2" in rerun.stdout + rerun.stderr


def _set_devices(work: Path, processes: int) -> None:
    path = work / "params.yaml"
    data = yaml.safe_load(path.read_text())
    data["cost"]["num_devices"] = processes
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def _train_log(work: Path) -> str:
    log = work / "logs" / "train.log"   # Snakemake's log:, written by the stage (DVC: the terminal)
    return log.read_text() if log.exists() else ""
