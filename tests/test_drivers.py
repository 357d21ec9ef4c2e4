"""End to end: the real `dvc repro` and the real `snakemake` over all four stages on tiny params,
in a throwaway copy of the repository. Each param change must rerun exactly the stages that read it,
under both drivers, and the budget gate must stop both before training."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from checkout import ROOT, TINY, copy_checkout
from pipeline import params as params_module

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
ALL = ["tokenize", "estimate", "train", "evaluate"]


def _env() -> dict[str, str]:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    env.pop("PYTHONPATH", None)
    return env


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the repository whose params.yaml is the demo overlay plus tiny sizes, with a small
    demo corpus: DVC reads params.yaml only, so the tiny values must live there."""
    work = tmp_path_factory.mktemp("e2e") / "repo"
    merged = params_module.merge_files([ROOT / "params.yaml", ROOT / "params" / "demo.yaml", TINY])
    copy_checkout(work)
    (work / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False, allow_unicode=True))
    _run([sys.executable, "-m", "pipeline", "demo-corpus", "--size-mb", "0.4"], work)
    return work


def _fresh(project: Path, name: str) -> Path:
    copy = project.parent / name
    shutil.copytree(project, copy)
    return copy


def _set(work: Path, key: str, value) -> None:
    path = work / "params.yaml"
    data = yaml.safe_load(path.read_text())
    section, leaf = key.split(".")
    data[section][leaf] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def dvc_ran(work: Path) -> list[str]:
    out = _run([str(BIN / "dvc"), "repro"], work).stdout
    return re.findall(r"Running stage '(\w+)'", out)


def snakemake_ran(work: Path) -> list[str]:
    result = _run([str(BIN / "snakemake"), "--cores", "2"], work)
    return [r for r in re.findall(r"^(?:local)?rule (\w+):", result.stdout + result.stderr, re.M) if r != "all"]


@pytest.mark.parametrize("driver", ["dvc", "snakemake"])
def test_reruns_exactly_the_stages_a_change_touches(project, driver):
    work = _fresh(project, driver)
    ran = dvc_ran if driver == "dvc" else snakemake_ran
    assert ran(work) == ALL
    for out in ["data/tokens/train.bin", "reports/cost.json", "models/final/config.json",
                "checkpoints/manifest.json", "reports/eval.json", "reports/summary.md"]:
        assert (work / out).is_file(), out
    assert ran(work) == []
    if driver == "dvc":
        metrics = _run([str(BIN / "dvc"), "metrics", "show", "--json"], work).stdout
        assert "perplexity" in metrics and "within_budget" in metrics and "tokens_per_second" in metrics
        plots = json.loads(_run([str(BIN / "dvc"), "plots", "show", "--json"], work).stdout)
        assert not plots.get("errors") and {"loss", "checkpoints", "estimate_vs_actual"} <= set(plots["data"])
    _set(work, "evaluate.max_new_tokens", 9)
    assert ran(work) == ["evaluate"]
    _set(work, "cost.budget_usd", 2.0)  # the gate moves, the plan does not: no retraining
    assert ran(work) == ["estimate", "evaluate"]
    _set(work, "train.lr", 0.001)
    assert ran(work) == ["train", "evaluate"]
    _set(work, "tokenizer.vocab_size", 600)
    assert ran(work) == ALL


@pytest.mark.parametrize("driver", ["dvc", "snakemake"])
def test_budget_gate_stops_the_pipeline_before_training(project, driver):
    work = _fresh(project, f"gate-{driver}")
    _set(work, "cost.budget_hours", 1e-9)
    cmd = [str(BIN / "dvc"), "repro"] if driver == "dvc" else [str(BIN / "snakemake"), "--cores", "2"]
    result = _run(cmd, work, check=False)
    assert result.returncode != 0
    assert "budget" in (result.stdout + result.stderr).lower()
    assert (work / "data/tokens/manifest.json").is_file()  # tokenize ran
    assert not (work / "reports/train.json").exists()
    assert not (work / "models/final").exists()
    assert not (work / "checkpoints").exists()
