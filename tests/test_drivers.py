"""End to end: the real `snakemake` and the real `dvc` over all four stages on tiny params, in a
throwaway copy of the repository (tests/checkout.py).

Each driver's matrix is one sequence of runs over one checkout: for every change a user makes,
the exact stages that reran, in that one run, and then a run that does nothing. The changes both
drivers see (params.yaml, the corpus, the budget gate) expect the same stages under both; the
Snakemake-only ones (--configfile, --config, a profile) follow. The DVC test then shares the
project as the README says (dvc add, a local remote, push, clone, pull, repro: nothing reruns)
and runs two experiments whose `dvc exp show --only-changed` fits 160 columns.
"""
from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from checkout import ROOT, TINY, copy_checkout
from pipeline.core import params as params_module

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
ALL = ["tokenize", "estimate", "train", "evaluate"]
CORPUS = "data/demo"   # paths.corpus of params/demo.yaml
# what save_pretrained writes: no driver may add a file to the model a user loads
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json"}


def _env() -> dict[str, str]:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    env.pop("PYTHONPATH", None)
    return env


def _run(cmd: list[str], cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env={**_env(), **env}, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
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


# ---- the drivers ---------------------------------------------------------------------------------

def snakemake(work: Path, *args: str, check: bool = True) -> tuple[list[str], subprocess.CompletedProcess]:
    """The stages one `snakemake` run ran (not its STAGE_params jobs, which write the values)."""
    result = _run([BIN / "snakemake", "--cores", "2", *args], work, check)
    jobs = re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", result.stdout + result.stderr, re.M)
    return [j for j in jobs if j != "all" and not j.endswith("_params")], result


def dvc(work: Path, *args: str, check: bool = True) -> tuple[list[str], subprocess.CompletedProcess]:
    result = _run([BIN / "dvc", "repro", *args], work, check)
    return re.findall(r"Running stage '(\w+)'", result.stdout), result


def _expect(driver, work: Path, what: str, expected: list[str], *args: str) -> str:
    """The first run's output, once it reran exactly `expected` and the next run nothing."""
    ran, first = driver(work, *args)
    assert ran == expected, f"{what}: {driver.__name__} reran {ran}, expected {expected}"
    again, _ = driver(work, *args)
    assert again == [], f"{what}: the next {driver.__name__} run reran {again}, expected nothing"
    return first.stdout + first.stderr


# ---- the changes ---------------------------------------------------------------------------------

def _set(work: Path, key: str, value) -> None:
    path = work / "params.yaml"
    data = yaml.safe_load(path.read_text())
    section, leaf = key.split(".")
    data[section][leaf] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{path} no longer holds {old}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _later(path: Path) -> None:
    """A new modification time, the content unchanged."""
    stamp = time.time() + 2
    os.utime(path, (stamp, stamp))


def _refused(driver, work: Path, ran_before_refusal: list[str]) -> str:
    _set(work, "cost.budget_hours", 1e-9)
    ran, result = driver(work, check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and ran == ran_before_refusal, out
    assert "budget" in out.lower() and "reports/cost.md" in out, out
    # the refusal stays readable where the message points, whatever the driver deletes
    assert "budget" in (work / "reports" / "cost.md").read_text().lower()
    return out


def _both_drivers_matrix(driver, work: Path) -> None:
    # The gate on a fresh checkout: tokenize runs, estimate refuses, nothing trains.
    _refused(driver, work, ["tokenize", "estimate"])
    assert not (work / "reports/train.json").exists()
    assert not (work / "models/final").exists() and not (work / "checkpoints").exists()
    _set(work, "cost.budget_hours", 1.0)
    out = _expect(driver, work, "the budget fixed", ["estimate", "train", "evaluate"])
    # the stages get `auto` as written (Snakemake's overlay too) and say what it became and why
    assert "train.lr auto: 0.002 = min(0.002, 0.0006 x 768/64)" in out
    assert {p.name for p in (work / "models/final").iterdir()} == MODEL_FILES

    corpus = work / CORPUS
    _later(corpus)
    assert driver(work)[0] == [], "the corpus directory touched"
    _later(corpus / "en.txt")
    assert driver(work)[0] == [], "a corpus file touched, its content unchanged"
    with open(corpus / "en.txt", "a", encoding="utf-8") as fh:
        fh.write("\n\nOne more document, appended to the corpus.\n")
    _expect(driver, work, "a document appended to a corpus file", ALL)

    _set(work, "evaluate.max_new_tokens", 9)
    _expect(driver, work, "an evaluate value", ["evaluate"])
    _set(work, "train.patience", 7)
    _expect(driver, work, "a train value", ["train", "evaluate"])
    _set(work, "train.lr", 0.001)   # the run's identity: a run is never priced from its own speed
    _expect(driver, work, "train.lr", ["estimate", "train", "evaluate"])
    _set(work, "model.context", 32)
    _expect(driver, work, "model.context", ["estimate", "train", "evaluate"])
    _set(work, "train.optimizer", "adamw")   # the plan is sized and priced for the optimizer
    _expect(driver, work, "train.optimizer", ["estimate", "train", "evaluate"])

    # Code and catalog edits rerun the stages whose outputs they can change, never train: the
    # plan carries what train needs of the catalog, and the run is held against the estimate it
    # was gated with (train.json), so a later estimate changes no other stage's output.
    trained = (work / "reports/train.json").read_bytes()
    _edit(work / "pipeline/cost/hardware.yaml", "usd_per_hour_on_demand: 0.526", "usd_per_hour_on_demand: 0.6")
    _edit(work / "pipeline/cost/hardware.yaml", "spot_reclaims_per_month: 0.20", "spot_reclaims_per_month: 0.30")
    _expect(driver, work, "a catalog price and reclaim rate", ["estimate"])
    _edit(work / "pipeline/cost/render.py", '"## Sources"', '"## Where each figure comes from"')
    _expect(driver, work, "the cost report's wording", ["estimate"])
    _edit(work / "pipeline/reports/plots.py", '"tab:red"', '"tab:orange"')
    _expect(driver, work, "a plot colour", ["evaluate"])
    assert (work / "reports/train.json").read_bytes() == trained
    _git(work, "commit", "-qam", "the code edits above, as a developer commits them")

    # The gate after training: the refusal keeps what was trained, and the fix, a budget change
    # like any other, reruns estimate alone, never train: the plan did not change.
    trained = (work / "reports/train.json").read_bytes()
    _refused(driver, work, ["estimate"])
    assert (work / "reports/train.json").read_bytes() == trained
    _set(work, "cost.budget_hours", 2.0)
    _expect(driver, work, "a budget (fixed after a refusal)", ["estimate"])


def test_snakemake_reruns_exactly_what_changed(project):
    work = _fresh(project, "snakemake")
    _both_drivers_matrix(snakemake, work)

    # Changes that rerun all four, checked with Snakemake's own dry run (exact when tokenize is to
    # run: everything downstream is), then undone, after which nothing runs: a tokenizer value, a
    # corpus file added (the set of inputs changed), one removed.
    vocab = yaml.safe_load((work / "params.yaml").read_text())["tokenizer"]["vocab_size"]
    _set(work, "tokenizer.vocab_size", vocab + 88)
    assert sorted(snakemake(work, "-n")[0]) == sorted(ALL), "a tokenizer value"
    _set(work, "tokenizer.vocab_size", vocab)
    assert snakemake(work)[0] == [], "the tokenizer value back"
    corpus = work / CORPUS
    shutil.copy(corpus / "tr.txt", corpus / "tr2.txt")
    os.utime(corpus / "tr2.txt", (0, 0))   # older than every output: only the set of inputs changed
    assert sorted(snakemake(work, "-n")[0]) == sorted(ALL), "a corpus file added"
    (corpus / "tr2.txt").unlink()
    assert snakemake(work)[0] == [], "the added corpus file removed again"
    (corpus / "tr.txt").rename(work / "tr.txt")
    assert sorted(snakemake(work, "-n")[0]) == sorted(ALL), "a corpus file removed"
    (work / "tr.txt").rename(corpus / "tr.txt")
    assert snakemake(work)[0] == [], "the removed corpus file back"

    # Values from anywhere Snakemake takes them, each rerunning only the stages that read it.
    (work / "more.yaml").write_text("train:\n  max_steps: 9\n")
    files = ("--configfile", "more.yaml")
    _expect(snakemake, work, "train.max_steps in a --configfile", ["estimate", "train", "evaluate"], *files)
    _expect(snakemake, work, "--config 'cost={budget_usd: null}'", ["estimate"],
            *files, "--config", "cost={budget_usd: null}")
    _expect(snakemake, work, "an evaluate value in --config", ["evaluate"],
            *files, "--config", "cost={budget_usd: null}", "evaluate={max_new_tokens: 5}")
    profile = work / "tiny-profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(yaml.safe_dump(
        {"config": {"cost": {"budget_usd": None}, "evaluate": {"max_new_tokens": 5, "temperature": 0.9}}}))
    _expect(snakemake, work, "an evaluate value in a profile", ["evaluate"], *files, "--profile", "tiny-profile")

    values = yaml.safe_load((work / "logs/params/evaluate.yaml").read_text())
    assert values["evaluate"]["temperature"] == 0.9 and values["evaluate"]["max_new_tokens"] == 5
    assert yaml.safe_load((work / "logs/params/estimate.yaml").read_text())["cost"]["budget_usd"] is None
    assert {p.name for p in (work / "models/final").iterdir()} == MODEL_FILES
    # Snakemake sets OMP_NUM_THREADS to a job's threads: undeclared, torch would train on one core
    threads = min(2, os.cpu_count() or 1)  # the --cores this test gives
    assert f"on cpu ({threads} threads)" in (work / "logs/train.log").read_text()


