"""budgetgpt under Snakemake: the stages of pipeline/registry.py (the registry dvc.yaml is generated
from), the same commands, the same params.yaml.

    snakemake --profile t4                                  # a T4 VM (see README: profiles)
    snakemake --profile cpu --configfile params/demo.yaml   # the demo, as `make demo` runs it
    snakemake --config 'train={lr: 0.0003}'                 # override values

The config is params.yaml, each --configfile over it, then --config (and a profile's `config:`)
on top. Each stage's job runs

    python -m pipeline STAGE --params params.yaml --params logs/params/STAGE.yaml

where logs/params/STAGE.yaml holds the values of exactly the keys the stage reads (the registry's
`params`), written by the STAGE_params job when one of them changed. Snakemake's own rerun
triggers do the rest (README: "Only what changed reruns"):

- a changed value reruns STAGE_params (the params trigger; its reason names the key) and so the
  stages that read it, in the same run; no command line ever changes;
- every corpus file is an input: adding or removing one (the input trigger) or editing one (mtime)
  reruns clean and what follows; touching the corpus directory reruns nothing; so are the reference texts and
  task files evaluate.reference_texts and evaluate.tasks name, for evaluate;
- estimate is a checkpoint: once it has run, Snakemake decides again about train, which reads
  the plan it wrote, by content (a small input that is newer but has the checksum Snakemake
  recorded is unchanged), so a budget change never retrains; train is one too, so that
  evaluate is decided only once Snakemake knows whether train reruns (otherwise a price edit,
  which reruns estimate, would rerun evaluate for a train job that never ran);
- the estimate report (reports/cost.md) is declared as a log: Snakemake deletes a failed job's
  outputs but never its logs, so the budget gate's refusal stays readable.

Interrupts keep the step (README: "Ctrl-C, and how to resume"). A job's command is `exec python -m
pipeline ... --log logs/STAGE.log`: no `| tee` that the same Ctrl-C kills (the stage writes its
own log), and the job's process is the stage itself. Each job starts in its own session, so a
Ctrl-C on the terminal reaches Snakemake alone, and Snakemake (onstart, below) sends every SIGINT
and SIGTERM it gets to its running jobs once and exits when they have: train finishes the step,
checkpoints and exits 130/143; the next `snakemake` resumes from that checkpoint. Left alone,
Snakemake 9 lets a job run to its end on SIGINT or SIGTERM, and after SIGINT leaves its outputs
marked incomplete.
"""
import json
import os
import re
import signal
import sys
from pathlib import Path

import psutil
import yaml
from snakemake.shell import shell
from snakemake.utils import update_config

sys.path.insert(0, workflow.basedir)
from pipeline.core import params as params_module
from pipeline.data.corpus import Corpus
from pipeline.core.errors import PipelineError
from pipeline.registry import CORPUS, EVAL_DATA, STAGES, params_of

configfile: "params.yaml"

# Only used with `--sdm apptainer` (otherwise Snakemake ignores it): every job runs in the CUDA
# image built from docker/ and held by the local Docker daemon. See docker/README.md.
container: "docker-daemon://budgetgpt:cuda"


class _ConfigValues(yaml.SafeLoader):
    """YAML as in a params file, plus Python's None: a profile's `config:` reaches Snakemake as
    Python reprs ("cost={'usd_per_hour': None}")."""


_ConfigValues.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^None$"), ["N"])


def typed_config_args():
    """--config (and a profile's config:) with YAML types. Snakemake reads these values as text
    ("null", "9") apart from a top-level number or boolean; a params file would not."""
    overrides = {}
    for entry in workflow.config_settings.config_args or []:
        key, _, raw = entry.partition("=")
        try:
            value = yaml.load(raw, Loader=_ConfigValues) if raw else None
        except yaml.YAMLError:
            value = raw
        update_config(overrides, {key: value})
    return overrides


