"""The CPU image, built with podman as docker/podman-build.sh builds it here and in CI, runs the
pipeline: the CLI and the tools at the locked versions, and the whole demo workflow under Snakemake
as the image's non-root user, offline, on a bind-mounted git checkout (as a user runs
`docker run -v "$PWD:/work" ...`). Tiny params keep the run to about a minute.

Skips where podman is missing or cannot run a container. The first build takes ~7 minutes (the
debootstrap base, then pip); podman keeps both, so a rebuild takes seconds.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from checkout import TINY, copy_checkout
from pipeline.registry import STAGES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "docker" / "podman-build.sh"
BASE = "localhost/budgetgpt-base:bookworm"
IMAGE = "localhost/budgetgpt:test-cpu"  # its own tag: the test never replaces an image a person built
def _env() -> dict[str, str]:
    return dict(os.environ, CONTAINERS_CONF=os.environ.get("CONTAINERS_CONF",
                                                             str(ROOT / "docker" / "containers.conf")))


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _lock() -> dict[str, str]:
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line)


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (CI installs it: apt-get install podman buildah debootstrap runc)")
    if os.geteuid() != 0:
        pytest.skip("the podman build here runs as root (rootful podman, debootstrap)")
    info = _run(["podman", "info"], timeout=120)
    if info.returncode != 0:
        pytest.skip(f"podman cannot run here: {info.stderr.strip()[-300:]}")
    if _run(["podman", "image", "exists", BASE], timeout=60).returncode != 0 and not shutil.which("debootstrap"):
        pytest.skip(f"no base image {BASE} and no debootstrap to make one")
    base = _run([str(BUILD), "base"], timeout=1200)
    assert base.returncode == 0, f"making the base image failed:\n{base.stderr[-3000:]}"
    probe = _run(["podman", "run", "--rm", "--network", "none", BASE, "true"], timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot start a container here: {probe.stderr.strip()[-300:]}")
    build = _run([str(BUILD), "cpu", IMAGE], timeout=3600)
    assert build.returncode == 0, f"podman build failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    return IMAGE


def podman_run(image: str, *cmd: str, work: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    # --network none: every stage must run offline, as the pipeline promises
    mount = ["--volume", f"{work}:/work"] if work else []
    result = _run(["podman", "run", "--rm", "--network", "none", *mount, image, *cmd], timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed in the container:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_image_has_the_cli_and_the_locked_tools_and_runs_as_non_root(image):
    script = ("id -u; python -m pipeline --help; snakemake --version; dvc --version; "
              "python -c 'import torch, transformers; print(torch.__version__, transformers.__version__)'")
    lines = podman_run(image, "bash", "-c", script).stdout.splitlines()
    lock = _lock()
    assert lines[0] != "0"
    assert all(stage in "\n".join(lines) for stage in (s.name for s in STAGES))
    assert lines[-3:] == [lock["snakemake"], lock["dvc"], f"{lock['torch']}+cpu {lock['transformers']}"]


def test_demo_workflow_runs_in_the_container_on_a_mounted_checkout(image, tmp_path):
    work = tmp_path / "checkout"
    revision = copy_checkout(work)
    user = _run(["podman", "image", "inspect", "--format", "{{.Config.User}}", image], timeout=60).stdout.strip()
    uid, gid = (int(part) for part in user.split(":"))
    assert uid != 0
    # the host directory belongs to the image's user, as a checkout belongs to the VM's user
    for path in [work, *work.rglob("*")]:
        os.chown(path, uid, gid, follow_symlinks=False)

    podman_run(image, "python", "-m", "pipeline", "demo-corpus", "--params", "params.yaml",
               "--params", "params/demo.yaml", "--size-mb", "0.4", work=work)
    # `--profile cpu` is a bare name: found only because the image installs profiles in /etc/xdg
    podman_run(image, "snakemake", "--profile", "cpu", "--configfile", "params/demo.yaml", "tests/tiny.yaml",
               work=work, timeout=1200)

    outputs = ["data/tokens/train.bin", "data/tokens/manifest.json", "reports/plan.json",
               "reports/cost.json", "checkpoints/manifest.json", "models/final/config.json",
               "models/final/model.safetensors", "reports/train.json", "reports/eval.json",
               "reports/summary.md"]
    for out in outputs:
        assert (work / out).is_file(), f"{out} missing after the containerized run"
        assert (work / out).stat().st_uid == uid, f"{out} not written by the image's user"
    manifest = json.loads((work / "checkpoints/manifest.json").read_text())
    assert manifest["latest"] == "step-000006"
    steps = yaml.safe_load(TINY.read_text())["train"]["max_steps"]
    assert json.loads((work / "reports/train.json").read_text())["steps"] == steps
    # the image's git read the mounted checkout: outputs record which code made them
    assert revision in (work / "reports/eval.json").read_text()
