"""cloud/t4-spot.yaml and cloud/t4-spot-docker.yaml, read by SkyPilot's own parser (sky.Task.from_yaml: offline, no cloud
credentials), in the environment `make cloud-env` installs from requirements-cloud.lock (SkyPilot is
an optional extra: never in .venv)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TASK = ROOT / "cloud" / "t4-spot.yaml"
DOCKER_TASK = ROOT / "cloud" / "t4-spot-docker.yaml"
SKY_PYTHON = Path(os.environ.get("BUDGETGPT_SKY_PYTHON", ROOT / ".venv-cloud" / "bin" / "python"))

PARSE = """
import json, sys
import sky
task = sky.Task.from_yaml(sys.argv[1])
(resources,) = task.resources
print(json.dumps({"name": task.name, "accelerators": resources.accelerators, "use_spot": resources.use_spot,
                  "job_recovery": resources.job_recovery, "envs": task.envs, "workdir": task.workdir,
                  "setup": task.setup, "run": task.run, "image": resources.extract_docker_image(),
                  "config": resources.cluster_config_overrides}))
"""


def parsed(path: Path) -> subprocess.CompletedProcess:
    if not SKY_PYTHON.is_file():
        pytest.skip(f"no SkyPilot environment at {SKY_PYTHON}: `make cloud-env` installs it (make test does)")
    return subprocess.run([str(SKY_PYTHON), "-c", PARSE, str(path)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"})


@pytest.mark.parametrize("path", [TASK, DOCKER_TASK], ids=["venv", "docker"])
def test_the_spot_task_is_a_valid_skypilot_task_that_never_retries_a_user_error(path):
    done = parsed(path)
    assert done.returncode == 0, done.stderr
    task = json.loads(done.stdout.strip().splitlines()[-1])
    assert task["accelerators"] == {"T4": 1} and task["use_spot"] is True
    recovery = task["job_recovery"]
    # preemptions are recovered by SkyPilot; any non-zero exit (2 bad input, 3 budget) is final
    assert recovery["max_restarts_on_errors"] == 0 and 2 not in recovery["recover_on_exit_codes"]
    assert 3 not in recovery["recover_on_exit_codes"]
    assert task["run"].strip() == "bash cloud/run.sh"
    assert {"PROFILE", "CHECKPOINTS_REMOTE", "DVC_REMOTE"} <= set(task["envs"]) and task["workdir"] == "."
    # the driver check is the setup's first command, before anything is installed
    first = task["setup"].split("set -e\n", 1)[1].splitlines()[0]
    assert first.endswith("-m pipeline.tools.cudabuilds" + (" --lock" if path == TASK else ""))
    if path == TASK:
        assert "make setup" in task["setup"] and task["image"] is None and "TORCH_INDEX_URL" in task["envs"]
    else:  # the CUDA image, run as root so SkyPilot can install its runtime in it
        assert task["image"] == "ghcr.io/YOU/budgetgpt:cuda" and "pip install" not in task["setup"]
        assert task["config"]["docker"]["run_options"] == ["--user=0"]


def test_skypilot_0_14_starts_a_t4_from_its_driver_580_image():
    """What cloud/t4-spot.yaml's comment relies on: the pinned SkyPilot's default GPU image on AWS
    and GCP is its CUDA 13 one (NVIDIA 580), and a T4 is not routed to the legacy 535 image."""
    probe = ("from sky.clouds import aws, gcp; from sky.clouds.utils import gpu_utils; "
             "print(aws._DEFAULT_GPU_IMAGE_ID, gcp._DEFAULT_GPU_IMAGE_ID, gpu_utils.is_legacy_driver_gpu('T4'))")
    if not SKY_PYTHON.is_file():
        pytest.skip(f"no SkyPilot environment at {SKY_PYTHON}: `make cloud-env` installs it (make test does)")
    done = subprocess.run([str(SKY_PYTHON), "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"})
    assert done.stdout.split() == ["skypilot:custom-gpu-ubuntu-cuda13", "skypilot:custom-gpu-ubuntu-2204-cuda13",
                                   "False"], done.stderr


def test_skypilots_parser_refuses_a_broken_task(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(TASK.read_text().replace("max_restarts_on_errors: 0", "max_restarts_on_errors: -1"))
    done = parsed(broken)
    assert done.returncode != 0 and "max_restarts_on_errors" in done.stderr