PARAM_FILES = ["params.yaml", *(os.path.relpath(f) for f in workflow.overwrite_configfiles)]
_merged = params_module.merge_files(PARAM_FILES)
update_config(_merged, typed_config_args())
try:  # validated when the workflow is parsed, before any job starts
    WRITTEN = params_module.as_written(_merged, source=", ".join(PARAM_FILES + ["--config"]))
    PARAMS = WRITTEN.resolved()
except PipelineError as exc:
    raise WorkflowError(str(exc)) from None
PATHS = {key: str(value) for key, value in PARAMS.section("paths").items()}
VALUES_FILE = "logs/params/{stage}.yaml"


def stage_values(stage):
    """Every value the stage reads, one "dotted.key: JSON" line each: the `params` of its
    STAGE_params rule, so that Snakemake's rerun reason names the keys that changed. As written:
    an `auto` stays `auto`, and the stage says what it resolved to and why."""
    flat = params_module.flatten(params_of(stage, WRITTEN))
    return [f"{key}: {json.dumps(value, sort_keys=True, ensure_ascii=False)}" for key, value in flat.items()]


def write_values(path, lines, log):
    """The stage's params overlay (YAML), from stage_values' lines."""
    overlay = {}
    for line in lines:
        key, _, value = line.partition(": ")
        *parents, leaf = key.split(".")
        node = overlay
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = json.loads(value)
    Path(path).write_text(yaml.safe_dump(overlay, sort_keys=True, allow_unicode=True), encoding="utf-8")
    Path(log).write_text(f"{path}: the {len(lines)} values its stage reads\n", encoding="utf-8")


def corpus_files():
    """Every file of the corpus, as the clean stage finds them (pipeline/data/corpus.py): the files
    of a directory or glob, one file, or every file of a `datasets` save_to_disk directory."""
    try:
        sources = Corpus(PARAMS.paths.corpus, PARAMS.data).sources
    except PipelineError:
        return [PATHS["corpus"]]   # missing or empty: Snakemake or the clean stage says so
    files = []
    for fmt, source in sources:
        if fmt != "datasets":
            files.append(str(source))
            continue
        for root, dirs, names in os.walk(source):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
    return files


def eval_files():
    """The files evaluate.reference_texts and evaluate.tasks name under paths.eval_data (a task's
    directory: every file in it), so that editing one reruns evaluate. A missing one is left to
    the stage, which names its key."""
    files = []
    for relative in [*PARAMS.evaluate.reference_texts.values(), *PARAMS.evaluate.tasks.values()]:
        path = PARAMS.paths.eval_data / relative
        if path.is_file():
            files.append(str(path))
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
    return files


# A stage whose output a later stage reads by content is a checkpoint (see the docstring).
PRODUCER = {artifact.name: stage for stage in STAGES for artifact in stage.outputs}
CHECKPOINTS = {PRODUCER[a.name].name for stage in STAGES for a in stage.inputs if a.by_content}


def by_content(stage):
    """An input function: the stage's by-content inputs, once their checkpoint has run."""
    artifacts = [a for a in stage.inputs if a.by_content]

    def inputs(wildcards):
        for artifact in artifacts:
            getattr(checkpoints, PRODUCER[artifact.name].name).get()
        return [p for artifact in artifacts for p in artifact.paths(PATHS)]

    return inputs


def inputs(stage):
    files = {"values": VALUES_FILE.format(stage=stage.name),
             "code": [d for d in stage.all_deps if d.startswith("pipeline/")]}
    for artifact in stage.inputs:
        if artifact is CORPUS:
            files[artifact.name] = corpus_files()
        elif artifact is EVAL_DATA:
            files[artifact.name] = eval_files()
        elif artifact.by_content:
            files[artifact.name] = by_content(stage)
        else:
            files[artifact.name] = artifact.paths(PATHS)
    return files


def declared_outputs(stage):
    """Its outputs, bar resume state (Snakemake would delete it before a rerun and after a failed
    job) and what must outlive a failure (a log)."""
    return [a for a in stage.outputs if a.role != "persistent" and not a.kept_on_failure]


