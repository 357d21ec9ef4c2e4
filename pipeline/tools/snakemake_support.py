"""What the Snakefile needs beyond plain rules (rules/stages.smk, generated from pipeline/registry.py
by `python -m pipeline dag`): the validated params its rules read, the values each stage reads,
the corpus and evaluation files as inputs, and the two uses of Snakemake internals. Those two are
checked against the pinned Snakemake (requirements.lock) by tests/test_snakemake_support.py:

- typed --config: `workflow.config_settings.config_args`, the `KEY=VALUE` strings as given, which
  Snakemake itself reads as text ("null", "9") below the top level;
- signal forwarding: `snakemake.shell.shell._process_args`, the keyword arguments Snakemake passes
  to subprocess.Popen for a job's shell.

No stage imports this module, so an edit to it reruns no stage (pipeline/registry.py: code_deps).
"""
from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import psutil
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.shell import shell
from snakemake.utils import update_config

from pipeline.core import params as params_module
from pipeline.core.errors import PipelineError
from pipeline.data.corpus import Corpus
from pipeline.registry import by_name, params_of

# Snakemake sets OMP_NUM_THREADS (and the BLAS thread counts) to a job's threads, 1 unless declared:
# torch would train on one core. Every stage may use every core of the machine, which Snakemake caps
# at --cores where one is given (a local run) and at the cores a cluster job was allocated inside it.
THREADS = os.cpu_count() or 1


class _ConfigValues(yaml.SafeLoader):
    """YAML as in a params file, plus Python's None: a profile's `config:` reaches Snakemake as
    Python reprs ("cost={'usd_per_hour': None}")."""


_ConfigValues.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^None$"), ["N"])


def typed_config_args(workflow) -> dict[str, Any]:
    """--config (and a profile's config:) with YAML types, as a params file would give them."""
    overrides: dict[str, Any] = {}
    for entry in workflow.config_settings.config_args or []:
        key, _, raw = entry.partition("=")
        try:
            value = yaml.load(raw, Loader=_ConfigValues) if raw else None
        except yaml.YAMLError:
            value = raw
        update_config(overrides, {key: value})
    return overrides


class WorkflowParams:
    """params.yaml, each --configfile over it, then --config (and a profile's `config:`) on top,
    validated when the workflow is parsed, before any job starts."""

    def __init__(self, workflow) -> None:
        files = ["params.yaml", *(os.path.relpath(f) for f in workflow.overwrite_configfiles)]
        merged = params_module.merge_files(files)
        update_config(merged, typed_config_args(workflow))
        try:
            self.written = params_module.as_written(merged, source=", ".join(files + ["--config"]))
            self.resolved = self.written.resolved()
        except PipelineError as exc:
            raise WorkflowError(str(exc)) from None
        # the rules' paths: f"{paths.tokens}/train.bin"
        self.paths = SimpleNamespace(**{key: str(value) for key, value in self.resolved.section("paths").items()})

    def values(self, stage: str) -> list[str]:
        """Every value the stage reads, one "dotted.key: JSON" line each: the `params` of its
        STAGE_params rule, so that Snakemake's rerun reason names the keys that changed. As written:
        an `auto` stays `auto`, and the stage says what it resolved to and why."""
        flat = params_module.flatten(params_of(by_name(stage), self.written))
        return [f"{key}: {json.dumps(value, sort_keys=True, ensure_ascii=False)}" for key, value in flat.items()]

    def corpus_files(self) -> list[str]:
        """Every file of the corpus, as the clean stage finds them (pipeline/data/corpus.py): the
        files of a directory or glob, one file, or every file of a `datasets` save_to_disk directory."""
        try:
            sources = Corpus(self.resolved.paths.corpus, self.resolved.data).sources
        except PipelineError:
            return [self.paths.corpus]   # missing or empty: Snakemake or the clean stage says so
        files = []
        for fmt, source in sources:
            files += _files_under(source) if fmt == "datasets" else [str(source)]
        return files

    def eval_files(self) -> list[str]:
        """The files evaluate.reference_texts and evaluate.tasks name under paths.eval_data (a task's
        directory: every file in it), so that editing one reruns evaluate. A missing one is left to
        the stage, which names its key."""
        evaluate = self.resolved.evaluate
        files = []
        for relative in [*evaluate.reference_texts.values(), *evaluate.tasks.values()]:
            path = self.resolved.paths.eval_data / relative
            files += [str(path)] if path.is_file() else _files_under(path)
        return files


def _files_under(directory: Path) -> list[str]:
    files = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
    return files


def write_values(path: str, lines: list[str], log: str) -> None:
    """The stage's params overlay (YAML), from WorkflowParams.values' lines."""
    overlay: dict[str, Any] = {}
    for line in lines:
        key, _, value = line.partition(": ")
        *parents, leaf = key.split(".")
        node = overlay
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = json.loads(value)
    Path(path).write_text(yaml.safe_dump(overlay, sort_keys=True, allow_unicode=True), encoding="utf-8")
    Path(log).write_text(f"{path}: the {len(lines)} values its stage reads\n", encoding="utf-8")


def after(checkpoint, *paths: str) -> Callable[[Any], list[str]]:
    """An input function: `paths`, once `checkpoint` has run. Snakemake then decides the rule
    against the files the checkpoint wrote, by content (a small input that is newer but has the
    checksum Snakemake recorded is unchanged), so a price edit that reruns estimate never retrains."""

    def inputs(wildcards) -> list[str]:
        checkpoint.get()
        return list(paths)

    return inputs


def forward_signals() -> None:
    """SIGINT and SIGTERM to Snakemake reach its running jobs (its child processes); then Snakemake
    exits as on SIGTERM, once they have ended: a job that failed is handled as any failed job (its
    outputs removed, nothing left marked incomplete), which SIGINT's own cancel skips. Call it in
    `onstart`, after the scheduler set its SIGTERM handler, which forwarding keeps.

    Snakemake starts a job's shell with subprocess.Popen(**shell._process_args) (snakemake/shell.py):
    a session of its own keeps the terminal's Ctrl-C from reaching the job directly, so it gets each
    signal once, from here."""
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
