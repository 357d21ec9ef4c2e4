"""Typed parameters: params.yaml (and any overlays) merged, validated, frozen.

    params = load(["params.yaml", "params/demo.yaml"], ["train.lr=3e-4"])

Every problem is reported at once, each naming its dotted key; unknown keys are rejected so a
typo never silently falls back to a default. A key written twice in one file is refused, and so
is true/false where a number belongs.
"""
from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)

from pipeline.core.errors import PipelineError

DEFAULT_FILE = "params.yaml"
# model.architecture names a file here. Listed, never imported: the tokenize stage reads params,
# and each stage's code deps are the modules it imports (pipeline.registry.code_deps), so an
# architecture imported here would make a model edit re-tokenize.
ARCHITECTURES_DIR = Path(__file__).resolve().parents[1] / "model" / "architectures"
MERGE_TAG = "tag:yaml.org,2002:merge"   # YAML `<<: *anchor`

Positive = Field(gt=0)
NonNegative = Field(ge=0)
Fraction = Field(gt=0, lt=1)
# a reference text's or task's name: it names metrics, and a dot would split its params key
REPORT_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _not_a_boolean(value: Any) -> Any:
    # pydantic reads true as 1 in a number field; in a params file that is a slip, never a count.
    # Full strict mode would also refuse "3e-4": YAML 1.1 (PyYAML, Snakemake's config) reads an
    # exponent without a dot as a string, and pydantic turns that string into the float meant.
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is a boolean, not a number")
    return value


_NOT_A_BOOLEAN = BeforeValidator(_not_a_boolean)
Int = Annotated[int, _NOT_A_BOOLEAN]
Float = Annotated[float, _NOT_A_BOOLEAN]
OptionalInt = Annotated[int | None, _NOT_A_BOOLEAN]
OptionalFloat = Annotated[float | None, _NOT_A_BOOLEAN]
AutoOrPositive = Annotated[Literal["auto"] | Annotated[float, Field(gt=0)], _NOT_A_BOOLEAN]
AutoOrNonNegative = Annotated[Literal["auto"] | Annotated[float, Field(ge=0)], _NOT_A_BOOLEAN]


# train.lr: auto. AdamW's peak lr from the model's width, for both optimizers (under muon AdamW
# trains the embeddings, tied head, norms and biases; Muon the matrices, at train.muon_lr): muP's
# inverse width for Adam (Yang et al. 2022, "Tensor Programs V", arXiv:2203.03466, Table 3),
# anchored at GPT-2 small's 6e-4 for 768 wide (nanoGPT's), capped at 2e-3, where bench/lr_sweep.py
# found AdamW's optimum at 128-256 wide. Muon's AdamW groups score best far higher (0.03-0.06) on
# large corpora, but on a small corpus seen many times both 0.03 and 0.006 ended above the
# baseline's loss: bench/README.md, "Learning rates that follow the width".
LR_AT_768, LR_CAP = 6e-4, 2e-3
MIN_LR_FRACTION = 0.1   # train.min_lr: auto, a tenth of the peak (nanoGPT's; Hoffmann et al. 2022)


def auto_lr(n_embd: int) -> tuple[float, str]:
    """train.lr: auto at model.n_embd = n_embd, and why (printed by the stages)."""
    lr = min(LR_CAP, LR_AT_768 * 768 / n_embd)
    return lr, f"{lr:.3g} = min({LR_CAP:g}, {LR_AT_768:g} x 768/{n_embd})"


def architecture_names() -> tuple[str, ...]:
    """The names model.architecture may take: one per file in pipeline/model/architectures/."""
    return tuple(sorted(path.stem for path in ARCHITECTURES_DIR.glob("*.py") if not path.stem.startswith("_")))


def unknown_architecture(name: str, known: tuple[str, ...]) -> str:
    """The message for a model.architecture that is not one of `known`, with the closest match."""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown architecture {name!r}{hint}: one of {', '.join(known)}"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(Section):
    corpus: Path
    clean: Path
    tokenizer: Path
    tokens: Path
    reports: Path
    checkpoints: Path
    model: Path
    # evaluate's reference texts and task data (evaluate.reference_texts, evaluate.tasks): a
    # dependency of evaluate as a whole, so an edit to a file in it reruns evaluate under DVC
    eval_data: Path
    # a copy of the checkpoints off the machine (pipeline/engine/checkpoint/remote.py): an fsspec URL
    checkpoints_remote: str | None = None

    @field_validator("checkpoints_remote")
    @classmethod
    def _reachable_url(cls, url: str | None) -> str | None:
        if url is not None and (problem := remote_url_problem(url)):
            raise ValueError(problem)
        return url.rstrip("/") if url else url


