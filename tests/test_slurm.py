"""`snakemake --profile profiles/slurm` on a real SLURM: munged, slurmctld and slurmd from Debian's
packages on localhost (tests/slurmkit.py), each stage a batch job through the executor plugin in
the lock, the outputs the same as the local driver's. `.ci/run` installs the packages; without them
this module skips.

The user's profile is used as it is; a second `--profile`, derived from it, replaces only what a
CPU-only cluster cannot give (its partition, GPUs, CPU and memory sizes, the CUDA device) and
makes the executor poll `squeue` (no accounting database here) from the first second.
"""
from __future__ import annotations

import filecmp
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from checkout import ROOT, TINY, copy_checkout
from pipeline.core import params as params_module
from slurmkit import ConfigTaken, LocalSlurm, missing_commands

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
STAGES = ["tokenize", "estimate", "train", "evaluate"]
PARTITION = "ci"


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    missing = missing_commands()
    if missing:
        pytest.skip(f"no SLURM here ({', '.join(missing)} missing): `.ci/run` installs slurm-wlm and munge as root")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"), nodes=("n1",), partition=PARTITION)
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


def ci_profile(dest: Path) -> Path:
    """profiles/slurm with what a CPU-only one-node cluster needs instead: a second profile, whose
    top-level keys replace the user's (Snakemake: later `--profile`s override earlier ones)."""
    user = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    cpus = os.cpu_count() or 1
    defaults = {**user["default-resources"], "slurm_partition": PARTITION, "cpus_per_task": cpus, "mem_mb": 2000}
    per_rule = {rule: {key: value for key, value in resources.items() if not key.startswith("gpu")} | {"gpu": 0}
                for rule, resources in user["set-resources"].items()}
    config = yaml.safe_load((ROOT / "profiles" / "cpu" / "config.yaml").read_text())["config"]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump({
        "default-resources": defaults, "set-resources": per_rule, "config": config,
        "slurm-status-command": "squeue", "slurm-init-seconds-before-status-checks": 1,
        "slurm-keep-successful-logs": True, "slurm-no-account": True}))
    return dest


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A throwaway clone whose params.yaml is the demo overlay plus tiny sizes."""
    work = tmp_path_factory.mktemp("slurm-e2e") / "repo"
    merged = params_module.merge_files([ROOT / "params.yaml", ROOT / "params" / "demo.yaml", TINY])
    copy_checkout(work)
    (work / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False, allow_unicode=True))
    subprocess.run([sys.executable, "-m", "pipeline", "demo-corpus", "--size-mb", "0.4"], cwd=work, check=True,
                   capture_output=True)
    return work


def _snakemake(work: Path, slurm: LocalSlurm, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    args = tuple(map(str, args))
    result = subprocess.run([BIN / "snakemake", *args], cwd=work, env=_env(slurm), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}\n{slurm.controller_log()[-3000:]}")
    return result


def _slurm_jobs(output: str) -> dict[str, str]:
    """rule -> SLURM job id, from the executor's 'Job N has been submitted with SLURM jobid M'."""
    rules = dict(re.findall(r"^\[.*?\]\n?(?:local)?(?:rule|checkpoint) (\w+):\n(?:.*\n)*?\s+jobid: (\d+)", output, re.M))
    submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", output))
    return {rule: submitted[job] for rule, job in rules.items() if job in submitted}


def _states(slurm: LocalSlurm) -> dict[str, str]:
    out = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%T"], env=slurm.env,
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("|") for line in out.split())


def test_every_stage_is_a_batch_job_with_the_local_outputs(slurm, project, tmp_path):
    local = tmp_path / "local"
    on_slurm = tmp_path / "slurm"
    for dest in (local, on_slurm):
        subprocess.run(["cp", "-a", project, dest], check=True)
    profile = ci_profile(tmp_path / "ci-profile")

    _snakemake(local, slurm, "--profile", "profiles/cpu", "--cores", "2")
    result = _snakemake(on_slurm, slurm, "--profile", "profiles/slurm", "--profile", profile)
    output = result.stdout + result.stderr
    jobs = _slurm_jobs(output)
    assert sorted(jobs) == sorted(STAGES), output
    states = _states(slurm)
    assert all(states.get(job) == "COMPLETED" for job in jobs.values()), (jobs, states)
    # the controller ran them as batch jobs, each to exit 0
    log = slurm.controller_log()
    for job in jobs.values():
        assert re.search(rf"_job_complete: JobId={job} done", log), log[-3000:]

    for path in ("data/tokens/train.bin", "data/tokens/val.bin", "data/tokenizer/tokenizer.json",
                 "models/final/model.safetensors"):
        assert filecmp.cmp(local / path, on_slurm / path, shallow=False), path
    curve = lambda work: json.loads((work / "reports/train.json").read_text())["loss"]
    assert curve(on_slurm) == curve(local)
