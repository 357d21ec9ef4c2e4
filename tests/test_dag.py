"""The two drivers declare one DAG: dvc.yaml and rules/stages.smk are generated from the registry
and current, and Snakemake's jobs have exactly DVC's commands, inputs and outputs (a directory DVC
tracks whole, Snakemake tracks by its files)."""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from checkout import copy_checkout
from pipeline.tools import dag
from pipeline.core import params as params_module
from pipeline.core.errors import PipelineError
from pipeline.registry import CORPUS, EVAL_DATA, STAGES, params_of

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PARAMS = params_module.load([ROOT / "params.yaml"])


def test_dvc_yaml_is_generated_from_the_registry():
    assert (ROOT / "dvc.yaml").read_text(encoding="utf-8") == dag.render(), \
        "dvc.yaml is stale: run `python -m pipeline dag`"


def test_snakemake_rules_are_generated_from_the_registry():
    assert (ROOT / dag.RULES_FILE).read_text(encoding="utf-8") == dag.render_rules(), \
        "rules/stages.smk is stale: run `python -m pipeline dag`"


def test_dag_check_names_the_stale_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(check=True)
    dag.main(PARAMS, argparse.Namespace(check=False))
    assert dag.main(PARAMS, args) == 0
    with open(dag.RULES_FILE, "a", encoding="utf-8") as fh:
        fh.write("# an edit by hand\n")
    with pytest.raises(PipelineError, match=r"^rules/stages\.smk is out of date with pipeline/registry\.py"):
        dag.main(PARAMS, args)


def test_every_stage_module_and_dep_exists():
    for stage in STAGES:
        for dep in stage.all_deps:
            if dep.startswith("pipeline/"):
                assert (ROOT / dep).is_file(), f"{stage.name} depends on missing {dep}"


def test_stage_params_name_real_keys():
    for stage in STAGES:
        assert set(params_of(stage, PARAMS)) == set(stage.params)


def test_code_deps_refuse_a_misspelled_stage():
    from pipeline.registry import code_deps

    with pytest.raises(ValueError, match=r"no module pipeline\.stages\.trian \(a misspelled stage\?\)"):
        code_deps("pipeline.stages.trian")


def test_a_stages_code_deps_are_the_code_that_can_change_its_outputs():
    """A catalog price, the cost report's wording, a plot's style or another stage's code never
    reruns train: it gets the device peak through the plan, the budget through the cost record."""
    deps = {stage.name: set(stage.all_deps) for stage in STAGES}
    never_train = {"pipeline/cost/hardware.yaml", "pipeline/cost/hardware.py", "pipeline/cost/render.py",
                   "pipeline/cost/pricing.py", "pipeline/cost/planner.py", "pipeline/reports/plots.py",
                   "pipeline/cost/spot.py", "pipeline/stages/estimate.py", "pipeline/stages/evaluate.py", "pipeline/stages/tokenize.py"}
    assert not deps["train"] & never_train, deps["train"] & never_train
    assert "pipeline/engine/trainer.py" in deps["train"] and "pipeline/engine/plan.py" in deps["train"]
    # the budget guard's reclaim arithmetic is train's code; the rates it reads come in cost.json
    assert "pipeline/cost/reclaim.py" in deps["train"] and "pipeline/cost/spot.py" in deps["estimate"]
    # evaluate holds the run against the estimate train recorded: no estimate code, no catalog
    assert not deps["evaluate"] & {"pipeline/cost/hardware.yaml", "pipeline/cost/pricing.py",
                                   "pipeline/stages/estimate.py", "pipeline/stages/train.py"}
    assert "pipeline/cost/hardware.yaml" in deps["estimate"] and "pipeline/cost/render.py" in deps["estimate"]
    # the tokenizer never depends on the model, the cost model or the engine; cleaning never on the tokenizer
    assert not {d for d in deps["tokenize"] if d.startswith(("pipeline/model/", "pipeline/cost/", "pipeline/engine/"))}
    assert not deps["clean"] & {"pipeline/data/bpe.py", "pipeline/data/encode.py", "pipeline/stages/tokenize.py"}
    assert "pipeline/data/quality.py" in deps["clean"] and "pipeline/data/quality.py" not in deps["tokenize"]
    # only train runs as several processes: a launcher edit reruns it and nothing before it
    launcher = {"pipeline/core/launch.py", "pipeline/core/multinode.py", "pipeline/core/torchrun.py"}
    assert launcher <= deps["train"] and not launcher & (deps["tokenize"] | deps["estimate"] | deps["evaluate"])


