"""A stage added to the registry alone: in a copy of the repository (tests/driverkit.py), one more
stage is appended to pipeline/registry.py's STAGES, with a module of its own that reads one
declared value (and declares paths.reports, where its report goes: a stage sees its declared
params alone) and writes one report from the clean stage's metrics. `python -m pipeline dag`
(the copy's own) writes dvc.yaml and rules/stages.smk; then `snakemake` and `dvc repro` each run
it with the stage before it, a second run does nothing, and a change of its param reruns it
alone. No test or driver file is edited by hand."""
from __future__ import annotations

import json
import sys

import pytest

from driverkit import dvc, expect, git, run, set_value, snakemake, tiny_project

pytestmark = pytest.mark.slow

STAGE_MODULE = '''"""What cleaning kept, in one line."""
import json
from pathlib import Path

from pipeline.core.params import Params


def run(params: Params, *, clean_metrics: Path, kept_md: Path) -> None:
    counts = json.loads(Path(clean_metrics).read_text(encoding="utf-8"))
    Path(kept_md).write_text(f"{counts['documents_out']} of {counts['documents_in']} documents kept, "
                             f"{params.data.val_fraction} of them for validation\\n", encoding="utf-8")
'''

REGISTRY_TAIL = '''

KEPT_MD = Artifact("kept_md", "{reports}/kept.md", role="report")
STAGES = (*STAGES, Stage(name="kept", help="what cleaning kept, in one line", inputs=(CLEAN_METRICS,),
                         params=("paths.reports", "data.val_fraction"), outputs=(KEPT_MD,)))
'''


def test_a_stage_added_to_the_registry_runs_under_both_drivers(tmp_path):
    work = tiny_project(tmp_path / "repo")
    (work / "pipeline/stages/kept.py").write_text(STAGE_MODULE, encoding="utf-8")
    with open(work / "pipeline/registry.py", "a", encoding="utf-8") as fh:
        fh.write(REGISTRY_TAIL)
    run([sys.executable, "-m", "pipeline", "dag"], work)
    run([sys.executable, "-m", "pipeline", "dag", "--check"], work)
    assert "rule kept:" in (work / "rules/stages.smk").read_text() and "kept:" in (work / "dvc.yaml").read_text()
    git(work, "add", "-A")
    git(work, "commit", "-qm", "a fifth stage")

    # one checkout, one driver after the other: neither reads the other's records
    for driver, fraction in ((snakemake, 0.2), (dvc, 0.3)):
        ran, _ = driver(work, "kept")
        assert ran == ["clean", "kept"], f"{driver.__name__}: {ran}"
        assert driver(work, "kept")[0] == [], f"{driver.__name__}: the second run"
        set_value(work, "data.val_fraction", fraction)   # tokenize's too, which this target leaves out
        expect(driver, work, "the value the new stage reads", ["kept"], "kept")
        counts = json.loads((work / "reports/clean.json").read_text())
        assert (work / "reports/kept.md").read_text() == (f"{counts['documents_out']} of {counts['documents_in']} "
                                                          f"documents kept, {fraction} of them for validation\n")