def test_dvc_reruns_exactly_what_changed_and_shares_the_project(project, tmp_path):
    work = _fresh(project, "dvc")
    _both_drivers_matrix(dvc, work)
    _set(work, "tokenizer.vocab_size", 600)
    _expect(dvc, work, "a tokenizer value", ALL)
    assert {p.name for p in (work / "models/final").iterdir()} == MODEL_FILES
    _metrics_and_plots(work, tmp_path)
    _collaborator(work, tmp_path)
    _experiments(work)


# ---- DVC: metrics, plots, a collaborator, experiments --------------------------------------------

def _git(work: Path, *args: str) -> str:
    return _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], work).stdout


def _readme_git_add() -> list[str]:
    """The README's list of files to commit after `dvc add data/raw` and a run."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    line = re.search(r"^git add (.+?)(?: && |$)", readme, re.M)
    assert line, "README: no `git add ...` line"
    return line.group(1).split()


def _metrics_and_plots(work: Path, tmp_path: Path) -> None:
    """dvc metrics show: the headline numbers only. Plots: the PNGs as images, the loss curves
    coloured by split; the page is never committed."""
    metrics = json.loads(_run([BIN / "dvc", "metrics", "show", "--json"], work).stdout)
    assert set(metrics[""]["data"]) == {"reports/metrics.json"}
    numbers = metrics[""]["data"]["reports/metrics.json"]["data"]
    assert numbers and all(isinstance(v, float) for v in numbers.values()), numbers

    _run([BIN / "dvc", "plots", "show"], work)
    page = (work / "dvc_plots" / "index.html").read_text()
    assert "vega-embed.js" in page and sorted(p.name for p in (work / "dvc_plots" / "static").iterdir()) == \
        ["workspace_reports_plots_estimate_vs_actual.png", "workspace_reports_plots_loss.png"]
    assert "dvc_plots" not in _git(work, "status", "--porcelain", "--untracked-files=all")
    plots = json.loads(_run([BIN / "dvc", "plots", "show", "--json"], work).stdout)
    assert not plots.get("errors") and set(plots["data"]) == {
        "reports/plots/loss.png", "reports/plots/estimate_vs_actual.png", "loss", "estimate_vs_actual"}
    loss = plots["data"]["loss"][0]["content"]
    assert loss["encoding"]["color"]["field"] == "split"
    assert {v["filename"] for v in loss["data"]["values"]} == {"loss_train.csv", "loss_val.csv"}
    _render_offline(loss, tmp_path)


def _collaborator(work: Path, tmp_path: Path) -> None:
    """The README's commands, with the tiny corpus for data/raw: commit exactly the files it
    lists, and a clone's `dvc pull && dvc repro` reruns nothing and has the same bytes."""
    remote = tmp_path / "remote"
    _run([BIN / "dvc", "add", CORPUS], work)
    _run([BIN / "dvc", "remote", "add", "-d", "storage", remote], work)
    _run([BIN / "dvc", "push"], work)
    listed = [p.replace("data/raw", CORPUS) for p in _readme_git_add()]
    _git(work, "add", *listed, "params.yaml")   # params.yaml: the tiny values this test runs with
    _git(work, "commit", "-qm", "corpus v1")
    assert _git(work, "status", "--porcelain", "--untracked-files=all") == "", \
        "the README's `git add` list leaves files to commit"
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", work, clone], tmp_path)
    _run([BIN / "dvc", "pull"], clone)
    ran, _ = dvc(clone)
    assert ran == [], f"a collaborator's `dvc pull && dvc repro` reran {ran}"
    for path in ("data/tokens/train.bin", "data/tokens/val.bin", "data/tokenizer/tokenizer.json",
                 *(f"models/final/{name}" for name in sorted(MODEL_FILES))):
        assert filecmp.cmp(work / path, clone / path, shallow=False), path


