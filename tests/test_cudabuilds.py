"""The driver preflight and the torch build tables (pipeline/tools/cudabuilds.py), on a CPU machine:
a fake `nvidia-smi` on PATH reports a Tesla T4 with the driver a test names, as the real one does
for `--query-gpu=name,driver_version --format=csv,noheader`."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.tools import cudabuilds

ROOT = Path(__file__).resolve().parent.parent
OLD, NEW = "535.183.01", "580.95.05"
FALLBACK_PIP = "pip install torch==2.13.0+cu126 --index-url https://download.pytorch.org/whl/cu126"


def fake_host(tmp_path: Path, driver: str, *installers: str) -> dict[str, str]:
    """An environment whose PATH starts with a fake nvidia-smi and, for each name in `installers`,
    a stand-in that records its call in tmp_path/called and succeeds."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho 'Tesla T4, {driver}'\n")
    for name in installers:
        (bin_dir / name).write_text(f"#!/bin/sh\necho {name} \"$@\" >> {tmp_path / 'called'}\n")
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"}


def doctor(tmp_path: Path, driver: str) -> subprocess.CompletedProcess:
    env = {**fake_host(tmp_path, driver), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline", "doctor", "--params", "params.yaml",
                           "--set", f"paths.checkpoints={tmp_path / 'ckpt'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_doctor_names_an_old_driver_its_minimum_and_both_fixes_in_one_problem(tmp_path):
    done = doctor(tmp_path, OLD)
    assert done.returncode == 2, done.stdout + done.stderr
    problems = [line for line in done.stdout.splitlines() if line.startswith("problem:")]
    # the only problem: the driver is why torch would see no GPU, not the device settings
    assert len(problems) == 1, problems
    [problem] = problems
    assert OLD in problem and "older than 580" in problem and "CUDA 13.0" in problem
    assert "install driver >= 580" in problem and FALLBACK_PIP in problem


def test_doctor_raises_no_driver_problem_at_580(tmp_path):
    done = doctor(tmp_path, NEW)
    assert f"NVIDIA driver {NEW} (Tesla T4)" in done.stdout
    assert not [line for line in done.stdout.splitlines() if line.startswith("problem:") and "driver" in line]


def test_the_skypilot_setup_stops_at_an_old_driver_before_it_installs_anything(tmp_path):
    setup = yaml.safe_load((ROOT / "cloud" / "t4-spot.yaml").read_text())["setup"]
    installers = ("python3.11", "sudo", "apt-get", "make")

    def run(driver: str, index: str = "") -> subprocess.CompletedProcess:
        (tmp_path / "called").unlink(missing_ok=True)
        env = {**fake_host(tmp_path, driver, *installers), "TORCH_INDEX_URL": index}
        return subprocess.run(["bash", "-c", setup], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    stopped = run(OLD)
    assert stopped.returncode == 2 and OLD in stopped.stderr and FALLBACK_PIP in stopped.stderr
    assert not (tmp_path / "called").exists()          # nothing installed, no venv made
    # the same driver with the CUDA 12.6 build asked for, and a new driver: setup goes on to install
    for driver, index, build in ((OLD, cudabuilds.INDEX + "cu126", "12.6"), (NEW, "", "13.0")):
        done = run(driver, index)
        assert f"NVIDIA driver {driver} (Tesla T4) runs torch 2.13.0's CUDA {build} build" in done.stdout
        assert (tmp_path / "called").read_text().startswith("python3.11 -m venv .venv")


@pytest.mark.parametrize("label,driver,too_old", [
    ("2.13.0", OLD, True), ("2.13.0", NEW, False), ("2.13.0+cu126", OLD, False),
    ("2.13.0+cu126", "470.256.02", True), ("2.13.0+cpu", OLD, False)])
def test_each_build_needs_its_own_driver(label, driver, too_old):
    version, build = cudabuilds.build_of(label)
    assert (cudabuilds.driver_problem("Tesla T4", driver, version, cudabuilds.cuda_of(version, build))
            is not None) == too_old


def test_a_driver_too_old_for_every_build_gets_no_pip_command():
    problem = cudabuilds.driver_problem("Tesla T4", "470.256.02", "2.13.0", "13.0")
    assert "no torch build on PyTorch's indexes runs on it" in problem and "pip install" not in problem


def test_the_lock_pin_is_in_the_table_and_pypis_build_is_the_cuda_image_s():
    pinned = cudabuilds.pinned_torch()
    assert pinned in cudabuilds.TORCH_BUILDS, f"add torch {pinned}'s builds to pipeline/tools/cudabuilds.py"
    runtime = re.search(r"^nvidia-cuda-runtime==(\d+\.\d+)", (ROOT / "docker" / "requirements-cuda.lock").read_text(),
                        re.MULTILINE).group(1)
    assert cudabuilds.TORCH_BUILDS[pinned]["pypi"] == runtime
    assert cudabuilds.FALLBACK in cudabuilds.TORCH_BUILDS[pinned]


INDEX_URL = re.compile(r"https?://download\.pytorch\.org/whl/[A-Za-z0-9_./-]*")


def missing_builds(text: str, version: str) -> list[str]:
    """The torch index URLs in `text` whose index does not hold `version`."""
    held = set(cudabuilds.TORCH_BUILDS[version]) - {"pypi"}
    named = {url: url.rstrip("/.").partition("/whl")[2].strip("/") for url in INDEX_URL.findall(text)}
    return [url for url, build in named.items() if build and build not in held]  # the bare base names none


def test_every_torch_index_the_repository_names_holds_the_pinned_torch():
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    pinned = cudabuilds.pinned_torch()
    found = {}
    for name in files:
        path = ROOT / name
        if path.is_file() and path.suffix not in {".png", ".safetensors", ".bin"}:
            bad = missing_builds(path.read_text(errors="ignore"), pinned)
            if bad:
                found[name] = bad
    assert not found, f"torch indexes without torch {pinned}: {found}"
    dropped = cudabuilds.INDEX + "cu" + "128"  # spelled apart: this file is read by the test above
    assert missing_builds(f"{dropped} and {cudabuilds.INDEX}cu126", pinned) == [dropped]
