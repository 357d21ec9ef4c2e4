"""lm-evaluation-harness tasks on the model under evaluation (evaluate.tasks), offline: the tasks
the field compares small models on, with their data read from files under paths.eval_data.

    tasks = load_tasks(params.paths.eval_data, params.evaluate.tasks)   # before the model loads
    run_tasks(net, tok, tasks, params.model.context, params.evaluate.batch_size, device)

Each task runs as lm-eval defines it (prompt, choices, metrics, few-shot count) through its Python
API, on the model already in memory; only where its data comes from changes. lm-eval's own way:
a task config that includes the registered one and overrides `dataset_path` (lm-eval's
docs/new_task_guide.md, "Using Local Datasets"). The data, by what evaluate.tasks names:
- a .jsonl, .json, .parquet or .csv file: the rows of the split the task scores (its test split,
  or its validation split where it has no test split), with the columns its config reads, as in
  the dataset on the Hugging Face Hub; read with `datasets`' json/parquet/csv loaders;
- a directory: a copy of the dataset's Hub repository (`hf download DATASET --repo-type dataset
  --local-dir DIR`), read as `datasets.load_dataset(DIR, <the task's dataset_name>)`.
A group (INCLUDE's `include_base_44_azerbaijani`) takes one source for all its tasks.

Chance: the mean over items of 1 / (number of choices), for multiple-choice tasks. A result is
told apart from chance when it lies 1.96 null standard errors or more from it (two-sided, 95%):
under chance each item is right with probability 1/k_i, so the accuracy's standard error is
sqrt(sum(p_i (1 - p_i))) / n.
"""
from __future__ import annotations

import difflib
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import PreTrainedModel

from pipeline.core.errors import PipelineError
from pipeline.evaluation.loading import first_line

LOADERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
SPLITS = ("training_split", "validation_split", "test_split")
METRICS = ("acc", "acc_norm")   # the accuracies reported, where the task defines them
Z_95 = 1.959964                 # two-sided 95% normal quantile


@dataclass(frozen=True)
class HarnessTask:
    name: str
    data: Path
    built: Any   # lm-eval's Task or Group, its data read


def load_tasks(eval_data: Path, named: dict[str, Path]) -> list[HarnessTask]:
    """Every named task found, its data read and checked against its config: all before any model
    loads. Missing files first (no lm-eval needed), then the names (lm-eval's index, ~10 s)."""
    if not named:
        return []
    sources = {name: _source(eval_data, name, relative) for name, relative in named.items()}
    import datasets
    from lm_eval.tasks import TaskManager   # imported only when tasks are asked for (~2 s)

    datasets.disable_progress_bars()   # a few rows read per task; and a refusal stays one line

    manager = TaskManager()
    entries = {name: _entry(manager, name) for name in named}
    with tempfile.TemporaryDirectory(prefix="budgetgpt-tasks-") as configs:
        return [HarnessTask(name, sources[name], _build(manager, entries[name], sources[name], Path(configs)))
                for name in named]


def _source(eval_data: Path, name: str, relative: Path) -> Path:
    path = eval_data / relative
    key = f"evaluate.tasks.{name}"
    if not path.exists():
        raise PipelineError(f"{key}: {path} not found: put the task's data there (paths.eval_data is {eval_data}; "
                            "eval/README.md shows the layout) or remove the entry")
    if path.is_file() and path.suffix not in LOADERS:
        raise PipelineError(f"{key}: {path} is neither {', '.join(LOADERS)} nor a dataset directory: "
                            "convert it, or name the dataset's directory")
    return path


def _entry(manager, name: str):
    entry = manager.task_index.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
        hint = f"closest: {', '.join(close)}" if close else "`lm-eval ls tasks` lists them"
        raise PipelineError(f"evaluate.tasks: lm-eval has no task or group {name!r} ({hint})")
    if entry.yaml_path is None or entry.kind.name not in ("TASK", "GROUP"):
        members = ", ".join(sorted(entry.tags)[:5]) if entry.tags else "several tasks"
        raise PipelineError(f"evaluate.tasks: {name!r} is an lm-eval tag of {members}: name one of them, "
                            "each with its own data")
    return entry


def _build(manager, entry, source: Path, configs: Path):
    """The task, or the group of tasks, with its data from `source`, built: lm-eval reads the data
    and renders one item here, so wrong columns fail before the model loads."""
    override = _data_override(manager, entry, source)
    if entry.kind.name == "TASK":
        return _build_task(manager, entry, override, source, configs)
    # A group: its tasks built one by one, then put under it as lm-eval's own loader would (a
    # group's config file or dict in lm-eval 0.4.13 hands the group's keys on to its tasks).
    from lm_eval.api.group import Group
    from lm_eval.config.group import GroupConfig

    names = entry.cfg.get("task") or []
    if not all(isinstance(n, str) and _is_task(manager, n) for n in names):
        raise PipelineError(f"evaluate.tasks: group {entry.name!r} nests groups or inline tasks: name its "
                            f"tasks one by one ({', '.join(map(str, names[:5]))})")
    fields = {f for f in GroupConfig.__dataclass_fields__}
    group = Group.from_config(GroupConfig(**{k: v for k, v in entry.cfg.items() if k in fields}))
    for name in names:
        group.add(_build_task(manager, manager.task_index[name], override, source, configs))
    return group