def _experiments(work: Path) -> None:
    """Two experiments: their headline metrics side by side, numbers in every cell, 160 columns."""
    names = []
    for lr in (0.001, 0.003):
        out = _run([BIN / "dvc", "exp", "run", "-S", f"train.lr={lr}"], work).stdout
        names += re.findall(r"Ran experiment\(s\): (\S+)", out)
    assert len(names) == 2, names
    table = _run([BIN / "dvc", "exp", "show", "--only-changed", "--no-pager"], work, COLUMNS="1000").stdout
    lines = [line.rstrip() for line in table.splitlines() if line.strip()]
    width = max(len(line) for line in lines)
    assert width <= 160, f"`dvc exp show --only-changed` is {width} columns wide:\n{table}"
    header = lines[1].split()
    for column in ("val_loss", "bits_per_byte", "hours", "usd", "hours_error_pct", "train.lr"):
        assert column in header, table
    rows = [line.split() for line in lines[3:-1]]
    assert len(rows) == 4, table   # workspace, the baseline commit, two experiments
    for row in rows:
        cells = row[-(len(header) - 2):]   # past Experiment and Created (whose cells hold spaces)
        assert all(_is_number(c) or re.fullmatch(r"[0-9a-f]{32}(\.dir)?", c) for c in cells), (row, table)
    diff = _run([BIN / "dvc", "metrics", "diff", *names], work).stdout
    assert "val_loss" in diff and "reports/metrics.json" in diff, diff


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _render_offline(spec: dict, tmp_path: Path) -> None:
    """Render the loss plot with the Vega the page loads from the virtualenv, no network: two
    colours, one per split. Needs node; skipped without it (the spec checks above still ran)."""
    node = shutil.which("node")
    assets = Path(sys.prefix) / "lib" / "python3.11" / "site-packages" / "snakemake" / "assets" / "data"
    if not node or not (assets / "vega" / "vega.js").is_file():
        return
    modules = tmp_path / "node" / "node_modules"
    for name in ("vega", "vega-lite"):
        (modules / name).mkdir(parents=True)
        shutil.copy(assets / name / f"{name}.js", modules / name / "index.js")
    (tmp_path / "node" / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "node" / "render.js").write_text(
        "const vega = require('vega'), vl = require('vega-lite');\n"
        "const view = new vega.View(vega.parse(vl.compile(require('./spec.json')).spec), {renderer: 'none'});\n"
        "view.toSVG().then(svg => console.log([...new Set(svg.match(/stroke=\"#[0-9a-f]{6}\"/g))].join(' ')));\n")
    strokes = _run([node, "render.js"], tmp_path / "node").stdout.split()
    assert sorted(strokes) == ['stroke="#1f77b4"', 'stroke="#ff7f0e"'], strokes
