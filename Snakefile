"""budgetgpt under Snakemake: the stages of pipeline/stages.py (the registry dvc.yaml is generated
from), the same commands, the same params.yaml.

    snakemake --profile t4                                  # a T4 VM (see README: profiles)
    snakemake --profile cpu --configfile params/demo.yaml   # the demo, as `make demo` runs it
    snakemake --config 'train={lr: 0.0003}'                 # override values

The Snakemake config is params.yaml with any --configfile layered over it and --config on top;
every job receives the same files and overrides, so the stages see exactly this config.
"""
import json
import os
import shlex
import sys

sys.path.insert(0, workflow.basedir)
from pipeline import params as params_module
from pipeline.errors import PipelineError
from pipeline.stages import STAGES, params_of

configfile: "params.yaml"

# Only used with `--sdm apptainer` (otherwise Snakemake ignores it): every job runs in the CUDA
# image built from docker/ and held by the local Docker daemon. See docker/README.md.
container: "docker-daemon://budgetgpt:cuda"

# relative paths: the same checkout mounted elsewhere (a container) must not look changed
PARAM_FILES = ["params.yaml", *(os.path.relpath(f) for f in workflow.overwrite_configfiles)]
_from_files = params_module.flatten(params_module.merge_files(PARAM_FILES))
OVERRIDES = [f"{key}={json.dumps(value)}" for key, value in params_module.flatten(config).items()
             if _from_files.get(key, object()) != value]
try:  # validated when the workflow is parsed, before any job starts
    PARAMS = params_module.from_dict(config, source=", ".join(PARAM_FILES + ["--config"]))
except PipelineError as exc:
    raise WorkflowError(str(exc)) from None
PATHS = {key: str(value) for key, value in PARAMS.section("paths").items()}
CLI_ARGS = " ".join([f"--params {shlex.quote(f)}" for f in PARAM_FILES]
                    + [f"--set {shlex.quote(o)}" for o in OVERRIDES])


def path(template):
    return template.format(**PATHS)


def declared(template):
    resolved = path(template)
    return resolved if "." in resolved.rsplit("/", 1)[-1] else directory(resolved)


rule all:
    input:
        [path(m) for m in STAGES[-1].metrics],
        path("{reports}/summary.md"),
    default_target: True


for stage in STAGES:

    rule:
        name:
            stage.name
        input:
            [ancient(path(d)) if d in stage.content_deps else path(d) for d in stage.all_deps],
        output:
            [declared(o) for o in stage.outs + stage.small_outs + stage.metrics],
        params:
            # the rerun trigger: Snakemake reruns a rule when the values it reads change
            values=json.dumps(params_of(stage, PARAMS), sort_keys=True),
            command=f"{stage.command} {CLI_ARGS}",
        resources:
            gpu=int(stage.gpu),
        log:
            f"logs/{stage.name}.log",
        shell:
            "{params.command} 2>&1 | tee {log}"
