"""cloud/t4-spot.yaml, read by SkyPilot's own parser (sky.Task.from_yaml: offline, no cloud
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
SKY_PYTHON = Path(os.environ.get("BUDGETGPT_SKY_PYTHON", ROOT / ".venv-cloud" / "bin" / "python"))

PARSE = """
import json, sys
import sky
task = sky.Task.from_yaml(sys.argv[1])
(resources,) = task.resources
print(json.dumps({"name": task.name, "accelerators": resources.accelerators, "use_spot": resources.use_spot,
                  "job_recovery": resources.job_recovery, "envs": task.envs, "workdir": task.workdir,
                  "setup": task.setup, "run": task.run}))
"""


def parsed(path: Path) -> subprocess.CompletedProcess:
    if not SKY_PYTHON.is_file():
        pytest.skip(f"no SkyPilot environment at {SKY_PYTHON}: `make cloud-env` installs it (make test does)")
    return subprocess.run([str(SKY_PYTHON), "-c", PARSE, str(path)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"})


def test_the_spot_task_is_a_valid_skypilot_task_that_never_retries_a_user_error():
    done = parsed(TASK)
    assert done.returncode == 0, done.stderr
    task = json.loads(done.stdout.strip().splitlines()[-1])
    assert task["accelerators"] == {"T4": 1} and task["use_spot"] is True
    recovery = task["job_recovery"]
    # preemptions are recovered by SkyPilot; any non-zero exit (2 bad input, 3 budget) is final
    assert recovery["max_restarts_on_errors"] == 0 and 2 not in recovery["recover_on_exit_codes"]
    assert 3 not in recovery["recover_on_exit_codes"]
    assert task["run"].strip() == "bash cloud/run.sh" and "make setup" in task["setup"]
    assert {"PROFILE", "CHECKPOINTS_REMOTE", "DVC_REMOTE"} <= set(task["envs"]) and task["workdir"] == "."


def test_skypilots_parser_refuses_a_broken_task(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(TASK.read_text().replace("max_restarts_on_errors: 0", "max_restarts_on_errors: -1"))
    done = parsed(broken)
    assert done.returncode != 0 and "max_restarts_on_errors" in done.stderr
