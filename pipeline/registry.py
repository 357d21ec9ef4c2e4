"""The DAG, declared once. dvc.yaml and Snakemake's rules (rules/stages.smk, which the Snakefile
includes) are generated from it (`python -m pipeline dag`), so the two drivers cannot drift apart.

Paths are templates over params.paths: "{tokens}/train.bin". `params` lists exactly the keys a
stage reads, so changing a key reruns that stage and what follows, and nothing else (DVC: the
stage's `params` in dvc.yaml; Snakemake: its STAGE_params rule, see the Snakefile). A stage sees
those keys alone (run_stage, pipeline/core/view.py): a read of any other raises at once, naming it.
tests/test_declared_params.py runs the stages and fails on a key one reads but does not declare.
"""
from __future__ import annotations

import ast
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python

from pipeline.core.params import Params, Paths
from pipeline.core.view import view
from pipeline.reports.plots import FILES as PLOT_FILES
from pipeline.data.tokens import MANIFEST_FILE, TOKENIZER_FILE, TRAIN_FILE, VAL_FILE

PACKAGE = Path(__file__).resolve().parent
# Data files a module reads at run time: a change to them is a change to the module.
MODULE_DATA = {"pipeline.cost.hardware": ("hardware.yaml",)}
# The registry and dvc.yaml's generator: what they declare reaches each driver stage by stage (its
# params, deps and outs in dvc.yaml and rules/stages.smk), so an edit to one stage's declaration must
# not rerun every stage as a code change would.
NOT_CODE = frozenset({"pipeline.registry", "pipeline.tools.dag"})
# What runs a distributed stage as several processes: the CLI imports it by this name for those
# stages only, so an edit to it reruns them and no other stage.
LAUNCHER = "pipeline.core.launch"