def remote_url_problem(url: str) -> str | None:
    """Why fsspec cannot open `url` here (not a URL, an unknown protocol, its package missing), or
    None. The package is found, not imported: params are read by every stage."""
    import importlib.util

    from fsspec.registry import known_implementations, registry

    protocol, sep, rest = url.partition("://")
    if not sep or not protocol or not rest.strip("/"):
        return f"{url!r} is not a URL with a bucket or directory: s3://BUCKET/PREFIX, gs://..., az://..., file:///DIR"
    if protocol in registry:
        return None
    known = known_implementations.get(protocol)
    if known is None:
        return f"unknown storage protocol {protocol!r}: use s3://, gs://, az://, file:// (any fsspec protocol)"
    package = known["class"].split(".")[0]
    if importlib.util.find_spec(package) is None:
        return f"{protocol}:// needs the {package} package ({known.get('err') or 'not installed'}): pip install {package}"
    return None


class Data(Section):
    format: Literal["auto", "txt", "jsonl", "parquet", "datasets"]
    txt_documents: Literal["blank_line", "file"]
    text_field: str = Field(min_length=1)
    encoding_errors: Literal["replace", "strict"]
    val_fraction: Float = Fraction
    max_document_chars: Int = Field(ge=1000)


class Clean(Section):
    exact_dedup: bool
    boilerplate: bool
    boilerplate_min_documents: Int = Field(ge=2)
    near_dedup: bool
    near_dedup_threshold: Float = Fraction
    languages: list[str]
    quality: bool
    quality_language: Literal["az", "tr", "ru", "en"]
    examples: Int = NonNegative


class Tokenizer(Section):
    vocab_size: Int = Positive
    min_frequency: Int = Positive
    train_sample_bytes: Int = NonNegative


class Model(Section):
    # The name of a file in pipeline/model/architectures/. Only the name is checked here: what an
    # architecture itself refuses (pipeline.model.spec.Architecture.params_problems) is checked
    # where it is looked up (pipeline.model.registry.architecture_of), as params must not import it.
    architecture: str
    # The defaults below are for code that builds a Model directly; params.yaml sets each.
    n_layer: Int = Positive
    n_embd: Int = Positive
    n_head: Int = Positive
    context: Int = Field(ge=2)
    dropout: Float = Field(ge=0, lt=1)
    tie_embeddings: bool = True
    mlp_activation: Literal["auto", "gelu_pytorch_tanh", "silu", "relu2"] = "auto"
    mlp_width: OptionalInt = Field(default=None, gt=0)
    rope_theta: Float = Field(default=10000.0, gt=0)

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, name: str) -> str:
        known = architecture_names()
        if name not in known:
            raise ValueError(unknown_architecture(name, known))
        return name

    @model_validator(mode="after")
    def _heads_divide_width(self) -> Model:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self


class Cost(Section):
    hardware: str
    num_devices: Int = Positive
    pricing: Literal["on_demand", "spot", "colab", "owned"]
    usd_per_hour: OptionalFloat = Field(default=None, gt=0)
    mfu: OptionalFloat = Field(default=None, gt=0, le=1)
    calibrate: bool
    calibrate_steps: Int = Positive
    electricity_usd_per_kwh: Float = NonNegative
    pue: Float = Field(ge=1)
    grid_gco2_per_kwh: Float = NonNegative
    memory_headroom: Float = Field(ge=0, lt=1)
    budget_usd: OptionalFloat = Field(default=None, gt=0)
    budget_hours: OptionalFloat = Field(default=None, gt=0)
    budget_kwh: OptionalFloat = Field(default=None, gt=0)
    override_budget: bool
    budget_tolerance: Float = Field(ge=0)
    learn_mfu: bool
    extra_hardware: dict[str, dict[str, Any]]
    forecast: bool = False
    forecast_share: Float = Field(default=0.25, gt=0, le=1)