def test_code_deps_follow_packages_and_submodules(tmp_path):
    from pipeline.registry import code_deps

    deps = code_deps("pipeline.stages.estimate")
    # `from pipeline.cost import budget` names a module; its package's __init__ runs too
    assert "pipeline/cost/budget.py" in deps and "pipeline/cost/__init__.py" in deps
    assert deps[0] == "pipeline/__main__.py" and "pipeline/registry.py" not in deps


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


def _snakemake_jobs(tmp_path: Path, *config: str) -> dict[str, dict]:
    """Every job of a forced dry run: rule name, inputs, outputs, logs, shell command."""
    corpus = tmp_path / "corpus"  # any existing path: the dry run only needs inputs to exist
    corpus.mkdir(exist_ok=True)
    result = subprocess.run(
        [BIN / "snakemake", "-n", "--forceall", "-p", "--cores", "1",
         "--config", f"paths={{corpus: {corpus}}}", *config],
        cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs: dict[str, dict] = {}
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", result.stdout):
        head = re.match(r"(?:local)?(rule|checkpoint) (\w+):", block)
        if not head or head.group(2) == "all":
            continue
        fields = dict(re.findall(r"^\s+(input|output|log): (.*)$", block, re.M))
        cmd = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs[head.group(2)] = {
            "checkpoint": head.group(1) == "checkpoint",
            **{k: sorted(p.strip() for p in fields.get(k, "").split(",") if p.strip())
               for k in ("input", "output", "log")},
            "cmd": cmd.group(1) if cmd else None,
        }
    return jobs


def _resolved(template: str, corpus: Path) -> str:
    return str(corpus) if template == CORPUS.template else dag.resolve(template, PARAMS)


def _as_dvc_paths(files: list[str], dvc_paths: list[str]) -> list[str]:
    """Snakemake's files as DVC's paths: a file inside a directory DVC tracks is that directory."""
    out = set()
    for f in files:
        owner = [d for d in dvc_paths if f == d or f.startswith(d + "/")]
        assert len(owner) == 1, f"{f} matches {owner} among DVC's {dvc_paths}"
        out.add(owner[0])
    return sorted(out)


def test_snakemake_and_dvc_run_the_same_stages(tmp_path):
    dvc = _dvc_stages()
    jobs = _snakemake_jobs(tmp_path)
    corpus = tmp_path / "corpus"
    assert [j for j in jobs if not j.endswith("_params")] == [s.name for s in STAGES] == list(dvc)
    for stage in STAGES:
        snake, d = jobs[stage.name], dvc[stage.name]
        values = f"logs/params/{stage.name}.yaml"
        # the same command; the values come in a file, the same whatever the values are; the stage
        # writes its log itself (no pipe a Ctrl-C could break) and is the job's process (exec)
        assert snake["cmd"] == f"exec {d['cmd']} --params params.yaml --params {values} --log logs/{stage.name}.log"
        assert jobs[f"{stage.name}_params"]["output"] == [values]
        # the same inputs: a checkpoint's output is <TBD> in a dry run until the checkpoint ran
        inputs = [p for p in snake["input"] if p not in (values, "<TBD>")]
        tbd = [_resolved(a.template, corpus) for a in stage.inputs if a.by_content]
        assert ("<TBD>" in snake["input"]) == bool(tbd), stage.name
        expected = sorted({str(corpus) if p == dag.resolve(CORPUS.template, PARAMS) else p for p in d["deps"]})
        # evaluate's data: DVC tracks the directory, Snakemake the files params name there (none
        # here; test_snakemake_tracks_the_named_eval_files)
        named = [_resolved(a.template, corpus) for a in stage.inputs if a is EVAL_DATA]
        assert sorted(set(_as_dvc_paths(inputs, expected)) | set(tbd) | set(named)) == expected, stage.name
        # the same outputs, bar what outlives a failure (Snakemake: a log)
        kept = [_resolved(a.template, corpus) for a in stage.outputs if a.kept_on_failure]
        assert sorted(set(snake["log"]) - {f"logs/{stage.name}.log"}) == sorted(kept), stage.name
        assert _as_dvc_paths(snake["output"] + kept, d["outs"]) == d["outs"], stage.name
        # a directory with named files is declared by them: no .snakemake_timestamp among them
        for artifact in stage.outputs:
            if artifact.files:
                assert _resolved(artifact.template, corpus) not in snake["output"], artifact.name
    assert [name for name, job in jobs.items() if job["checkpoint"]] == \
        [s.name for s in STAGES if any(a.by_content for t in STAGES for a in t.inputs if a in s.outputs)]


def _clean_inputs(tmp_path: Path, corpus: str) -> list[str]:
    result = subprocess.run(
        [BIN / "snakemake", "-n", "--forceall", "--cores", "1", "--config", f"paths={{corpus: '{corpus}'}}"],
        cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    block = re.search(r"^(?:local)?rule clean:\n\s+input: (.*)$", result.stdout, re.M)
    return sorted(p.strip() for p in block.group(1).split(",") if not p.strip().startswith(("pipeline/", "logs/")))


@pytest.mark.parametrize("kind", ["directory", "glob", "file", "datasets"])
def test_every_corpus_file_is_an_input_of_clean(tmp_path, kind):
    """Per-file inputs, as the clean stage finds the files (pipeline/data/corpus.py): an edited,
    added or removed file reruns it; the directory's own timestamp is no input."""
    root = tmp_path / "corpus"
    (root / "more").mkdir(parents=True)
    for name in ("a.txt", "more/b.jsonl", ".hidden.txt", "notes.md"):
        (root / name).write_text('{"text": "x"}\n' if name.endswith("jsonl") else "some text\n")
    if kind == "directory":
        corpus, expected = str(root), [f"{root}/a.txt", f"{root}/more/b.jsonl"]
    elif kind == "glob":
        corpus, expected = f"{root}/**/*.jsonl", [f"{root}/more/b.jsonl"]
    elif kind == "file":
        corpus, expected = f"{root}/a.txt", [f"{root}/a.txt"]
    else:
        import datasets

        corpus = str(tmp_path / "saved")
        datasets.Dataset.from_dict({"text": ["one", "two"]}).save_to_disk(corpus)
        expected = sorted(str(p) for p in Path(corpus).rglob("*") if p.is_file() and not p.name.startswith("."))
        assert len(expected) >= 3   # the arrow shard, dataset_info.json, state.json
    assert _clean_inputs(tmp_path, corpus) == sorted(expected)


def test_snakemake_tracks_the_named_eval_files(tmp_path):
    """An edit to a reference text or a task file reruns evaluate: each is an input of its job (a
    task's directory: every file in it); a missing one is left to the stage, which names its key."""
    data = tmp_path / "eval"
    (data / "repo/data").mkdir(parents=True)
    for name in ("ref.txt", "task.jsonl", "repo/README.md", "repo/data/x.jsonl"):
        (data / name).write_text("x")
    jobs = _snakemake_jobs(tmp_path, f"paths={{corpus: {tmp_path / 'corpus'}, eval_data: {data}}}",
                           "evaluate={reference_texts: {a: ref.txt, gone: missing.txt}, "
                           "tasks: {piqa: task.jsonl, belebele_eng_Latn: repo}}")
    inputs = {p for p in jobs["evaluate"]["input"] if p.startswith(str(data))}
    assert inputs == {str(data / n) for n in ("ref.txt", "task.jsonl", "repo/README.md", "repo/data/x.jsonl")}


def test_no_job_command_carries_a_value(tmp_path):
    """--config changes a value, never a command; and its values keep their YAML types (null)."""
    plain = _snakemake_jobs(tmp_path)
    overridden = _snakemake_jobs(tmp_path, "evaluate={max_new_tokens: 9}", "cost={budget_usd: null}")
    assert {n: j["cmd"] for n, j in plain.items()} == {n: j["cmd"] for n, j in overridden.items()}


def test_resume_state_belongs_to_no_driver():
    """Checkpoints: DVC would delete them before a rerun (and a clone without them would rerun
    train); Snakemake would delete them before a rerun and after a failed job."""
    text = (ROOT / "dvc.yaml").read_text()
    for stage in STAGES:
        for persistent in stage.persistent:
            assert dag.dvc_path(persistent) not in text


def test_dvc_outputs_cache_the_data_and_commit_the_reports():
    doc = yaml.safe_load(dag.render())
    for stage in STAGES:
        entry = doc["stages"][stage.name]
        cached = [o for o in entry["outs"] if isinstance(o, str)]
        in_git = [next(iter(o)) for o in entry["outs"] if isinstance(o, dict)]
        assert cached == [dag.dvc_path(t) for t in stage.outs], stage.name
        assert in_git == [dag.dvc_path(t) for t in stage.small_outs], stage.name
        assert all(o[next(iter(o))] == {"cache": False} for o in entry["outs"] if isinstance(o, dict))
        # metrics: the headline file and what cleaning kept (dvc metrics show, dvc exp show); cost.json,
        # train.json and eval.json are reports (prose and provenance), not columns
        metrics = [next(iter(m)) for m in entry.get("metrics", [])]
        assert metrics == [dag.dvc_path(t) for t in stage.metrics], stage.name
    assert [next(iter(m)) for s in doc["stages"].values() for m in s.get("metrics", [])] == \
        ["${paths.reports}/clean.json", "${paths.reports}/metrics.json"]


def test_dvc_plots_render_offline_in_two_colours():
    doc = yaml.safe_load(dag.render())
    images = [p for p in doc["plots"] if isinstance(p, str)]
    assert images and all(p.endswith(".png") for p in images)
    loss = next(p["loss"] for p in doc["plots"] if isinstance(p, dict) and "loss" in p)
    template = json.loads((ROOT / ".dvc" / "plots" / f"{loss['template']}.json").read_text())
    assert template["encoding"]["color"]["field"] == "split"      # DVC's templates: colour = revision
    page = (ROOT / ".dvc" / "plots" / "page.html").read_text()
    assert "{plot_divs}" in page
    for name in ("vega", "vega-lite", "vega-embed"):
        local = re.search(rf'src="\.\./(\.venv/[^"]*/{name}\.js)"', page)
        assert local, name
        if (ROOT / ".venv").is_dir():
            assert (ROOT / local.group(1)).is_file(), f"{local.group(1)}: the Snakemake package moved its assets"
    assert re.search(r"html_template\s*=\s*plots/page\.html", (ROOT / ".dvc" / "config").read_text())


def test_git_commits_the_reports_and_ignores_the_rest(tmp_path):
    work = tmp_path / "repo"
    copy_checkout(work)
    committed = ["reports/metrics.json", "reports/eval.json", "reports/plan.json", "reports/plots/loss.png",
                 "reports/train_live/metrics.json", "data/raw.dvc", "dvc.lock"]
    ignored = ["data/raw/a.txt", "data/tokens/train.bin", "models/final/config.json", "checkpoints/manifest.json",
               "dvc_plots/index.html", "logs/train.log", "reports/train_live/.snakemake_timestamp"]
    for path in committed + ignored:
        result = subprocess.run(["git", "-C", str(work), "check-ignore", "-q", path])
        assert result.returncode == (0 if path in ignored else 1), path


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
