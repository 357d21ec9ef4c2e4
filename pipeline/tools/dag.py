"""dvc.yaml, generated from the stage registry (pipeline/registry.py).

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

from pipeline.reports import plots
from pipeline.core.atomic import write_text
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params
from pipeline.registry import STAGES, Stage

DVC_FILE = Path("dvc.yaml")
HEADER = "# Generated from pipeline/registry.py by `python -m pipeline dag`: edit the registry, not this file.\n"

# `dvc plots show` (pipeline/reports/plots.py writes the files): the evaluate stage's PNGs as image plots,
# which render anywhere, and the loss curves as data, train and val in two colours
# (.dvc/plots/loss_by_split.json: DVC's own templates colour by revision only). No plot of the
# checkpoints: with evaluate.checkpoints: best_and_final it holds one or two points (they are
# drawn on loss.png).
PLOTS: dict[str, dict[str, Any]] = {
    "loss": {"title": "Train and validation loss", "template": "loss_by_split", "x": "tokens",
             "x_label": "tokens seen", "y_label": "cross-entropy (nats/token)",
             "y": {f"{{reports}}/plots/{plots.LOSS_TRAIN_CSV}": "loss",
                   f"{{reports}}/plots/{plots.LOSS_VAL_CSV}": "loss"}},
    "estimate_vs_actual": {"title": "Actual against estimate (error %)", "template": "bar_horizontal",
                           "x": "error_pct", "y": {f"{{reports}}/plots/{plots.ESTIMATE_CSV}": "quantity"}},
}
IMAGES = (f"{{reports}}/plots/{plots.LOSS_PNG}", f"{{reports}}/plots/{plots.ESTIMATE_PNG}")


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
    # data: in the DVC cache, pushed to the remote; reports: committed to git (cache: false).
    # Resume state (checkpoints) is no output at all: DVC would otherwise delete it before a
    # rerun (or need `persist`), and a clone without it would rerun the stage.
    outs: list[Any] = [dvc_path(o) for o in stage.outs]
    outs += [{dvc_path(o): {"cache": False}} for o in stage.small_outs]
    entry["outs"] = outs
    if stage.metrics:
        entry["metrics"] = [{dvc_path(m): {"cache": False}} for m in stage.metrics]
    return entry


def render() -> str:
    doc = {
        "stages": {stage.name: _stage_entry(stage) for stage in STAGES},
        "plots": [dvc_path(image) for image in IMAGES]
                 + [{name: {**spec, "y": {dvc_path(f): col for f, col in spec["y"].items()}}}
                    for name, spec in PLOTS.items()],
    }
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="fail when dvc.yaml is not current")


def main(params: Params, args: argparse.Namespace) -> int:
    text = render()
    if args.check:
        if not DVC_FILE.is_file() or DVC_FILE.read_text(encoding="utf-8") != text:
            raise PipelineError(f"{DVC_FILE} is out of date with pipeline/registry.py: "
                                "run `python -m pipeline dag` and commit the result")
        print(f"{DVC_FILE} is current")
        return 0
    write_text(DVC_FILE, text)
    print(f"wrote {DVC_FILE}")
    return 0
