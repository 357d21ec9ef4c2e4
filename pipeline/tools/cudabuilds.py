"""Which NVIDIA driver the torch build this repository installs needs, and which torch builds exist
where: checked on the machine before anything is installed or paid for.

    python3 -m pipeline.tools.cudabuilds          # exit 2 with one line when this host's driver is too old
    python3 -m pipeline.tools.cudabuilds --lock   # ... for the build about to be installed

It reads the driver from `nvidia-smi` (no NVIDIA host, no check) and compares it with what the torch
build needs: the installed one; with --lock (or where none is installed) the one the setup is about
to install, requirements.lock's version from the index TORCH_INDEX_URL names, else PyPI's (what
`pip install -r requirements.lock -r docker/requirements-cuda.lock` installs on Linux). The SkyPilot tasks run it
first in their setup, cloud/run.sh and the CUDA image's entrypoint before any stage, doctor with the
rest of its checks. Standard library only, Python 3.8 or newer: a VM runs it with its own python3,
before the locked environment exists.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK_FILE = ROOT / "requirements.lock"
INDEX = "https://download.pytorch.org/whl/"

# The oldest driver each CUDA major version runs on (minor version compatibility: a build for any
# 12.x runs on a 12.0-era driver, with PTX JIT the only exception, which torch's wheels do not need
# for the GPUs they carry code for). The driver's major number is compared: Linux drivers are
# 525.60.13 and 580.65.06 at these lines, and under WSL2 nvidia-smi reports the Windows driver,
# whose branch number (528.x, 58x.x) lines up the same way.
# Source: NVIDIA, "CUDA Compatibility", Minor Version Compatibility, Table 1 "CUDA Toolkit 11.x,
# 12.x, and 13.x Driver Version Ranges" (docs.nvidia.com/deploy/cuda-compatibility/
# minor-version-compatibility.html): CUDA 13.x >= 580, CUDA 12.x >= 525, CUDA 11.x >= 450; the
# CUDA Toolkit Release Notes, "CUDA Driver" (docs.nvidia.com/cuda/cuda-toolkit-release-notes/).
DRIVER_MINIMUM = {11: 450, 12: 525, 13: 580}

# torch version -> build -> the CUDA version it is built for (None: CPU only). "pypi" is what
# `pip install torch==VERSION` gets on Linux x86_64; the others are download.pytorch.org/whl/BUILD,
# the indexes that hold that version. Only builds checked against a public source are listed:
# tests/test_cudabuilds.py refuses any torch index URL in the repository that is not here.
# Sources for 2.13.0: pytorch/pytorch issue #178665 (the CUDA matrix from 2.12 on: 12.8 removed,
# 12.6 kept as legacy, 13.0 stable and published to PyPI); pytorch/FBGEMM PR #5976 (counted on
# download.pytorch.org: 2.13 has cu126 and cu130 wheels, no cu128; cu128's last torch is 2.11);
# docker/requirements-cuda.lock (PyPI's 2.13.0 pulls nvidia-cuda-runtime 13.0); docker/README.md
# (the CPU image installs 2.13.0+cpu from the cpu index).
TORCH_BUILDS = {
    "2.13.0": {"pypi": "13.0", "cu130": "13.0", "cu126": "12.6", "cpu": None},
}
FALLBACK = "cu126"   # the build for drivers older than PyPI's needs (12.6 is PyTorch's legacy line)


def pinned_torch() -> str:
    """The torch version requirements.lock pins."""
    found = re.search(r"^torch==([^\s;#]+)", LOCK_FILE.read_text(encoding="utf-8"), re.MULTILINE)
    if not found:
        raise SystemExit(f"{LOCK_FILE}: no torch== pin")
    return found.group(1)


def installed_torch() -> str | None:
    """The installed torch's version with its local label ("2.13.0", "2.13.0+cu126"), or None."""
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover (Python < 3.8)
        return None
    try:
        return version("torch")
    except PackageNotFoundError:
        return None


