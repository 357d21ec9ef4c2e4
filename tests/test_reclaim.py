"""A spot VM reclaimed mid-training, end to end, under both drivers, with a real S3 server (moto
over HTTP) holding the DVC remote and the checkpoints.

The user tokenizes once and `dvc push`es the token files (dvc-s3 from the locked environment). A
"VM" clones the repository and runs cloud/run.sh; it is killed with SIGKILL (the whole process
group: no handler runs, as when a VM vanishes) once step K is complete in the bucket, and its
working copy is deleted. A second "VM" clones again and runs cloud/run.sh: it must resume from the
bucket, never re-tokenize, end with weights bitwise identical to an uninterrupted run of the same
driver, and count both VMs' hours in reports/train.json.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import psutil
import pytest
import yaml
from safetensors.torch import load_file

from checkout import ROOT, TINY, copy_checkout
from pipeline.core import params as params_module

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
STEPS, EVERY, K = 240, 20, 40   # kill once step K is in the bucket, long before the last step
BUCKET = "reclaim"


def _env(s3_server, **extra: str) -> dict[str, str]:
    env = {**os.environ, **s3_server.env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "PROFILE": "profiles/cpu", **extra}
    env.pop("PYTHONPATH", None)
    return env


def _run(cmd, cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


def _git(work: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def origin(tmp_path_factory, s3_server) -> Path:
    """The user's repository: tiny params with the checkpoints in the bucket (DVC's prefix; the
    Snakemake test sets its own through CHECKPOINTS_REMOTE), tokenized once and pushed to an S3
    DVC remote as the README says."""
    s3_server.bucket(BUCKET)
    work = tmp_path_factory.mktemp("reclaim") / "origin"
    merged = params_module.merge_files([ROOT / "params.yaml", ROOT / "params" / "demo.yaml", TINY])
    merged["paths"]["checkpoints_remote"] = f"s3://{BUCKET}/dvc-checkpoints"
    # the recipe whose fp32 steps cost milliseconds on every CPU (Muon's bf16 Newton-Schulz is slow
    # where bf16 is emulated)
    merged["model"]["architecture"], merged["train"]["optimizer"] = "gpt2", "adamw"
    merged["train"].update(max_steps=STEPS, checkpoint_every=EVERY, eval_every=EVERY, log_every=EVERY,
                           remote_lease_seconds=2)
    copy_checkout(work)
    (work / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False, allow_unicode=True))
    env = _env(s3_server)
    _run([sys.executable, "-m", "pipeline", "demo-corpus", "--size-mb", "0.4"], work, env)
    _run([BIN / "dvc", "remote", "add", "-d", "storage", f"s3://{BUCKET}/dvc"], work, env)
    _run([BIN / "dvc", "repro", "tokenize"], work, env)
    pushed = _run([BIN / "dvc", "push"], work, env)
    assert re.search(r"\d+ files? pushed", pushed.stdout), pushed.stdout
    _git(work, "add", "-A")
    _git(work, "commit", "-qm", "tiny params, the tokens in the DVC remote")
    return work


def _checkpoint_in_bucket(prefix: str, step: int) -> bool:
    fs, _ = fsspec.core.url_to_fs(f"s3://{BUCKET}")
    fs.invalidate_cache()
    return fs.exists(f"{BUCKET}/{prefix}/step-{step:06d}/SHA256SUMS")


def _newest_in_bucket(prefix: str) -> dict:
    """meta.json of the newest complete checkpoint under the prefix."""
    fs, _ = fsspec.core.url_to_fs(f"s3://{BUCKET}")
    fs.invalidate_cache()
    complete = sorted(p.split("/")[-2] for p in fs.glob(f"{BUCKET}/{prefix}/step-*/SHA256SUMS"))
    return json.loads(fs.cat_file(f"{BUCKET}/{prefix}/{complete[-1]}/meta.json"))


def _kill_the_vm(proc: subprocess.Popen) -> None:
    """SIGKILL run.sh and every process under it at once, as a reclaim does: Snakemake starts each
    job in a session of its own, so the job is not in run.sh's process group."""
    everything = [proc.pid, *(child.pid for child in psutil.Process(proc.pid).children(recursive=True))]
    for pid in everything:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    for pid in everything[1:]:  # wait until each is dead (gone, or a zombie not yet reaped)
        while _running(pid):
            time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _reclaimed_vm(origin: Path, env: dict, prefix: str) -> float:
    """Clone, run cloud/run.sh, SIGKILL everything once step K is in the bucket, delete the disk.
    Returns the seconds it ran."""
    vm = origin.parent / f"{prefix}-vm-1"
    _run(["git", "clone", "-q", origin, vm], origin.parent, env)
    log = origin.parent / f"{prefix}-vm-1.log"
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", "cloud/run.sh"], cwd=vm, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        while not _checkpoint_in_bucket(prefix, K):
            assert proc.poll() is None, f"run.sh ended before step {K} was uploaded:\n{log.read_text()[-3000:]}"
            assert time.monotonic() - started < 300, "no checkpoint reached the bucket in 300 s"
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed: raise STEPS"
        _kill_the_vm(proc)
    seconds = time.monotonic() - started
    shutil.rmtree(vm)   # the VM's disk goes with it
    return seconds


