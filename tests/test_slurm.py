"""`snakemake --profile profiles/slurm` on a real SLURM: munged, slurmctld and two slurmd "nodes" on
localhost from Debian's packages (tests/slurmkit.py), each stage a batch job through the executor
plugin in the lock. `.ci/run` installs the packages; without them this module skips.

The user's profile is used as it is; a second `--profile`, derived from it, replaces only what a
CPU-only cluster cannot give (its partition, GPUs, CPU and memory sizes, the CUDA device) and
makes the executor poll `squeue` (no accounting database here) from the first second. The project
trains as 2 processes (cost.num_devices: 2, gloo): on one node, then over both nodes.
"""
from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from checkout import ROOT, TINY, copy_checkout
from pipeline import registry
from pipeline.core import params as params_module
from slurmkit import ConfigTaken, LocalSlurm, missing_commands

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
STAGES = [stage.name for stage in registry.STAGES]
PARTITION = "ci"
NODES = ("n1", "n2")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    missing = missing_commands()
    if missing:
        pytest.skip(f"no SLURM here ({', '.join(missing)} missing): `.ci/run` installs slurm-wlm and munge as root")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"), nodes=NODES, partition=PARTITION)
    try:
        cluster.start()
    except ConfigTaken as exc:
        cluster.stop()
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


def _env(slurm: LocalSlurm) -> dict[str, str]:
    env = dict(slurm.env, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    env.pop("PYTHONPATH", None)
    return env


def ci_profile(dest: Path, **train: object) -> Path:
    """profiles/slurm with what a CPU-only cluster needs instead (and `train` resources on top): a
    second profile, whose top-level keys replace the user's (later `--profile`s override earlier)."""
    user = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    defaults = {**user["default-resources"], "slurm_partition": PARTITION, "cpus_per_task": os.cpu_count() or 1,
                "mem_mb": 2000}
    per_rule = {rule: {key: value for key, value in resources.items() if not key.startswith("gpu")}
                for rule, resources in user.get("set-resources", {}).items()}
    for rule in ("train", "evaluate"):   # the Snakefile asks for GPUs; this cluster has none
        per_rule.setdefault(rule, {}).update(gpu=0)
    per_rule["train"].update(train)
    config = yaml.safe_load((ROOT / "profiles" / "cpu" / "config.yaml").read_text())["config"]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump({
        "default-resources": defaults, "set-resources": per_rule, "config": config,
        "slurm-status-command": "squeue", "slurm-init-seconds-before-status-checks": 1,
        "slurm-keep-successful-logs": True, "slurm-no-account": True}))
    return dest


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A throwaway clone whose params.yaml is the demo overlay plus tiny sizes, on 2 devices."""
    work = tmp_path_factory.mktemp("slurm-e2e") / "repo"
    merged = params_module.merge_files([ROOT / "params.yaml", ROOT / "params" / "demo.yaml", TINY])
    merged["cost"]["num_devices"] = 2
    copy_checkout(work)
    (work / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False, allow_unicode=True))
    subprocess.run([sys.executable, "-m", "pipeline", "demo-corpus", "--size-mb", "0.4"], cwd=work, check=True,
                   capture_output=True)
    return work


def snakemake(work: Path, slurm: LocalSlurm, *args: object, check: bool = True) -> str:
    args = tuple(map(str, args))
    result = subprocess.run([BIN / "snakemake", *args], cwd=work, env=_env(slurm), capture_output=True, text=True)
    output = result.stdout + result.stderr
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n{output}\n"
                             f"{slurm.controller_log()[-3000:]}")
    return output


def submitted(output: str) -> dict[str, str]:
    """rule -> SLURM job id, from the executor's 'Job N has been submitted with SLURM jobid M'."""
    rules = dict((job, rule) for rule, job in re.findall(r"^(?:rule|checkpoint) (\w+):\n(?:    .*\n)*?    jobid: (\d+)",
                                                          output, re.M))
    return {rules[job]: slurm_job for job, slurm_job in
            re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", output)}


def job_states(slurm: LocalSlurm) -> dict[str, str]:
    out = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%T"], env=slurm.env,
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("|") for line in out.split())


