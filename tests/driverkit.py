"""The real `snakemake` and the real `dvc` over every stage on tiny params, in a throwaway
copy of the repository (tests/checkout.py): what tests/test_drivers_snakemake.py and
tests/test_drivers_dvc.py share.

Each driver's matrix is one sequence of runs over one checkout: for every change a user makes,
the exact stages that reran, in that one run, and then a run that does nothing. The changes both
drivers see (params.yaml, the corpus, the budget gate) expect the same stages under both
(both_drivers_matrix); each driver's own habits follow in its test file.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from checkout import ROOT, TINY, copy_checkout
from pipeline.core import params as params_module
from pipeline.registry import STAGES

BIN = Path(sys.executable).parent
ALL = [stage.name for stage in STAGES]   # in the registry's order, which is the DAG's
CORPUS = "data/demo"   # paths.corpus of params/demo.yaml
# what save_pretrained writes: no driver may add a file to the model a user loads
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json"}


def driver_env() -> dict[str, str]:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    env.pop("PYTHONPATH", None)
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env={**driver_env(), **env}, capture_output=True,
                            text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def tiny_project(dest: Path) -> Path:
    """A copy of the repository at `dest` whose params.yaml is the demo overlay plus tiny sizes,
    with a small demo corpus: DVC reads params.yaml only, so the tiny values must live there."""
    merged = params_module.merge_files([ROOT / "params.yaml", ROOT / "params" / "demo.yaml", TINY])
    copy_checkout(dest)
    (dest / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False, allow_unicode=True))
    run([sys.executable, "-m", "pipeline", "demo-corpus", "--size-mb", "0.4"], dest)
    return dest


def git(work: Path, *args: str) -> str:
    return run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], work).stdout


# ---- the drivers ---------------------------------------------------------------------------------

def snakemake(work: Path, *args: str, check: bool = True) -> tuple[list[str], subprocess.CompletedProcess]:
    """The stages one `snakemake` run ran (not its STAGE_params jobs, which write the values)."""
    result = run([BIN / "snakemake", "--cores", "2", *args], work, check)
    jobs = re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", result.stdout + result.stderr, re.M)
    return [j for j in jobs if j != "all" and not j.endswith("_params")], result


def dvc(work: Path, *args: str, check: bool = True) -> tuple[list[str], subprocess.CompletedProcess]:
    result = run([BIN / "dvc", "repro", *args], work, check)
    return re.findall(r"Running stage '(\w+)'", result.stdout), result


def from_stage(name: str) -> list[str]:
    """The stage `name` and every stage after it."""
    return ALL[ALL.index(name):]


def up_to(name: str) -> list[str]:
    """Every stage before `name`, and `name`."""
    return ALL[:ALL.index(name) + 1]


def expect(driver, work: Path, what: str, expected: list[str], *args: str) -> str:
    """The first run's output, once it reran exactly `expected` and the next run nothing."""
    ran, first = driver(work, *args)
    assert ran == expected, f"{what}: {driver.__name__} reran {ran}, expected {expected}"
    again, _ = driver(work, *args)
    assert again == [], f"{what}: the next {driver.__name__} run reran {again}, expected nothing"
    return first.stdout + first.stderr


# ---- the changes ---------------------------------------------------------------------------------

def set_value(work: Path, key: str, value) -> None:
    path = work / "params.yaml"
    data = yaml.safe_load(path.read_text())
    section, leaf = key.split(".")
    data[section][leaf] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{path} no longer holds {old}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def later(path: Path) -> None:
    """A new modification time, the content unchanged."""
    stamp = time.time() + 2
    os.utime(path, (stamp, stamp))


