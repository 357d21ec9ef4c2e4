"""Typed parameters: params.yaml (and any overlays) merged, validated, frozen.

    params = load(["params.yaml", "params/demo.yaml"], ["train.lr=3e-4"])

Every problem is reported at once, each naming its dotted key; unknown keys are rejected so a
typo never silently falls back to a default.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import PipelineError

DEFAULT_FILE = "params.yaml"

Positive = Field(gt=0)
NonNegative = Field(ge=0)
Fraction = Field(gt=0, lt=1)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(Section):
    corpus: Path
    tokenizer: Path
    tokens: Path
    reports: Path
    checkpoints: Path
    model: Path


class Data(Section):
    format: Literal["auto", "txt", "jsonl", "parquet", "datasets"]
    txt_documents: Literal["blank_line", "file"]
    text_field: str = Field(min_length=1)
    encoding_errors: Literal["replace", "strict"]
    val_fraction: float = Fraction
    max_document_chars: int = Field(ge=1000)


class Tokenizer(Section):
    vocab_size: int = Positive
    min_frequency: int = Positive
    train_sample_bytes: int = NonNegative


class Model(Section):
    n_layer: int = Positive
    n_embd: int = Positive
    n_head: int = Positive
    context: int = Field(ge=2)
    dropout: float = Field(ge=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> Model:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self


class Cost(Section):
    hardware: str
    num_devices: int = Positive
    pricing: Literal["on_demand", "spot", "colab", "owned"]
    usd_per_hour: float | None = Field(default=None, gt=0)
    mfu: float | None = Field(default=None, gt=0, le=1)
    calibrate: bool
    calibrate_steps: int = Positive
    electricity_usd_per_kwh: float = NonNegative
    pue: float = Field(ge=1)
    grid_gco2_per_kwh: float = NonNegative
    memory_headroom: float = Field(ge=0, lt=1)
    budget_usd: float | None = Field(default=None, gt=0)
    budget_hours: float | None = Field(default=None, gt=0)
    budget_kwh: float | None = Field(default=None, gt=0)
    override_budget: bool
    extra_hardware: dict[str, dict[str, Any]]


class Train(Section):
    tokens_per_step: int = Positive
    max_steps: int = Positive
    max_tokens: int | None = Field(default=None, gt=0)
    max_hours: float | None = Field(default=None, gt=0)
    micro_batch_size: Literal["auto"] | int
    precision: Literal["auto", "fp32", "fp16", "bf16"]
    activation_checkpointing: Literal["auto"] | bool
    compile: bool
    device: Literal["auto", "cpu", "cuda"]
    seed: int
    lr: float = Positive
    min_lr: float = NonNegative
    warmup_steps: int = NonNegative
    weight_decay: float = NonNegative
    beta1: float = Field(ge=0, lt=1)
    beta2: float = Field(ge=0, lt=1)
    grad_clip: float = NonNegative
    eval_every: int = Positive
    eval_batches: int = Positive
    checkpoint_every: int = Positive
    keep_last: int = Positive
    patience: int = Positive
    min_delta: float = NonNegative
    target_val_loss: float | None = Field(default=None, gt=0)
    target_perplexity: float | None = Field(default=None, ge=1)
    max_nonfinite_steps: int = Positive
    loss_spike_factor: float = Field(gt=1)
    log_every: int = Positive

    @model_validator(mode="after")
    def _consistent(self) -> Train:
        if isinstance(self.micro_batch_size, int) and self.micro_batch_size < 1:
            raise ValueError("micro_batch_size must be 'auto' or a positive number")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        return self


class Evaluate(Section):
    checkpoints: Literal["all", "best_and_final", "none"]
    batch_size: int = Positive
    prompts: list[str]
    max_new_tokens: int = Positive
    temperature: float = Positive
    top_k: int = Positive
    seed: int


class Params(Section):
    paths: Paths
    data: Data
    tokenizer: Tokenizer
    model: Model
    cost: Cost
    train: Train
    evaluate: Evaluate

    def section(self, name: str) -> dict[str, Any]:
        """One section as plain JSON-able data (for manifests and rerun triggers)."""
        return getattr(self, name).model_dump(mode="json")

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load(files: list[str | Path] | None = None, overrides: list[str] | None = None) -> Params:
    """Merge the YAML files in order, apply `dotted.key=value` overrides, validate."""
    files = [Path(f) for f in (files or [DEFAULT_FILE])]
    merged = merge_files(files)
    for item in overrides or []:
        _apply_override(merged, item)
    return from_dict(merged, source=", ".join(str(f) for f in files))


def merge_files(files: list[str | Path]) -> dict[str, Any]:
    """The YAML files deep-merged in order, not yet validated."""
    merged: dict[str, Any] = {}
    for path in files:
        merged = _deep_merge(merged, _read_yaml(Path(path)))
    return merged


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}; empty mappings are kept as leaves."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def from_dict(data: dict[str, Any], source: str = "params") -> Params:
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        problems = _describe(exc)
        lines = "\n".join(f"  - {p}" for p in problems)
        raise PipelineError(
            f"{len(problems)} problem(s) in {source}:\n{lines}\n"
            "Fix these keys (see the comments in params.yaml)."
        ) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PipelineError(f"params file {path} not found (run from the repository root, or pass --params FILE)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PipelineError(f"params file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PipelineError(f"params file {path} must hold a mapping of sections, not {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise PipelineError(f"--set {item!r}: expected dotted.key=value, e.g. --set train.lr=3e-4")
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise PipelineError(f"--set {item!r}: {part} is not a section")
        node = child
    try:
        node[leaf] = yaml.safe_load(raw)
    except yaml.YAMLError:
        node[leaf] = raw


def _describe(exc: ValidationError) -> list[str]:
    """One line per key; union alternatives ('auto' or a number) folded into one line."""
    by_key: dict[str, list[str]] = {}
    for err in exc.errors():
        # pydantic inserts union member tags such as "literal['auto']" or "int" into the location
        loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
        key = ".".join(loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (a typo? it would be ignored otherwise)"
        elif err["type"] == "missing":
            msg = "missing"
        elif "input" in err and err["type"] not in ("value_error",):
            msg = f"{msg} (got {err['input']!r})"
        by_key.setdefault(key, [])
        if msg not in by_key[key]:
            by_key[key].append(msg)
    return [f"{key}: {' or '.join(msgs)}" for key, msgs in by_key.items()]


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in {"int", "bool", "float", "str", "none"} or "[" in part)