def _baseline(origin: Path, env: dict, driver: str, prefix: str) -> dict:
    """The same run, never interrupted, under the same driver (the same threads, the same code)."""
    work = origin.parent / f"baseline-{driver}"
    shutil.copytree(origin, work)
    if driver == "dvc":
        text = (work / "params.yaml").read_text().replace("dvc-checkpoints", prefix)
        (work / "params.yaml").write_text(text)
        _run([BIN / "dvc", "repro", "train"], work, env)
    else:
        (work / "base.yaml").write_text(f"paths:\n  checkpoints_remote: s3://{BUCKET}/{prefix}\n")
        _run([BIN / "snakemake", "models/final/model.safetensors", "--profile", "profiles/cpu",
              "--configfile", "base.yaml"], work, env)   # the target first: --configfile takes several
    return load_file(work / "models/final/model.safetensors")


@pytest.mark.parametrize("driver", ["snakemake", "dvc"])
def test_a_reclaimed_vm_resumes_from_the_bucket_on_a_fresh_clone(origin, s3_server, driver):
    prefix = f"{driver}-checkpoints"
    extra = {"DRIVER": driver} | ({"CHECKPOINTS_REMOTE": f"s3://{BUCKET}/{prefix}"} if driver == "snakemake" else {})
    env = _env(s3_server, **extra)
    first_vm_seconds = _reclaimed_vm(origin, env, prefix)
    left = _newest_in_bucket(prefix)   # what the first VM left: the second must resume from it

    vm = origin.parent / f"{prefix}-vm-2"
    _run(["git", "clone", "-q", origin, vm], origin.parent, env)
    started = time.monotonic()
    result = _run(["bash", "cloud/run.sh"], vm, env)
    second_vm_seconds = time.monotonic() - started
    out = result.stdout + result.stderr

    report = json.loads((vm / "reports/train.json").read_text())
    resumed = int(report["resumed_from"].removeprefix("step-"))
    assert resumed == left["step"] >= K and report["stop_reason"] == "max_steps", report["resumed_from"]
    assert f"fetched step-{resumed:06d} from s3://{BUCKET}/{prefix}" in out
    # the workflow's own run (Snakemake's --touch before it lists tokenize as a job it only touches)
    workflow = (vm / "logs/cloud-run.log").read_text() if driver == "snakemake" else out
    assert not re.search(r"^(local)?rule (clean|tokenize):|Running stage '(clean|tokenize)'", workflow, re.M), \
        "clean or tokenize ran on the VM"
    # both VMs' hours: the first VM's are in the checkpoint it left
    meta = left
    assert meta["train_hours"] > 0
    # wall_hours is read a moment after this_run_hours (the report's meter summary): 0.1 s apart at most
    assert report["wall_hours"] - report["this_run_hours"] == pytest.approx(meta["train_hours"], abs=0.1 / 3600)

    final = load_file(vm / "models/final/model.safetensors")
    expected = _baseline(origin, env, driver, f"{driver}-baseline")
    assert final.keys() == expected.keys()
    assert all(final[k].equal(expected[k]) for k in final), "not bitwise identical to the uninterrupted run"
    fs, _ = fsspec.core.url_to_fs(f"s3://{BUCKET}")
    fs.invalidate_cache()
    assert fs.exists(f"{BUCKET}/{prefix}/results/train.json") or fs.exists(f"{BUCKET}/{prefix}/results/reports/train.json")
    print(f"\n{driver}: resumed from step {resumed} (killed after step {K} was uploaded); first VM {first_vm_seconds:.1f} s, "
          f"second VM {second_vm_seconds:.1f} s; hours {meta['train_hours']:.5f} + {report['this_run_hours']:.5f}")


def test_run_sh_passes_the_stages_exit_status_through(origin, s3_server):
    """A scheduler must tell a mistake (2) and the budget (3) from a reclaim: Snakemake itself exits 1."""
    vm = origin.parent / "vm-exit"
    _run(["git", "clone", "-q", origin, vm], origin.parent, _env(s3_server))
    bad = _run(["bash", "cloud/run.sh"], vm, _env(s3_server, CHECKPOINTS_REMOTE="my-bucket/no-scheme"), check=False)
    assert bad.returncode == 2 and "paths.checkpoints_remote" in bad.stderr and "s3://BUCKET/PREFIX" in bad.stderr
    assert not (vm / "data/tokens").exists(), "bad input must stop it before anything is pulled"

    text = (vm / "params.yaml").read_text()
    (vm / "params.yaml").write_text(re.sub(r"budget_hours: .*", "budget_hours: 1.0e-09", text))
    over = _run(["bash", "cloud/run.sh"], vm, _env(s3_server, CHECKPOINTS_REMOTE=f"s3://{BUCKET}/exit-codes"),
                check=False)
    assert over.returncode == 3, over.stdout[-2000:] + over.stderr[-2000:]
    assert "over budget" in over.stdout + over.stderr
