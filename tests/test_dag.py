"""The two drivers declare one DAG: dvc.yaml is generated from the registry and current, and
Snakemake's jobs have exactly DVC's commands, inputs and outputs."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import dag, params as params_module
from pipeline.stages import STAGES, params_of

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_dvc_yaml_is_generated_from_the_registry():
    assert (ROOT / "dvc.yaml").read_text(encoding="utf-8") == dag.render(), \
        "dvc.yaml is stale: run `python -m pipeline dag`"


def test_every_stage_module_and_dep_exists():
    for stage in STAGES:
        for dep in stage.all_deps:
            if dep.startswith("pipeline/"):
                assert (ROOT / dep).is_file(), f"{stage.name} depends on missing {dep}"


def test_stage_params_name_real_keys():
    params = params_module.load([ROOT / "params.yaml"])
    for stage in STAGES:
        assert set(params_of(stage, params)) == set(stage.params)


def _dvc_stages() -> dict[str, dict]:
    """dvc.yaml with DVC's own templating resolved, as `dvc` sees it."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        out = {}
        for stage in repo.index.stages:
            out[stage.name] = {
                "cmd": stage.cmd,
                "deps": sorted(str(Path(d.def_path)) for d in stage.deps if not d.def_path.endswith("params.yaml")
                               and not hasattr(d, "params")),
                "outs": sorted(str(Path(o.def_path)) for o in stage.outs),
            }
        return out


def _snakemake_jobs(tmp_path: Path) -> tuple[dict[str, dict], str]:
    """Every job of a forced dry run: rule name, inputs, outputs, shell command."""
    corpus = tmp_path / "corpus"  # any existing path: the dry run only needs inputs to exist
    corpus.mkdir()
    result = subprocess.run(
        [BIN / "snakemake", "-n", "--forceall", "-p", "--cores", "1", "--config", f"paths={{corpus: {corpus}}}"],
        cwd=ROOT, capture_output=True, text=True, check=True)
    jobs: dict[str, dict] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", result.stdout):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head or head.group(1) == "all":
            continue
        fields = dict(re.findall(r"^\s+(input|output): (.*)$", block, re.M))
        cmd = re.search(r"(python -m pipeline .*?) 2>&1", block)
        jobs[head.group(1)] = {
            "inputs": sorted(p.strip() for p in fields.get("input", "").split(",") if p.strip()),
            "outputs": sorted(p.strip() for p in fields.get("output", "").split(",") if p.strip()),
            "cmd": cmd.group(1) if cmd else None,
        }
    return jobs, str(corpus)


def test_snakemake_and_dvc_run_the_same_stages(tmp_path):
    dvc = _dvc_stages()
    jobs, corpus = _snakemake_jobs(tmp_path)
    assert list(jobs) == [s.name for s in STAGES] == list(dvc)
    for stage in STAGES:
        snake, d = jobs[stage.name], dvc[stage.name]
        assert snake["cmd"].startswith(d["cmd"] + " --params params.yaml"), stage.name
        expected_inputs = sorted(corpus if p == "data/raw" else p for p in d["deps"])
        assert snake["inputs"] == expected_inputs, stage.name
        # checkpoints persist across runs: DVC declares them (persist: true), Snakemake must not,
        # or it would delete them before a rerun and whenever a job fails.
        persistent = {dag.resolve(p, params_module.load([ROOT / "params.yaml"])) for p in stage.persistent}
        assert snake["outputs"] == sorted(set(d["outs"]) - persistent), stage.name


def test_dvc_analytics_is_off():
    config = (ROOT / ".dvc" / "config").read_text()
    assert re.search(r"analytics\s*=\s*false", config)


@pytest.mark.parametrize("profile", sorted(p.name for p in (ROOT / "profiles").iterdir()))
def test_profiles_are_valid_yaml_named_config(profile):
    data = yaml.safe_load((ROOT / "profiles" / profile / "config.yaml").read_text())
    assert isinstance(data, dict) and data


def test_bare_profile_names_work_after_setup(tmp_path):
    """`snakemake --profile t4`, exactly as a user types it, once `make profiles` linked them."""
    env = dict(PATH=f"{BIN}:/usr/bin:/bin", HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"))
    subprocess.run(["make", "-s", "profiles"], cwd=ROOT, env=env, check=True)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for profile in ("t4", "rtx2050", "cpu", "slurm"):
        result = subprocess.run([BIN / "snakemake", "--profile", profile, "-n",
                                 "--config", f"paths={{corpus: {corpus}}}"],
                                cwd=ROOT, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"Using profile {profile} " in result.stdout + result.stderr


def test_snakemake_lint_is_clean():
    result = subprocess.run([BIN / "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr or not result.stdout.strip()


def test_code_deps_refuse_a_misspelled_stage():
    from pipeline.stages import code_deps

    with pytest.raises(ValueError, match="no module pipeline/trian.py"):
        code_deps("trian")