def outputs(stage):
    """A directory is declared by its files where the registry names them (no marker file)."""
    return {a.name: a.paths(PATHS) if a.files or not a.directory else directory(a.paths(PATHS)[0])
            for a in declared_outputs(stage)}


def logs(stage):
    kept = {a.name: a.paths(PATHS)[0] for a in stage.outputs if a.kept_on_failure}
    return {"job": f"logs/{stage.name}.log", **kept}


# Every core of the machine, which Snakemake caps at --cores where one is given (a local run) and
# at the cores a cluster job was allocated inside it; a cluster executor has no --cores to read.
STAGE_THREADS = os.cpu_count() or 1
COMMAND = "exec python -m pipeline {params.stage} --params params.yaml --params {input.values} --log {log.job}"


def gpus(stage):
    """The GPUs a job holds: train runs as cost.num_devices processes (pipeline/core/launch.py)."""
    return PARAMS.cost.num_devices if stage.distributed else int(stage.gpu)


def forward_signals():
    """SIGINT and SIGTERM to Snakemake reach its running jobs (its child processes); then Snakemake
    exits as on SIGTERM, once they have ended: a job that failed is handled as any failed job (its
    outputs removed, nothing left marked incomplete), which SIGINT's own cancel skips.

    Snakemake starts a job's shell with subprocess.Popen(**shell._process_args) (snakemake/shell.py,
    pinned in requirements.lock): a session of its own keeps the terminal's Ctrl-C from reaching
    the job directly, so it gets each signal once, from here."""
    shell._process_args["start_new_session"] = True
    graceful = signal.getsignal(signal.SIGTERM)  # the scheduler's: start no job, wait for the running ones

    def forwarding(signum, frame):
        for job in psutil.Process().children():
            try:
                job.send_signal(signum)
            except psutil.Error:  # ended meanwhile
                pass
        if callable(graceful):
            graceful(signum, frame)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forwarding)


onstart:
    # after the scheduler set its SIGTERM handler, which forwarding keeps. Jobs on a cluster
    # (--executor slurm) are no children of this process: SIGINT keeps cancelling them there.
    if workflow.local_exec:
        forward_signals()


rule all:
    input:
        # every stage's outputs: the model too, which no stage reads as a declared input
        [p for stage in STAGES for a in declared_outputs(stage) for p in a.paths(PATHS)],
    default_target: True


for stage in STAGES:

    # Writes logs/params/STAGE.yaml, and reruns (the params trigger) exactly when a value the
    # stage reads changed, wherever it was set: so does the stage, whose input it is.
    rule:
        name:
            f"{stage.name}_params"
        output:
            VALUES_FILE.format(stage=stage.name),
        params:
            *stage_values(stage),
        log:
            f"logs/params/{stage.name}.log",
        localrule: True
        run:
            write_values(output[0], params, log[0])


for stage in STAGES:
    if stage.name in CHECKPOINTS:

        checkpoint:
            name:
                stage.name
            input:
                **inputs(stage),
            output:
                **outputs(stage),
            log:
                **logs(stage),
            params:
                stage=stage.name,
            # Snakemake sets OMP_NUM_THREADS (and the BLAS thread counts) to a job's threads, 1 unless
            # declared: torch would train on one core. Every stage may use every core it is given.
            threads:
                STAGE_THREADS
            resources:
                gpu=gpus(stage),
            shell:
                COMMAND

    else:

        rule:
            name:
                stage.name
            input:
                **inputs(stage),
            output:
                **outputs(stage),
            log:
                **logs(stage),
            params:
                stage=stage.name,
            # Snakemake sets OMP_NUM_THREADS (and the BLAS thread counts) to a job's threads, 1 unless
            # declared: torch would train on one core. Every stage may use every core it is given.
            threads:
                STAGE_THREADS
            resources:
                gpu=gpus(stage),
            shell:
                COMMAND
