"""dvc.yaml, generated from the stage registry (pipeline/stages.py).

    python -m pipeline dag            # rewrite dvc.yaml
    python -m pipeline dag --check    # exit 2 when dvc.yaml is out of date (CI, make lint)

Paths stay DVC templates over params.yaml (`${paths.tokens}`), so moving an output is a
params.yaml edit, not a dvc.yaml edit.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.atomic import write_text
from pipeline.errors import PipelineError
from pipeline.params import Params
from pipeline.stages import STAGES, Stage

DVC_FILE = Path("dvc.yaml")
HEADER = "# Generated from pipeline/stages.py by `python -m pipeline dag`: edit the registry, not this file.\n"

# `dvc plots show`: the data files are written by the evaluate stage.
PLOTS: dict[str, dict[str, Any]] = {
    "loss": {"title": "Train and validation loss", "x": "tokens",
             "y": {"{reports}/plots/loss_train.csv": "loss", "{reports}/plots/loss_val.csv": "loss"}},
    "checkpoints": {"title": "Validation loss across checkpoints", "x": "tokens",
                    "y": {"{reports}/plots/checkpoints.csv": "val_loss"}},
    "estimate_vs_actual": {"title": "Actual against estimate (error %)", "template": "bar_horizontal",
                           "x": "error_pct", "y": {"{reports}/plots/estimate_vs_actual.csv": "quantity"}},
}


def dvc_path(template: str) -> str:
    return re.sub(r"\{(\w+)\}", r"${paths.\1}", template)


def resolve(template: str, params: Params) -> str:
    return template.format(**{k: str(v) for k, v in params.section("paths").items()})


def _stage_entry(stage: Stage) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "cmd": stage.command,
        "deps": [dvc_path(d) for d in stage.all_deps],
        "params": list(stage.params),
    }
    outs: list[Any] = [dvc_path(o) for o in stage.outs]
    outs += [{dvc_path(o): {"cache": False}} for o in stage.small_outs]
    # Resume state must survive `dvc repro`: persist keeps DVC from deleting it before a rerun.
    outs += [{dvc_path(o): {"persist": True, "cache": False}} for o in stage.persistent]
    entry["outs"] = outs
    if stage.metrics:
        entry["metrics"] = [{dvc_path(m): {"cache": False}} for m in stage.metrics]
    return entry


def render() -> str:
    doc = {
        "stages": {stage.name: _stage_entry(stage) for stage in STAGES},
        "plots": [{name: {**spec, "y": {dvc_path(f): col for f, col in spec["y"].items()}}}
                  for name, spec in PLOTS.items()],
    }
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="fail when dvc.yaml is not current")


def main(params: Params, args: argparse.Namespace) -> int:
    text = render()
    if args.check:
        if not DVC_FILE.is_file() or DVC_FILE.read_text(encoding="utf-8") != text:
            raise PipelineError(f"{DVC_FILE} is out of date with pipeline/stages.py: "
                                "run `python -m pipeline dag` and commit the result")
        print(f"{DVC_FILE} is current")
        return 0
    write_text(DVC_FILE, text)
    print(f"wrote {DVC_FILE}")
    return 0