def refused(driver, work: Path, ran_before_refusal: list[str]) -> str:
    set_value(work, "cost.budget_hours", 1e-9)
    ran, result = driver(work, check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and ran == ran_before_refusal, out
    assert "budget" in out.lower() and "reports/cost.md" in out, out
    # the refusal stays readable where the message points, whatever the driver deletes
    assert "budget" in (work / "reports" / "cost.md").read_text().lower()
    return out


def beyond_the_val_split(driver, work: Path) -> None:
    """A reference text or an lm-eval task named, a reference text edited: evaluate reruns alone."""
    text = work / "eval/flores/azj_Latn.devtest"
    text.parent.mkdir()
    text.write_text("Bakı şəhəri Xəzər dənizinin sahilindədir.\n", encoding="utf-8")
    set_value(work, "evaluate.reference_texts", {"flores_azj": "flores/azj_Latn.devtest"})
    expect(driver, work, "a reference text named", ["evaluate"])
    later(text)
    assert driver(work)[0] == [], "a reference text touched, its content unchanged"
    edit(text, "Bakı", "Gəncə")
    expect(driver, work, "a reference text edited", ["evaluate"])
    first = json.loads((work / "reports/metrics.json").read_text())["flores_azj_bits_per_byte"]
    (work / "eval/piqa.csv").write_text("goal,sol1,sol2,label\nBake bread,use heat,use ice,0\n", encoding="utf-8")
    set_value(work, "evaluate.tasks", {"piqa": "piqa.csv"})
    expect(driver, work, "an lm-eval task named", ["evaluate"])
    metrics = json.loads((work / "reports/metrics.json").read_text())
    assert metrics["flores_azj_bits_per_byte"] == first and metrics["piqa_acc"] in (0.0, 1.0)
    # removed again: the later runs would each spend ~15 s on lm-eval, and the project is shared
    # as the README says (its `git add` list) with no evaluation data
    set_value(work, "evaluate.tasks", {})
    set_value(work, "evaluate.reference_texts", {})
    shutil.rmtree(text.parent)
    (work / "eval/piqa.csv").unlink()
    expect(driver, work, "the text and the task removed", ["evaluate"])


def both_drivers_matrix(driver, work: Path) -> None:
    # The gate on a fresh checkout: the stages before it run, estimate refuses, nothing trains.
    refused(driver, work, up_to("estimate"))
    assert not (work / "reports/train.json").exists()
    assert not (work / "models/final").exists() and not (work / "checkpoints").exists()
    set_value(work, "cost.budget_hours", 1.0)
    out = expect(driver, work, "the budget fixed", ["estimate", "train", "evaluate"])
    # the stages get `auto` as written (Snakemake's overlay too) and say what it became and why
    assert "train.lr auto: 0.002 = min(0.002, 0.0006 x 768/64)" in out
    assert {p.name for p in (work / "models/final").iterdir()} == MODEL_FILES

    corpus = work / CORPUS
    later(corpus)
    assert driver(work)[0] == [], "the corpus directory touched"
    later(corpus / "en.txt")
    assert driver(work)[0] == [], "a corpus file touched, its content unchanged"
    with open(corpus / "en.txt", "a", encoding="utf-8") as fh:
        fh.write("\n\nOne more document, appended to the corpus.\n")
    expect(driver, work, "a document appended to a corpus file", ALL)
    set_value(work, "clean.boilerplate", True)   # the demo's repeated headings go: a new cleaned corpus
    expect(driver, work, "a clean value", from_stage("clean"))

    set_value(work, "evaluate.max_new_tokens", 9)
    expect(driver, work, "an evaluate value", ["evaluate"])
    beyond_the_val_split(driver, work)
    set_value(work, "train.patience", 7)
    expect(driver, work, "a train value", ["train", "evaluate"])
    # One key per set of stages that read it: which keys a stage reads is the registry's, held by
    # each stage's view of params (tests/test_view.py) and tests/test_declared_params.py; here, that
    # the driver reruns exactly the stages declaring a changed key.
    set_value(work, "train.lr", 0.001)   # the run's identity: a run is never priced from its own speed
    expect(driver, work, "train.lr", ["estimate", "train", "evaluate"])

    # Code and catalog edits rerun the stages whose outputs they can change, never train: the
    # plan carries what train needs of the catalog, and the run is held against the estimate it
    # was gated with (train.json), so a later estimate changes no other stage's output.
    trained = (work / "reports/train.json").read_bytes()
    edit(work / "pipeline/cost/hardware.yaml", "usd_per_hour_on_demand: 0.526", "usd_per_hour_on_demand: 0.6")
    edit(work / "pipeline/cost/hardware.yaml", "spot_reclaims_per_month: 0.20", "spot_reclaims_per_month: 0.30")
    expect(driver, work, "a catalog price and reclaim rate", ["estimate"])
    edit(work / "pipeline/cost/render.py", '"## Sources"', '"## Where each figure comes from"')
    expect(driver, work, "the cost report's wording", ["estimate"])
    edit(work / "pipeline/reports/plots.py", '"tab:red"', '"tab:orange"')
    expect(driver, work, "a plot colour", ["evaluate"])
    assert (work / "reports/train.json").read_bytes() == trained
    git(work, "commit", "-qam", "the code edits above, as a developer commits them")

    # The gate after training: the refusal keeps what was trained, and the fix, a budget change
    # like any other, reruns estimate alone, never train: the plan did not change.
    trained = (work / "reports/train.json").read_bytes()
    refused(driver, work, ["estimate"])
    assert (work / "reports/train.json").read_bytes() == trained
    set_value(work, "cost.budget_hours", 2.0)
    expect(driver, work, "a budget (fixed after a refusal)", ["estimate"])