def module_file(module: str) -> Path | None:
    """pipeline.cost.budget -> pipeline/cost/budget.py (or a package's __init__.py); None if absent."""
    parts = module.split(".")
    if parts[0] != "pipeline":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(module: str) -> list[str]:
    """The pipeline modules `module` imports, at any depth of its code (a function-level import
    runs too), and the packages each one runs on the way (their __init__.py)."""
    found: list[str] = []
    tree = ast.parse(module_file(module).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pipeline":
            for alias in node.names:  # `from pipeline.cost import budget` names a module
                sub = f"{node.module}.{alias.name}"
                found.append(sub if module_file(sub) else node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "pipeline"]
    with_packages = []
    for name in found:
        parts = name.split(".")
        with_packages += [".".join(parts[:i]) for i in range(2, len(parts))] + [name]
    return with_packages


def code_deps(module: str, *also: str) -> tuple[str, ...]:
    """The CLI plus every pipeline module `module` (and each of `also`) imports, transitively, and
    their data files: derived from the source, so a new helper module can never be missing."""
    if module_file(module) is None:
        raise ValueError(f"code_deps: no module {module} (a misspelled stage?)")
    seen: list[str] = []
    todo = ["pipeline.__main__", module, *also]
    while todo:
        name = todo.pop(0)
        if name in seen or name in NOT_CODE or module_file(name) is None:
            continue
        seen.append(name)
        todo += _imported(name)
    files = [module_file(name).relative_to(PACKAGE.parent).as_posix() for name in seen]
    files += [(module_file(name).parent / data).relative_to(PACKAGE.parent).as_posix()
              for name in seen for data in MODULE_DATA.get(name, ())]
    return tuple(files)


@dataclass(frozen=True)
class Artifact:
    """One output of one stage, passed to that stage's `run` (and to later stages') by `name`.

    Its format is owned by the module that writes it: the files inside a directory artifact are
    named there (pipeline/data/tokens.py names train.bin, val.bin, manifest.json), a record's fields
    by its Record class.
    """

    name: str                   # the keyword argument of the stages' run() functions
    template: str               # a path over params.paths: "{reports}/plan.json"
    directory: bool = False
    # data: DVC caches it and `dvc push` sends it to the remote | report: small, committed to git
    # (DVC `cache: false`) | metrics: the headline numbers, committed to git, `dvc metrics` and
    # `dvc exp show` | persistent: resume state on the machine that trains; no driver owns it
    role: str = "data"
    # read by later stages by content, never by timestamp: a budget change rewrites the cost
    # report but leaves the plan byte-identical, and must not retrain (Snakefile: its stage is a
    # checkpoint, and the readers wait for it before deciding whether they rerun)
    by_content: bool = False
    # the files a directory artifact holds, for a driver that tracks files (Snakemake declares
    # them instead of the directory, so no marker file lands among them); () for a directory
    # whose files vary (DVCLive's)
    files: tuple[str, ...] = ()
    # written even when its stage fails (the estimate stage's refusal): Snakemake declares it as
    # a log, which it never deletes after a failed job
    kept_on_failure: bool = False

    def paths(self, values: dict[str, str]) -> list[str]:
        """The files a file-tracking driver declares: the file, or a directory's named files."""
        resolved = self.template.format(**values)
        return [f"{resolved}/{name}" for name in self.files] if self.files else [resolved]


# What save_pretrained writes for a GPT-2 model with a fast tokenizer (transformers'
# CONFIG_NAME, GENERATION_CONFIG_NAME, SAFE_WEIGHTS_NAME; the tokenizer's files).
_TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json")
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", *_TOKENIZER_FILES)

CORPUS = Artifact("corpus", "{corpus}", directory=True)   # a directory, glob, file or dataset: pipeline/data/corpus.py
CLEANED = Artifact("clean", "{clean}", directory=True)   # pipeline/data/cleaned.py: shards whose number varies
CLEAN_MD = Artifact("clean_md", "{reports}/clean.md", role="report")
CLEAN_METRICS = Artifact("clean_metrics", "{reports}/clean.json", role="metrics")   # pipeline/data/cleaning.py: CleanReport
TOKENIZER = Artifact("tokenizer", "{tokenizer}", directory=True, files=_TOKENIZER_FILES)   # pipeline/stages/tokenize.py
TOKENS = Artifact("tokens", "{tokens}", directory=True,
                  files=(TRAIN_FILE, VAL_FILE, MANIFEST_FILE))          # pipeline/data/tokens.py: TokenManifest
PLAN = Artifact("plan", "{reports}/plan.json", role="report", by_content=True)  # pipeline/engine/plan.py: Plan
COST = Artifact("cost", "{reports}/cost.json", role="report")           # pipeline/stages/estimate.py: CostReport
COST_MD = Artifact("cost_md", "{reports}/cost.md", role="report", kept_on_failure=True)
MODEL = Artifact("model", "{model}", directory=True, files=_MODEL_FILES)   # save_pretrained
# evaluate.reference_texts and evaluate.tasks name files in it (eval/README.md); Snakemake declares
# those files, DVC the directory (its deps cannot follow a list in params.yaml)
EVAL_DATA = Artifact("eval_data", "{eval_data}", directory=True)
CHECKPOINTS = Artifact("checkpoints", "{checkpoints}", directory=True, role="persistent")  # pipeline/engine/checkpoint/
TRAIN_LIVE = Artifact("train_live", "{reports}/train_live", directory=True, role="report")  # DVCLive
# by content too: whether train reruns is known only once estimate has run (a price edit reruns
# estimate, not train), and evaluate must wait for that answer
TRAIN_REPORT = Artifact("train_report", "{reports}/train.json", role="report", by_content=True)  # pipeline/engine/report.py
SAMPLES = Artifact("samples_md", "{reports}/samples.md", role="report")
SUMMARY = Artifact("summary_md", "{reports}/summary.md", role="report")
PLOTS = Artifact("plots_dir", "{reports}/plots", directory=True, role="report", files=PLOT_FILES)  # pipeline/reports/plots.py
EVAL = Artifact("eval_report", "{reports}/eval.json", role="report")   # pipeline/stages/evaluate.py
METRICS = Artifact("metrics", "{reports}/metrics.json", role="metrics")   # pipeline/reports/headline.py


@dataclass(frozen=True)
class Stage:
    name: str
    help: str                      # one line, for `python -m pipeline --help`
    inputs: tuple[Artifact, ...]
    params: tuple[str, ...]        # params keys or whole sections it reads
    outputs: tuple[Artifact, ...]
    gpu: bool = False              # holds the GPU: one such job at a time
    # runs as one process per device of its plan (its input PLAN; LAUNCHER); the others run as one:
    # estimate's calibration times one device and prices N (pipeline/cost/pricing.py), evaluate is one pass
    distributed: bool = False
    module: str = ""               # its entry point; default pipeline.stages.NAME

    @property
    def entry_point(self) -> str:
        return self.module or f"pipeline.stages.{self.name}"

    def _templates(self, role: str) -> tuple[str, ...]:
        return tuple(a.template for a in self.outputs if a.role == role)

    @property
    def deps(self) -> tuple[str, ...]:
        return tuple(a.template for a in self.inputs if not a.by_content)

    @property
    def content_deps(self) -> tuple[str, ...]:
        return tuple(a.template for a in self.inputs if a.by_content)

    @property
    def outs(self) -> tuple[str, ...]:
        return self._templates("data")

    @property
    def small_outs(self) -> tuple[str, ...]:
        return self._templates("report")

    @property
    def metrics(self) -> tuple[str, ...]:
        return self._templates("metrics")

    @property
    def persistent(self) -> tuple[str, ...]:
        return self._templates("persistent")

    @property
    def all_deps(self) -> tuple[str, ...]:
        launcher = (LAUNCHER,) if self.distributed else ()
        return code_deps(self.entry_point, *launcher) + self.deps + self.content_deps

    @property
    def command(self) -> str:
        return f"python -m pipeline {self.name}"


STAGES: tuple[Stage, ...] = (
    Stage(
        name="clean",
        help="remove duplicates, other languages and junk from the corpus; say what went and why",
        inputs=(CORPUS,),
        # data.val_fraction is tokenize's: the split is made there, by content, after cleaning
        params=("paths.corpus", "paths.clean", "paths.reports", "data.format", "data.txt_documents",
                "data.text_field", "data.encoding_errors", "data.max_document_chars", "clean"),
        outputs=(CLEANED, CLEAN_MD, CLEAN_METRICS),
    ),
    Stage(
        name="tokenize",
        help="read the cleaned corpus, train a BPE tokenizer, write token files",
        inputs=(CLEANED,),
        params=("paths.clean", "paths.tokenizer", "paths.tokens", "data.val_fraction", "tokenizer"),
        outputs=(TOKENIZER, TOKENS),
    ),
    Stage(
        name="estimate",
        help="FLOPs, memory fit, hours, dollars, energy; stop when over budget",
        inputs=(TOKENS, TOKENIZER),
        params=("paths.tokens", "paths.tokenizer", "paths.reports", "model", "cost",
                "paths.checkpoints_remote",  # a bucket: a reclaim costs less, a checkpoint more (cost/spot.py)
                "train.tokens_per_step", "train.max_steps", "train.max_tokens", "train.eval_every", "train.optimizer",
                "train.checkpoint_every",   # what a spot reclaim loses (pipeline/cost/spot.py)
                "train.eval_batches", "train.micro_batch_size", "train.precision",
                "train.activation_checkpointing", "train.device", "train.seed",
                "train.compile",            # refused on a GPU below compute capability 8.0 (cost/planner.py)
                # the rest of the run's identity (pipeline/engine/identity.py): a learned MFU is never
                # the priced run's own (pipeline/cost/pricing.py), so another run may price this one
                "train.lr", "train.min_lr", "train.warmup_steps", "train.weight_decay", "train.beta1",
                "train.beta2", "train.grad_clip", "train.muon_lr", "train.muon_momentum",
                "train.muon_weight_decay"),
        outputs=(PLAN, COST_MD, COST),
    ),
    Stage(
        name="train",
        help="train the model: mixed precision, accumulation, checkpoints, resume",
        inputs=(TOKENS, TOKENIZER, PLAN),
        # no cost key: the plan carries what train needs of cost.hardware, cost.num_devices and the
        # catalog, and both drivers read it by content, so a cost change retrains only when it
        # changes the plan; the budget comes in the cost report (READS_UNDECLARED)
        params=("paths.tokens", "paths.tokenizer", "paths.reports", "paths.model", "paths.checkpoints",
                "paths.checkpoints_remote",
                "model", "train"),
        outputs=(MODEL, TRAIN_LIVE, CHECKPOINTS, TRAIN_REPORT),
        gpu=True,
        distributed=True,
    ),
    Stage(
        name="evaluate",
        help="validation loss, perplexity, samples, estimate against actual",
        # It also reads the model, the training curves and the checkpoints (READS_UNDECLARED).
        inputs=(TOKENS, TOKENIZER, EVAL_DATA, TRAIN_REPORT),
        # model: its report records the section (the model it evaluated); a model change retrains,
        # and evaluate follows train, so this reruns it no more often
        params=("paths", "model", "train.device", "train.tokens_per_step", "evaluate"),
        outputs=(SAMPLES, SUMMARY, PLOTS, EVAL, METRICS),
        gpu=True,
    ),
)
# What a stage reads besides its declared inputs. evaluate: the checkpoints, which only train may
# own, and the model and training curves: the train report stands for all three, since the train
# stage writes them together and the report changes whenever any of them does (it records each
# run's wall-clock time and the checkpoints it kept). One input per upstream run keeps
# `dvc exp show` to one dependency column for a training experiment. train: the cost report, for
# the budget and tolerance it holds while it runs (pipeline/cost/budget.py): a finished run's outputs
# never depend on them, so a budget change must not retrain.
READS_UNDECLARED = {"evaluate": (MODEL, TRAIN_LIVE, CHECKPOINTS), "train": (COST,)}


def by_name(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"no stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")


def resolve(template: str, paths: Paths) -> Path:
    """A path template over params.paths, reading only the keys it names."""
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    return Path(template.format(**{name: getattr(paths, name) for name in names}))


def paths_for(stage: Stage, params: Params) -> dict[str, Path]:
    """Every artifact the stage reads or writes, resolved over params.paths: its run()'s keywords."""
    artifacts = stage.inputs + stage.outputs + READS_UNDECLARED.get(stage.name, ())
    return {a.name: resolve(a.template, params.paths) for a in artifacts}


def run_stage(name: str, params: Params, **paths: Path) -> Any:
    """Run one stage in this process with its resolved paths (some may be given instead): what
    the CLI does, and what tests call. The stage sees its declared params alone: a read of any
    other key raises (pipeline/core/view.py)."""
    import importlib

    stage = by_name(name)
    module = importlib.import_module(stage.entry_point)
    seen = view(params, name, stage.params)
    return module.run(seen, **{**paths_for(stage, seen), **paths})


def params_of(stage: Stage, params: Params) -> dict[str, Any]:
    """The values of exactly the keys a stage reads, as JSON: Snakemake reruns a rule when they
    change. Only those keys are read (a dump of every section would read them all)."""
    selected: dict[str, Any] = {}
    for key in stage.params:
        section, _, field = key.partition(".")
        selected[key] = to_jsonable_python(getattr(getattr(params, section), field)) if field else params.section(section)
    return selected


def declared_params(name: str, params: Params) -> dict[str, Any]:
    """params_of by section ({"paths": {"tokens": ...}, "data": {...}}): the params a stage records as
    what made its outputs, so that no record holds a value whose change would not rerun the stage."""
    nested: dict[str, Any] = {}
    for key, value in params_of(by_name(name), params).items():
        section, _, field = key.partition(".")
        if field:
            nested.setdefault(section, {})[field] = value
        else:
            nested[section] = value
    return nested