def build_of(torch_version: str, index_url: str = "") -> tuple[str, str]:
    """(version, build) of a torch version string ("2.13.0+cu126": the cu126 build), or of the build
    an index URL gives; a version without a label is PyPI's."""
    version, _, label = torch_version.partition("+")
    if label:
        return version, label
    if index_url:
        return version, index_url.rstrip("/").rsplit("/", 1)[-1]
    return version, "pypi"


def cuda_of(version: str, build: str) -> str | None:
    """The CUDA version a build is for: the table's, else read from a cuXYZ label; None: CPU."""
    known = TORCH_BUILDS.get(version, {})
    if build in known:
        return known[build]
    digits = re.fullmatch(r"cu(\d+)(\d)", build)
    return f"{digits.group(1)}.{digits.group(2)}" if digits else None


def fallback_command(version: str) -> str:
    return f"pip install torch=={version}+{FALLBACK} --index-url {INDEX}{FALLBACK}"


def nvidia_smi() -> list[tuple[str, str]] | None:
    """(GPU name, driver version) per GPU as nvidia-smi reports them; None where there is no
    nvidia-smi or it cannot talk to a driver."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [line.rsplit(",", 1) for line in done.stdout.splitlines() if "," in line]
    found = [(name.strip(), driver.strip()) for name, driver in rows]
    return found if done.returncode == 0 and found else None


def driver_problem(gpu: str, driver: str, version: str, cuda: str | None) -> str | None:
    """One line when `driver` is too old for a torch `version` built for `cuda`, else None."""
    if cuda is None:
        return None
    major = int(cuda.split(".")[0])
    needed = DRIVER_MINIMUM.get(major)
    found = re.match(r"\d+", driver)
    if needed is None or not found or int(found.group()) >= needed:
        return None
    fallback = cuda_of(version, FALLBACK)
    old_enough = DRIVER_MINIMUM[int(fallback.split(".")[0])] if fallback else None
    if old_enough is None or int(found.group()) < old_enough:
        other = "no torch build on PyTorch's indexes runs on it"
    else:
        other = (f"or install torch's CUDA {fallback} build (driver >= {old_enough}): {fallback_command(version)} "
                 f"(SkyPilot task and CUDA image: TORCH_INDEX_URL={INDEX}{FALLBACK})")
    return (f"NVIDIA driver {driver} ({gpu}) is older than {needed}, the minimum for torch {version}'s "
            f"CUDA {cuda} build: install driver >= {needed} or pick a VM image that has it; {other}")


def host_and_build(*, lock: bool = False, environ: dict | None = None) -> tuple[str, str, str, str | None] | None:
    """(GPU, driver, torch version, CUDA version) of this host's first GPU and the torch build it has
    (lock: is about to install; a VM image's own torch is not the one the setup installs); None
    without nvidia-smi."""
    environ = os.environ if environ is None else environ
    gpus = nvidia_smi()
    if not gpus:
        return None
    installed = None if lock else installed_torch()
    version, build = build_of(installed or pinned_torch(), "" if installed else environ.get("TORCH_INDEX_URL", ""))
    gpu, driver = gpus[0]
    return gpu, driver, version, cuda_of(version, build)


def preflight(*, lock: bool = False, environ: dict | None = None) -> str | None:
    """The problem with this host's driver for the torch build it has or is about to install."""
    found = host_and_build(lock=lock, environ=environ)
    return driver_problem(*found) if found else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["--lock"]):
        print("usage: python3 -m pipeline.tools.cudabuilds [--lock]", file=sys.stderr)
        return 2
    found = host_and_build(lock=argv == ["--lock"])
    if not found:
        return 0
    problem = driver_problem(*found)
    if problem:
        print(f"driver check: {problem}", file=sys.stderr)
        return 2
    gpu, driver, version, cuda = found
    print(f"driver check: NVIDIA driver {driver} ({gpu}) runs torch {version}'s "
          + (f"CUDA {cuda} build" if cuda else "CPU build (no GPU use)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