class Train(Section):
    tokens_per_step: Int = Positive
    max_steps: Int = Positive
    max_tokens: OptionalInt = Field(default=None, gt=0)
    max_hours: OptionalFloat = Field(default=None, gt=0)
    micro_batch_size: Annotated[Literal["auto"] | int, _NOT_A_BOOLEAN]
    precision: Literal["auto", "fp32", "fp16", "bf16"]
    activation_checkpointing: Literal["auto"] | bool
    compile: bool
    device: Literal["auto", "cpu", "cuda"]
    seed: Int
    optimizer: Literal["adamw", "muon"] = "adamw"
    lr: AutoOrPositive          # auto: auto_lr(model.n_embd), resolved by load (Params.resolved)
    min_lr: AutoOrNonNegative   # auto: lr x MIN_LR_FRACTION, resolved likewise
    muon_lr: Float = Field(default=0.02, gt=0)
    muon_momentum: Float = Field(default=0.95, ge=0, lt=1)
    muon_weight_decay: Float = Field(default=0.01, ge=0)
    warmup_steps: Int = NonNegative
    weight_decay: Float = NonNegative
    beta1: Float = Field(ge=0, lt=1)
    beta2: Float = Field(ge=0, lt=1)
    grad_clip: Float = NonNegative
    eval_every: Int = Positive
    eval_batches: Int = Positive
    checkpoint_every: Int = Positive
    keep_last: Int = Positive
    # paths.checkpoints_remote: how long a lease whose heartbeat stopped (a reclaimed VM) blocks the
    # prefix before a recovered run takes it over (pipeline/engine/checkpoint/lease.py)
    remote_lease_seconds: Float = Field(default=120.0, gt=0)
    patience: Int = Positive
    min_delta: Float = NonNegative
    target_val_loss: OptionalFloat = Field(default=None, gt=0)
    target_perplexity: OptionalFloat = Field(default=None, ge=1)
    max_nonfinite_steps: Int = Positive
    loss_spike_factor: Float = Field(gt=1)
    log_every: Int = Positive

    @model_validator(mode="after")
    def _consistent(self) -> Train:
        if isinstance(self.micro_batch_size, int) and self.micro_batch_size < 1:
            raise ValueError("micro_batch_size must be 'auto' or a positive number")
        return self


class Evaluate(Section):
    checkpoints: Literal["all", "best_and_final", "none"]
    batch_size: Int = Positive
    prompts: list[str]
    max_new_tokens: Int = Positive
    temperature: Float = Positive
    top_k: Int = Positive
    seed: Int
    # name -> a text file under paths.eval_data: bits per byte on each (pipeline/evaluation/reference.py)
    reference_texts: dict[str, Path]
    # lm-eval task or group -> its data under paths.eval_data (pipeline/evaluation/harness.py)
    tasks: dict[str, Path]

    @field_validator("reference_texts", "tasks")
    @classmethod
    def _under_eval_data(cls, entries: dict[str, Path]) -> dict[str, Path]:
        for name, path in entries.items():
            if not REPORT_NAME.fullmatch(name):
                raise ValueError(f"{name!r}: a name of letters, digits, '_' and '-' (it names metrics)")
            if path.is_absolute() or ".." in path.parts or path == Path("."):
                raise ValueError(f"{name}: {path} must be a path inside paths.eval_data, relative to it (DVC "
                                 "tracks that directory, so an edit to the file reruns evaluate)")
        return entries