# States a job passes through on its way to a final one (squeue(1), JOB STATE CODES): a cancelled
# job is COMPLETING while its processes end.
PASSING = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED"}


def final_state(slurm: LocalSlurm, job: str, seconds: float = 60) -> str | None:
    """The job's state once it is final (or whatever it is after `seconds`)."""
    deadline = time.monotonic() + seconds
    while (state := job_states(slurm).get(job)) in PASSING and time.monotonic() < deadline:
        time.sleep(0.5)
    return state


def same_training(one: Path, other: Path) -> None:
    """The same weights and the same loss curve, byte for byte."""
    assert filecmp.cmp(one / "models/final/model.safetensors", other / "models/final/model.safetensors", shallow=False)
    report = lambda work: json.loads((work / "reports/train.json").read_text())
    assert report(one)["loss"] == report(other)["loss"]
    assert report(one)["world"] == report(other)["world"] == 2


@pytest.fixture(scope="module")
def runs(slurm, project, tmp_path_factory):
    """The pipeline under the local driver and on SLURM, from the same clone."""
    base = tmp_path_factory.mktemp("slurm-runs")
    local, on_slurm = base / "local", base / "slurm"
    for dest in (local, on_slurm):
        shutil.copytree(project, dest, symlinks=True)
    snakemake(local, slurm, "--profile", "profiles/cpu", "--cores", "2")
    started = time.monotonic()
    output = snakemake(on_slurm, slurm, "--profile", "profiles/slurm", "--profile", ci_profile(base / "ci"))
    print(f"snakemake --profile profiles/slurm: {time.monotonic() - started:.0f} s")
    return local, on_slurm, output


def test_every_stage_is_a_batch_job_with_the_local_outputs(slurm, runs):
    local, on_slurm, output = runs
    jobs = submitted(output)
    assert sorted(jobs) == sorted(STAGES), output
    states = job_states(slurm)
    assert all(states.get(job) == "COMPLETED" for job in jobs.values()), (jobs, states)
    log = slurm.controller_log()   # each one a batch job that ran to exit 0
    for job in jobs.values():
        assert re.search(rf"_job_complete: JobId={job} WEXITSTATUS 0", log), log[-3000:]
    for path in ("data/tokens/train.bin", "data/tokens/val.bin", "data/tokenizer/tokenizer.json"):
        assert filecmp.cmp(local / path, on_slurm / path, shallow=False), path
    same_training(local, on_slurm)
    assert "2 process(es)" in (on_slurm / "logs/train.log").read_text()


def test_train_over_two_nodes_meets_at_a_rendezvous_on_the_first(slurm, runs, tmp_path):
    """`nodes: 2` for train: one torchrun per node, c10d rendezvous, the same run as on one node."""
    _, on_slurm, _ = runs
    work = tmp_path / "two-nodes"
    shutil.copytree(on_slurm, work, symlinks=True)
    profile = ci_profile(tmp_path / "ci", nodes=2, tasks=2)
    output = snakemake(work, slurm, "--profile", "profiles/slurm", "--profile", profile,
                       "--forcerun", "train", "--until", "train")
    job = submitted(output)["train"]
    launched = {node: re.findall(rf"launch task StepId={job}\.(\d+)", (slurm.root / f"slurmd-{node}.log").read_text())
                for node in NODES}
    # step 0: the job-step plugin's one task; step 1: one torchrun on each node
    assert launched == {"n1": ["0", "1"], "n2": ["1"]}, launched
    log = (work / "logs/train.log").read_text()
    assert re.search(r"train on 2 nodes: srun --overlap --nodes=2 .* -m pipeline\.core\.multinode 2 1 \S+:\d+ "
                     rf"{job} train ", log), log
    same_training(on_slurm, work)


