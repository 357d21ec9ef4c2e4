"""DVC end to end (tests/driverkit.py): the matrix both drivers share, then the project shared as
the README says (dvc add, a local remote, push, clone, pull, repro: nothing reruns), its metrics
and plots, and two experiments whose `dvc exp show --only-changed` fits 160 columns."""
from __future__ import annotations

import filecmp
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from checkout import ROOT
from driverkit import (ALL, BIN, CORPUS, MODEL_FILES, both_drivers_matrix, dvc, expect, from_stage, git, run,
                       set_value, tiny_project)

pytestmark = pytest.mark.slow


def test_dvc_reruns_exactly_what_changed_and_shares_the_project(tmp_path):
    work = tiny_project(tmp_path / "repo")
    both_drivers_matrix(dvc, work)
    set_value(work, "tokenizer.vocab_size", 600)
    expect(dvc, work, "a tokenizer value", from_stage("tokenize"))
    assert {p.name for p in (work / "models/final").iterdir()} == MODEL_FILES
    _metrics_and_plots(work, tmp_path)
    _collaborator(work, tmp_path)
    _experiments(work)


# ---- DVC: metrics, plots, a collaborator, experiments --------------------------------------------

def _readme_git_add() -> list[str]:
    """The README's list of files to commit after `dvc add data/raw` and a run."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    line = re.search(r"^git add (.+?)(?: && |$)", readme, re.M)
    assert line, "README: no `git add ...` line"
    return line.group(1).split()


def _metrics_and_plots(work: Path, tmp_path: Path) -> None:
    """dvc metrics show: the headline numbers and what cleaning kept. Plots: the PNGs as images, the loss curves
    coloured by split; the page is never committed."""
    metrics = json.loads(run([BIN / "dvc", "metrics", "show", "--json"], work).stdout)
    assert set(metrics[""]["data"]) == {"reports/clean.json", "reports/metrics.json"}
    numbers = metrics[""]["data"]["reports/metrics.json"]["data"]
    assert numbers and all(isinstance(v, float) for v in numbers.values()), numbers
    cleaned = metrics[""]["data"]["reports/clean.json"]["data"]
    assert 0 < cleaned["documents_out"] <= cleaned["documents_in"], cleaned

    run([BIN / "dvc", "plots", "show"], work)
    page = (work / "dvc_plots" / "index.html").read_text()
    assert "vega-embed.js" in page and sorted(p.name for p in (work / "dvc_plots" / "static").iterdir()) == \
        ["workspace_reports_plots_estimate_vs_actual.png", "workspace_reports_plots_loss.png"]
    assert "dvc_plots" not in git(work, "status", "--porcelain", "--untracked-files=all")
    plots = json.loads(run([BIN / "dvc", "plots", "show", "--json"], work).stdout)
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
    run([BIN / "dvc", "add", CORPUS], work)
    run([BIN / "dvc", "remote", "add", "-d", "storage", remote], work)
    run([BIN / "dvc", "push"], work)
    listed = [p.replace("data/raw", CORPUS) for p in _readme_git_add()]
    git(work, "add", *listed, "params.yaml")   # params.yaml: the tiny values this test runs with
    git(work, "commit", "-qm", "corpus v1")
    assert git(work, "status", "--porcelain", "--untracked-files=all") == "", \
        "the README's `git add` list leaves files to commit"
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", work, clone], tmp_path)
    run([BIN / "dvc", "pull"], clone)
    ran, _ = dvc(clone)
    assert ran == [], f"a collaborator's `dvc pull && dvc repro` reran {ran}"
    for path in ("data/tokens/train.bin", "data/tokens/val.bin", "data/tokenizer/tokenizer.json",
                 *(f"models/final/{name}" for name in sorted(MODEL_FILES))):
        assert filecmp.cmp(work / path, clone / path, shallow=False), path


def _experiments(work: Path) -> None:
    """Two experiments: their headline metrics side by side, numbers in every cell, 160 columns."""
    names = []
    for lr in (0.001, 0.003):
        out = run([BIN / "dvc", "exp", "run", "-S", f"train.lr={lr}"], work).stdout
        names += re.findall(r"Ran experiment\(s\): (\S+)", out)
    assert len(names) == 2, names
    table = run([BIN / "dvc", "exp", "show", "--only-changed", "--no-pager"], work, COLUMNS="1000").stdout
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
    diff = run([BIN / "dvc", "metrics", "diff", *names], work).stdout
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
    strokes = run([node, "render.js"], tmp_path / "node").stdout.split()
    assert sorted(strokes) == ['stroke="#1f77b4"', 'stroke="#ff7f0e"'], strokes