class Params(Section):
    paths: Paths
    data: Data
    clean: Clean
    tokenizer: Tokenizer
    model: Model
    cost: Cost
    train: Train
    evaluate: Evaluate
    _auto: dict[str, str] = PrivateAttr(default_factory=dict)   # key -> the value `auto` became, and why

    def resolved(self) -> Params:
        """These params with every `auto` that depends on another value replaced by its value: what
        every stage, the run's identity and its records see (load returns this)."""
        train, notes = self.train, dict(self._auto)
        if train.lr == "auto":
            lr, notes["train.lr"] = auto_lr(self.model.n_embd)
            train = train.model_copy(update={"lr": lr})
        if train.min_lr == "auto":
            train = train.model_copy(update={"min_lr": train.lr * MIN_LR_FRACTION})
            notes["train.min_lr"] = f"{train.min_lr:.3g} = train.lr x {MIN_LR_FRACTION:g}"
        if train.min_lr > train.lr:   # the one floor check, once both are numbers
            peak = (f"train.lr auto ({train.lr:.3g} at model.n_embd {self.model.n_embd})" if self.train.lr == "auto"
                    else f"train.lr ({train.lr:g})")
            raise PipelineError(f"train.min_lr ({train.min_lr:g}) exceeds {peak}: lower train.min_lr or set it to "
                                "auto, or set train.lr to a larger number")
        if train is self.train:
            return self
        out = self.model_copy(update={"train": train})
        out._auto = notes
        return out

    def auto_notes(self) -> list[str]:
        """One line per value `auto` chose, for the stages that use it to print:
        "train.lr auto: 0.0018 = min(0.002, 0.0006 x 768/256)"."""
        return [f"{key} auto: {why}" for key, why in self._auto.items()]

    def is_auto(self, key: str) -> bool:
        """Whether `key` ("train.lr") was auto and resolved by load."""
        return key in self._auto

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
    """Validated params with every `auto` that depends on another value resolved (Params.resolved)."""
    return as_written(data, source).resolved()


def as_written(data: dict[str, Any], source: str = "params") -> Params:
    """Validated params as written, `auto` kept: what a driver hands a stage, which resolves them
    itself and says why."""
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
    text = _read_text(path)
    try:
        data = _parse_yaml(text, str(path))
    except yaml.YAMLError as exc:
        raise PipelineError(_describe_yaml_error(exc, path, text)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PipelineError(f"params file {path} must hold a mapping of sections, not {type(data).__name__}")
    return data


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise PipelineError(f"params file {path} not found (run from the repository root, or pass "
                            "--params FILE)") from None
    except UnicodeDecodeError as exc:
        raise PipelineError(f"params file {path} is not UTF-8 text (first bad byte at offset {exc.start}): "
                            "save it as UTF-8") from None
    except OSError as exc:
        raise PipelineError(f"params file {path} cannot be read ({exc.strerror}): fix its "
                            "permissions") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping.

    PyYAML silently keeps the last one, so after an edit leaves a second `lr:` far below the
    first, the value a reader finds first need not be the one the run uses.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        _reject_repeated_keys(self, node, "", set())
        return super().construct_document(node)


def _parse_yaml(text: str, name: str) -> Any:
    loader = _UniqueKeyLoader(text)
    loader.name = name   # marks (line numbers in errors) carry the file name instead of "<unicode string>"
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _reject_repeated_keys(loader: yaml.SafeLoader, node: yaml.Node, prefix: str, seen: set[int]) -> None:
    if id(node) in seen:   # an alias: checked where its anchor is, and aliases may form loops
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _reject_repeated_keys(loader, item, f"{prefix}[{index}]", seen)
    elif isinstance(node, yaml.MappingNode):
        first_lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            # `<<` merge keys may legally be overridden, and non-scalar keys never occur in params
            if key_node.tag == MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = loader.construct_object(key_node)
            dotted = f"{prefix}.{key}" if prefix else str(key)
            line = key_node.start_mark.line + 1
            if key in first_lines:
                raise PipelineError(f"{key_node.start_mark.name}:{line}: {dotted} is given twice "
                                    f"(first at line {first_lines[key]}): keep one")
            first_lines[key] = line
            _reject_repeated_keys(loader, value_node, dotted, seen)


def _describe_yaml_error(exc: yaml.YAMLError, path: Path, text: str) -> str:
    """One line, `params file FILE:LINE:COL: problem (what to do)`, instead of PyYAML's excerpt."""
    fix = "(not valid YAML: indent with spaces, close every quote and bracket)"
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        opened = ""
        if exc.context and exc.context_mark is not None and exc.context_mark.line != mark.line:
            opened = f" {exc.context} that starts at line {exc.context_mark.line + 1}"
        return f"params file {path}:{mark.line + 1}:{mark.column + 1}: {exc.problem}{opened} {fix}"
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        problem = str(exc).splitlines()[0]
        return (f"params file {path}:{line}:{column}: {problem} (remove it, or write it as an escape "
                "inside double quotes)")
    return f"params file {path}: {' '.join(str(exc).split())} {fix}"


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
    return isinstance(part, str) and (part in {"int", "bool", "float", "str", "none"} or "[" in part
                                      or part.startswith("constrained-"))
