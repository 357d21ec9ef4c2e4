"""dvc.yaml and Snakemake's rules (rules/stages.smk), generated from the stage registry
(pipeline/registry.py).

    python -m pipeline dag            # rewrite dvc.yaml and rules/stages.smk
    python -m pipeline dag --check    # exit 2 when either is out of date (CI, make lint)

Paths stay templates over params.paths, DVC's (`${paths.tokens}`) and the Snakefile's
(`f"{paths.tokens}/train.bin"`), so moving an output is a params.yaml edit, not an edit of either.
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
from pipeline.registry import CORPUS, EVAL_DATA, STAGES, Artifact, Stage

DVC_FILE = Path("dvc.yaml")
RULES_FILE = Path("rules/stages.smk")
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


# ---- Snakemake: rules/stages.smk, included by the Snakefile --------------------------------------
# The Snakefile defines what the rules name: PARAMS (pipeline/tools/snakemake_support.py:
# WorkflowParams), `paths` (its params.paths), THREADS, after() and write_values().

VALUES_FILE = "logs/params/{stage}.yaml"
RULES_HEADER = HEADER + """\
# Before each stage's rule, its STAGE_params rule writes the values the stage reads
# (logs/params/STAGE.yaml); its params are those values, so a changed one reruns it and then the
# stage. A stage whose output a later stage reads by content is a checkpoint. PARAMS, paths,
# THREADS, after() and write_values() come from the Snakefile. See its docstring.
"""


def _path(template: str) -> str:
    """A path template as a Python f-string over the Snakefile's `paths`."""
    if re.fullmatch(r"\{\w+\}", template):
        return f"paths.{template[1:-1]}"
    return 'f"' + re.sub(r"\{(\w+)\}", r"{paths.\1}", template) + '"'


def _list(entries: list[str]) -> str:
    """A list in a rule's section: one entry a line where it is longer than two."""
    if len(entries) <= 2:
        return "[" + ", ".join(entries) + "]"
    return "[\n" + "".join(f"            {entry},\n" for entry in entries) + "        ]"


def _paths(artifact: Artifact) -> str:
    """The files a file-tracking driver declares: the file, or a directory's named files."""
    if not artifact.files:
        return _path(artifact.template)
    return _list([_path(f"{artifact.template}/{name}") for name in artifact.files])


def _producer(artifact: Artifact) -> Stage:
    return next(stage for stage in STAGES if artifact in stage.outputs)


def _input(artifact: Artifact) -> str:
    if artifact is CORPUS:
        return "PARAMS.corpus_files()"
    if artifact is EVAL_DATA:
        return "PARAMS.eval_files()"
    if artifact.by_content:   # read once its checkpoint has run (snakemake_support.after)
        files = [_path(f"{artifact.template}/{name}") for name in artifact.files] or [_path(artifact.template)]
        return f"after(checkpoints.{_producer(artifact).name}, {', '.join(files)})"
    return _paths(artifact)


def _declared_outputs(stage: Stage) -> list[Artifact]:
    """Its outputs, bar resume state (Snakemake would delete it before a rerun and after a failed
    job) and what must outlive a failure (a log)."""
    return [a for a in stage.outputs if a.role != "persistent" and not a.kept_on_failure]


def _output(artifact: Artifact) -> str:
    """A directory is declared by its files where the registry names them (no marker file)."""
    return _paths(artifact) if artifact.files or not artifact.directory else f"directory({_path(artifact.template)})"


def _section(name: str, entries: list[str]) -> list[str]:
    return [f"    {name}:", *(f"        {entry}," for entry in entries)]


def _params_rule(stage: Stage) -> list[str]:
    return [f"rule {stage.name}_params:",
            *_section("output", [f'"{VALUES_FILE.format(stage=stage.name)}"']),
            *_section("params", [f'*PARAMS.values("{stage.name}")']),
            *_section("log", [f'"logs/params/{stage.name}.log"']),
            "    localrule: True",
            "    run:",
            "        write_values(output[0], params, log[0])"]


def _stage_rule(stage: Stage, checkpoint: bool) -> list[str]:
    code = [f'"{d}"' for d in stage.all_deps if d.startswith("pipeline/")]
    inputs = [f'values="{VALUES_FILE.format(stage=stage.name)}"',
              f"code={_list(code)}",
              *(f"{a.name}={_input(a)}" for a in stage.inputs)]
    logs = [f'job="logs/{stage.name}.log"',
            *(f"{a.name}={_path(a.template)}" for a in stage.outputs if a.kept_on_failure)]
    # train runs as cost.num_devices processes (pipeline/core/launch.py), each holding a GPU
    gpus = "PARAMS.resolved.cost.num_devices" if stage.distributed else str(int(stage.gpu))
    command = f"exec {stage.command} --params params.yaml --params {{input.values}} --log {{log.job}}"
    return [f"{'checkpoint' if checkpoint else 'rule'} {stage.name}:",
            *_section("input", inputs),
            *_section("output", [f"{a.name}={_output(a)}" for a in _declared_outputs(stage)]),
            *_section("log", logs),
            "    threads: THREADS",
            *_section("resources", [f"gpu={gpus}"]),
            "    shell:",
            f'        "{command}"']


def render_rules() -> str:
    by_content = {_producer(a).name for stage in STAGES for a in stage.inputs if a.by_content}
    blocks = [block for stage in STAGES
              for block in (_params_rule(stage), _stage_rule(stage, stage.name in by_content))]
    # a rule in an included file cannot be the default target: the Snakefile's `rule all` is
    blocks.append(["# Every stage's outputs, the Snakefile's `rule all`: the model too, which no stage reads.",
                   "STAGE_OUTPUTS = [", *(f"    rules.{stage.name}.output," for stage in STAGES), "]"])
    return RULES_HEADER + "".join("\n\n" + "\n".join(block) + "\n" for block in blocks)


def generated() -> dict[Path, str]:
    """Each generated file and the text it must hold."""
    return {DVC_FILE: render(), RULES_FILE: render_rules()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="fail when dvc.yaml or rules/stages.smk is not current")


def main(params: Params, args: argparse.Namespace) -> int:
    for path, text in generated().items():
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                raise PipelineError(f"{path} is out of date with pipeline/registry.py: "
                                    "run `python -m pipeline dag` and commit the result")
            print(f"{path} is current")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, text)
            print(f"wrote {path}")
    return 0