def _steps_done(work: Path) -> int:
    """The last step train logged in this run (DVCLive writes each one as it goes; the progress
    bar in logs/train.log is redrawn every 30 s only, off a terminal)."""
    speeds = work / "reports/train_live/plots/metrics/train/tokens_per_second.tsv"
    lines = speeds.read_text().split("\n")[1:] if speeds.exists() else []
    return max((int(line.split("\t")[0]) for line in lines if line.strip()), default=0)


def _interrupted(work: Path, slurm: LocalSlurm, args: list, after: int, interrupt) -> tuple[int, str]:
    """Run snakemake until train has done `after` steps, `interrupt(driver, job)`, and return the
    step train stopped after and the checkpoint it saved, once the job was cancelled."""
    shutil.rmtree(work / "reports/train_live", ignore_errors=True)   # a previous run's steps
    driver = subprocess.Popen([BIN / "snakemake", *map(str, args)], cwd=work, env=_env(slurm), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                              # a Ctrl-C must not find SIGINT ignored, as a background job inherits it
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while _steps_done(work) < after and time.monotonic() < deadline:
            assert driver.poll() is None, driver.stdout.read()
            time.sleep(0.5)
        assert _steps_done(work) >= after, "train did not get going"
        running = [job for job, state in job_states(slurm).items() if state == "RUNNING"]
        assert len(running) == 1, job_states(slurm)
        interrupt(driver, running[0])
        output, _ = driver.communicate(timeout=150)
    finally:
        driver.kill()
    assert driver.returncode != 0 and final_state(slurm, running[0]) == "CANCELLED", output
    # Snakemake may be gone before the job's processes are (a Ctrl-C cancels and exits)
    slurm_log = work / ".snakemake/slurm_logs/rule_train" / f"{running[0]}.log"
    exited = lambda: slurm_log.exists() and "returned non-zero exit status 143" in slurm_log.read_text()
    deadline = time.monotonic() + 60
    while not exited() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert exited(), slurm_log.read_text()[-3000:]   # the stage's own exit code
    log = (work / "logs/train.log").read_text()
    stopped = re.search(r"SIGTERM: stopped after step (\d+) and saved (\S+);", log)
    assert stopped and (work / stopped.group(2)).is_dir(), log[-3000:]
    return int(stopped.group(1)), stopped.group(2)


def test_scancel_or_ctrl_c_checkpoint_train_and_the_next_run_resumes(slurm, runs, tmp_path):
    """scancel: SIGTERM to each step of the job (the stage, its launcher and workers alike), which
    finish the step, checkpoint and exit 143 well within KillWait. Ctrl-C on the terminal: the
    plugin cancels its jobs, the same way. Each next run resumes."""
    _, on_slurm, _ = runs
    work = tmp_path / "cancelled"
    shutil.copytree(on_slurm, work, symlinks=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    # tens of seconds of steps after each signal, even at ~7 steps/s: scancel, and the plugin's
    # cancel on Ctrl-C, go through slurmctld, which a loaded machine answers late
    steps = 160
    params["train"].update(max_steps=steps, checkpoint_every=1000, eval_every=1000)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    args = ["--profile", "profiles/slurm", "--profile", ci_profile(tmp_path / "ci"), "--until", "train"]

    scancel = lambda driver, job: subprocess.run(["scancel", job], env=slurm.env, check=True)
    first, _ = _interrupted(work, slurm, args, 4, scancel)
    assert 4 <= first < steps
    ctrl_c = lambda driver, job: os.killpg(driver.pid, signal.SIGINT)
    second, checkpoint = _interrupted(work, slurm, args, first + 3, ctrl_c)
    assert first + 3 <= second < steps
    assert re.search(rf"resuming from \S+ \(step {first}\)", (work / "logs/train.log").read_text())

    snakemake(work, slurm, *args)
    report = json.loads((work / "reports/train.json").read_text())
    assert report["resumed_from"] == Path(checkpoint).name and report["steps"] == steps, report