def _is_task(manager, name: str) -> bool:
    entry = manager.task_index.get(name)
    return entry is not None and entry.kind.name == "TASK"


def _build_task(manager, entry, override: dict[str, Any], source: Path, configs: Path):
    """A config file that includes the task's own (its !function references resolve from there)."""
    spec = configs / f"{entry.name}.yaml"
    spec.write_text(yaml.safe_dump({"include": str(entry.yaml_path), "task": entry.name, **override},
                                   sort_keys=False), encoding="utf-8")
    try:
        return manager.load([str(spec)])["tasks"][entry.name]
    except Exception as exc:  # datasets and jinja raise many kinds for one cause: the data does not fit
        raise PipelineError(f"evaluate.tasks.{entry.name}: lm-eval cannot read {source} as its data "
                            f"({first_line(exc)}): give the split it scores with the columns its config "
                            "reads (eval/README.md)") from None


def _data_override(manager, entry, source: Path) -> dict[str, Any]:
    if source.is_dir():
        return {"dataset_path": str(source.resolve())}
    split = _scored_split(manager, entry)
    override: dict[str, Any] = {key: None for key in SPLITS}
    override.update({"dataset_path": LOADERS[source.suffix], "dataset_name": None,
                     "dataset_kwargs": {"data_files": {split: str(source.resolve())}}, "fewshot_split": None})
    for config in _leaf_configs(manager, entry):   # only the split there is: test, else validation
        override["test_split" if config.get("test_split") else "validation_split"] = split
        if config.get("fewshot_split") == split:
            override["fewshot_split"] = split
    return override


def _leaf_configs(manager, entry) -> list[dict[str, Any]]:
    if entry.kind.name == "TASK":
        return [entry.cfg]
    children = [manager.task_index.get(c) if isinstance(c, str) else None for c in entry.cfg.get("task", [])]
    return [c.cfg for c in children if c is not None and c.kind.name == "TASK"] or [entry.cfg]


def _scored_split(manager, entry) -> str:
    splits = {c.get("test_split") or c.get("validation_split") for c in _leaf_configs(manager, entry)}
    if len(splits) != 1 or None in splits:
        raise PipelineError(f"evaluate.tasks.{entry.name}: its tasks score different splits ({sorted(map(str, splits))}): "
                            "give the dataset's directory instead of one file")
    return splits.pop()


# ---- running -----------------------------------------------------------------------------------

def run_tasks(net: PreTrainedModel, tok, tasks: list[HarnessTask], context: int, batch_size: int,
              device: torch.device) -> dict[str, dict[str, Any]]:
    """Each task's accuracies with lm-eval's standard errors, its n and chance, keyed by task name."""
    if not tasks:
        return {}
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    # windows of model.context tokens, as the val split and the reference texts are scored
    lm = HFLM(pretrained=net, tokenizer=tok, batch_size=batch_size, max_length=context, device=device.type)
    out = simple_evaluate(lm, tasks=[t.built for t in tasks], log_samples=True)
    return {t.name: _task_result(out, t) for t in tasks}


def _task_result(out: dict[str, Any], task: HarnessTask) -> dict[str, Any]:
    leaves = out["group_subtasks"].get(task.name) or [task.name]
    samples = [s for leaf in leaves for s in out["samples"].get(leaf, [])]
    multiple_choice = all(out["configs"][leaf]["output_type"] == "multiple_choice" for leaf in leaves)
    chance, null_se = _chance(samples) if multiple_choice and samples else (None, None)
    row = out["results"][task.name]
    metrics = {}
    for metric in METRICS:
        value = row.get(f"{metric},none")
        if isinstance(value, (int, float)):
            stderr = row.get(f"{metric}_stderr,none")
            metrics[metric] = {"value": float(value),
                               "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                               **_against_chance(float(value), chance, null_se)}
    return {"data": str(task.data), "kind": "group" if task.name in out["group_subtasks"] else "task",
            "n": len(samples), "chance": chance, "num_fewshot": {leaf: out["n-shot"].get(leaf) for leaf in leaves},
            "metrics": metrics}


def _chance(samples: list[dict[str, Any]]) -> tuple[float, float]:
    """The accuracy of a uniform guess and its standard error over these items."""
    p = [1.0 / len(s["arguments"]) for s in samples]
    return sum(p) / len(p), math.sqrt(sum(q * (1 - q) for q in p)) / len(p)


def _against_chance(value: float, chance: float | None, null_se: float | None) -> dict[str, Any]:
    if chance is None:
        return {"z_vs_chance": None, "vs_chance": "no chance level (not multiple choice)"}
    z = (value - chance) / null_se if null_se else 0.0
    verdict = ("above chance" if z >= Z_95 else "below chance" if z <= -Z_95
               else "not distinguishable from chance")
    return {"z_vs_chance": z, "vs_chance": verdict}

