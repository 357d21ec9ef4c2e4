"""The DAG, declared once. dvc.yaml is generated from it (`python -m pipeline dag`) and the
Snakefile builds its rules from it, so the two drivers cannot drift apart.

Paths are templates over params.paths: "{tokens}/train.bin". `params` lists exactly the keys a
stage reads, so changing a key reruns that stage and what follows, and nothing else.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.params import Params

PACKAGE = Path(__file__).resolve().parent
# Data files a module reads at run time: a change to them is a change to the module.
MODULE_DATA = {"hardware": ("hardware.yaml",)}


def code_deps(module: str) -> tuple[str, ...]:
    """The CLI plus every pipeline module `module` imports, transitively, and their data files:
    derived from the source, so a new helper module can never be missing from the deps."""
    seen: list[str] = []
    todo = ["__main__", module]
    while todo:
        name = todo.pop(0)
        if name in seen or not (PACKAGE / f"{name}.py").is_file():
            continue
        seen.append(name)
        tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "pipeline":
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline."):
                todo.append(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                todo += [a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline.")]
    files = [f"pipeline/{name}.py" for name in seen]
    files += [f"pipeline/{data}" for name in seen for data in MODULE_DATA.get(name, ())]
    return tuple(files)


@dataclass(frozen=True)
class Stage:
    name: str
    deps: tuple[str, ...]          # data it reads
    params: tuple[str, ...]        # params keys or whole sections it reads
    outs: tuple[str, ...] = ()     # outputs DVC caches and Snakemake tracks
    small_outs: tuple[str, ...] = ()   # outputs kept in git rather than the DVC cache (reports)
    persistent: tuple[str, ...] = ()   # outputs that survive reruns: resume state, never deleted
    metrics: tuple[str, ...] = ()
    # deps that are a function of this stage's own params and other deps: rerun on their content
    # (DVC's way), never on their timestamps, so a budget change does not retrain (Snakefile: ancient)
    content_deps: tuple[str, ...] = ()
    gpu: bool = False              # holds the GPU: one such job at a time

    @property
    def all_deps(self) -> tuple[str, ...]:
        return code_deps(self.name) + self.deps + self.content_deps

    @property
    def command(self) -> str:
        return f"python -m pipeline {self.name}"


STAGES: tuple[Stage, ...] = (
    Stage(
        name="tokenize",
        deps=("{corpus}",),
        params=("paths.corpus", "paths.tokenizer", "paths.tokens", "data", "tokenizer"),
        outs=("{tokenizer}", "{tokens}"),
    ),
    Stage(
        name="estimate",
        deps=("{tokens}", "{tokenizer}"),
        params=("paths.tokens", "paths.tokenizer", "paths.reports", "model", "cost",
                "train.tokens_per_step", "train.max_steps", "train.max_tokens",
                "train.micro_batch_size", "train.precision", "train.activation_checkpointing",
                "train.device"),
        small_outs=("{reports}/plan.json", "{reports}/cost.md"),
        metrics=("{reports}/cost.json",),
    ),
    Stage(
        name="train",
        deps=("{tokens}", "{tokenizer}"),
        # every key the plan depends on, so that the plan changes only when these do
        params=("paths", "model", "train", "cost.hardware", "cost.extra_hardware",
                "cost.memory_headroom", "cost.num_devices"),
        content_deps=("{reports}/plan.json",),
        outs=("{model}",),
        small_outs=("{reports}/train_live",),
        persistent=("{checkpoints}",),
        metrics=("{reports}/train.json",),
        gpu=True,
    ),
    Stage(
        name="evaluate",
        # It also reads {checkpoints}, which no driver may own (see train): train.json changes
        # whenever they do.
        deps=("{model}", "{tokens}", "{tokenizer}", "{reports}/cost.json", "{reports}/train.json",
              "{reports}/train_live"),
        params=("paths", "model.context", "train.device", "train.tokens_per_step", "evaluate"),
        small_outs=("{reports}/samples.md", "{reports}/summary.md", "{reports}/plots"),
        metrics=("{reports}/eval.json",),
        gpu=True,
    ),
)


def by_name(name: str) -> Stage:
    return next(stage for stage in STAGES if stage.name == name)


def params_of(stage: Stage, params: Params) -> dict[str, Any]:
    """The values of exactly the keys a stage reads: Snakemake reruns a rule when they change."""
    data = params.as_dict()
    selected: dict[str, Any] = {}
    for key in stage.params:
        node: Any = data
        for part in key.split("."):
            node = node[part]
        selected[key] = node
    return selected
