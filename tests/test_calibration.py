"""Learned calibration: a run's measured MFU is kept per machine, and the next estimate of the
same shape uses it and says so."""
from __future__ import annotations

import json
import os
import shutil
import sys

from pipeline.cost import calibration
from trainkit import DEMO_FILES, ROOT, report, tiny_sets

import subprocess


def stage(name, demo_tokens, base, env, *overrides):
    args = [sys.executable, "-m", "pipeline", name]
    for f in DEMO_FILES:
        args += ["--params", str(f)]
    for item in tiny_sets(demo_tokens, base, *overrides):
        args += ["--set", item]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads((base / "reports" / "cost.json").read_text()) if name == "estimate" else None


def test_the_next_run_of_the_same_shape_learns_from_the_first_but_never_a_run_from_itself(demo_tokens, tmp_path):
    # a cache of this test's own, with the CPU already measured: no other run's lessons in it
    cache = tmp_path / "cache"
    shutil.copytree(os.environ["BUDGETGPT_CACHE_DIR"], cache, ignore=shutil.ignore_patterns(calibration.FILE_NAME))
    env = {**os.environ, "BUDGETGPT_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    run = ("train.max_steps=80", "train.eval_every=40", "train.checkpoint_every=40", "cost.pricing=owned")

    first = stage("estimate", demo_tokens, tmp_path, env, *run)
    assert first["mfu_source"].startswith("catalog default")
    stage("train", demo_tokens, tmp_path, env, *run)
    actual = report(tmp_path)["wall_hours"]
    learned = json.loads((cache / calibration.FILE_NAME).read_text())
    [runs] = learned.values()
    assert len(runs) == 1 and 0 < next(iter(runs.values()))["mfu"] <= 1

    # the same run estimated again (a price edit reruns estimate): its own measurement would make
    # the estimate look perfect against the run it came from
    again = stage("estimate", demo_tokens, tmp_path, env, *run)
    assert again["mfu_source"].startswith("catalog default") and again["hours"] == first["hours"]

    # another run of the same shape on this machine (another seed): priced from the first one
    other = tmp_path / "other"
    second = stage("estimate", demo_tokens, other, env, *run, "train.seed=7")
    assert second["mfu_source"].startswith("learned: measured by an earlier train run of this shape")
    assert "learned" in (other / "reports" / "cost.md").read_text()
    assert abs(second["hours"] - actual) < abs(first["hours"] - actual), (first["hours"], second["hours"], actual)

    ignored = stage("estimate", demo_tokens, other, env, *run, "train.seed=7", "cost.learn_mfu=false")
    assert ignored["mfu_source"].startswith("catalog default")
