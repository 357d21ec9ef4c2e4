"""budgetgpt under Snakemake: the stages of pipeline/registry.py as plain rules in rules/stages.smk,
generated from the registry like dvc.yaml (`python -m pipeline dag`; `make lint` checks both are
current), with the same commands and the same params.yaml.

    snakemake --profile t4                                  # a T4 VM (see README: profiles)
    snakemake --profile cpu --configfile params/demo.yaml   # the demo, as `make demo` runs it
    snakemake --config 'train={lr: 0.0003}'                 # override values

The config is params.yaml, each --configfile over it, then --config (and a profile's `config:`)
on top, validated before any job starts; --config values keep their YAML types. Each stage's job
runs

    exec python -m pipeline STAGE --params params.yaml --params logs/params/STAGE.yaml --log logs/STAGE.log

where logs/params/STAGE.yaml holds the values of exactly the keys the stage reads (the registry's
`params`), written by the STAGE_params rule. Snakemake's own rerun triggers do the rest (README:
"Only what changed reruns"):

- a changed value reruns STAGE_params (the params trigger; its reason names the key) and so the
  stages that read it, in the same run; no command line ever changes;
- every corpus file is an input: adding or removing one (the input trigger) or editing one (mtime)
  reruns clean and what follows; touching the corpus directory reruns nothing; so are the
  reference texts and task files evaluate.reference_texts and evaluate.tasks name, for evaluate;
- estimate is a checkpoint: once it has run, Snakemake decides again about train, which reads
  the plan it wrote, by content (a small input that is newer but has the checksum Snakemake
  recorded is unchanged), so a budget change never retrains; train is one too, so that
  evaluate is decided only once Snakemake knows whether train reruns (otherwise a price edit,
  which reruns estimate, would rerun evaluate for a train job that never ran);
- the estimate report (reports/cost.md) is declared as a log: Snakemake deletes a failed job's
  outputs but never its logs, so the budget gate's refusal stays readable;
- every stage may use every core it is given (THREADS: Snakemake sets OMP_NUM_THREADS to a job's
  threads), and train holds cost.num_devices GPUs (the `gpu` resource), evaluate one.

Interrupts keep the step (README: "Ctrl-C, and how to resume"). A job's command is `exec python -m
pipeline ... --log logs/STAGE.log`: no `| tee` that the same Ctrl-C kills (the stage writes its
own log), and the job's process is the stage itself. Each job starts in its own session, so a
Ctrl-C on the terminal reaches Snakemake alone, and Snakemake (onstart, below) sends every SIGINT
and SIGTERM it gets to its running jobs once and exits when they have: train finishes the step,
checkpoints and exits 130/143; the next `snakemake` resumes from that checkpoint. Left alone,
Snakemake 9 lets a job run to its end on SIGINT or SIGTERM, and after SIGINT leaves its outputs
marked incomplete.

What is not a plain rule lives in pipeline/tools/snakemake_support.py.
"""
import sys

sys.path.insert(0, workflow.basedir)
from pipeline.tools.snakemake_support import THREADS, WorkflowParams, after, forward_signals, write_values


configfile: "params.yaml"


# Only used with `--sdm apptainer` (otherwise Snakemake ignores it): every job runs in the CUDA
# image built from docker/ and held by the local Docker daemon. See docker/README.md.
container: "docker-daemon://budgetgpt:cuda"


PARAMS = WorkflowParams(workflow)
paths = PARAMS.paths


onstart:
    # Jobs on a cluster (--executor slurm) are no children of this process: SIGINT keeps
    # cancelling them there.
    if workflow.local_exec:
        forward_signals()


include: "rules/stages.smk"


rule all:
    input:
        STAGE_OUTPUTS,
    default_target: True
