"""Every params key a stage reads is one pipeline/registry.py declares for it.

A driver reruns a stage exactly when a declared key changes (dvc.yaml `params`, the Snakefile's
STAGE_params jobs): a stage that reads an undeclared key keeps its old outputs when that key
changes, silently. Here the stages run for real on a tiny run (tests/tiny.yaml, on the demo
corpus) while every field of params they read is recorded, by attribute or by a dump of a whole
section; each key read but not declared fails the test, by name.

A key read only on a branch this run does not take (cost.calibrate: true, a target loss) is not
seen here: the run takes the demo's branches, as `make demo` does. Those are the view's to catch:
each stage reads params through one that refuses an undeclared key (pipeline/core/view.py), in
every test that runs it. This test is the second net: it records reads on the params classes, so
it also sees one that goes around the view (params loaded again from the file, say).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from pipeline.core import params as params_module
from pipeline.core.params import Params, Section
from pipeline.registry import STAGES, by_name, run_stage

ROOT = Path(__file__).resolve().parent.parent
TINY_RUN = [ROOT / "params.yaml", ROOT / "params" / "demo.yaml", ROOT / "tests" / "tiny.yaml"]
# each Section subclass is one section of Params: its fields are that section's keys
SECTIONS: dict[type[Section], str] = {info.annotation: name for name, info in Params.model_fields.items()}


def section_class(cls: type) -> type[Section] | None:
    """The section class `cls` is or derives from: a stage's view of a section is a subclass of it
    (pipeline/core/view.py)."""
    return next((c for c in cls.__mro__ if c in SECTIONS), None)


def keys_of(model: Section) -> set[str]:
    """Every key a whole dump of `model` reads: its section's, or every section's for Params."""
    sections = list(SECTIONS) if isinstance(model, Params) else [section_class(type(model))]
    return {f"{SECTIONS[cls]}.{name}" for cls in sections for name in cls.model_fields}


@contextmanager
def recording() -> Iterator[set[str]]:
    """The params keys ("section.field") read inside the block. Copies made with model_copy keep
    their class, so reads of them count too."""
    read: set[str] = set()
    get_attribute, dump, dump_json, iterate = (Section.__getattribute__, Section.model_dump,
                                               Section.model_dump_json, Section.__iter__)

    def field_read(self: Section, name: str) -> Any:
        cls = section_class(type(self))
        if cls and name in cls.model_fields:
            read.add(f"{SECTIONS[cls]}.{name}")
        return get_attribute(self, name)

    def whole(original):
        def read_all(self: Section, *args: Any, **kwargs: Any) -> Any:
            read.update(keys_of(self))
            return original(self, *args, **kwargs)
        return read_all

    with pytest.MonkeyPatch.context() as patch:
        # Params.section and Params.as_dict dump through model_dump; dict(section) iterates
        patch.setattr(Section, "__getattribute__", field_read)
        for name, original in (("model_dump", dump), ("model_dump_json", dump_json), ("__iter__", iterate)):
            patch.setattr(Section, name, whole(original))
        yield read


def covered(key: str, declared: tuple[str, ...]) -> bool:
    """A declared key covers itself; a declared section covers every key in it."""
    return key in declared or key.split(".")[0] in declared


def undeclared(read: set[str], declared: tuple[str, ...]) -> list[str]:
    return sorted(key for key in read if not covered(key, declared))


# ---- the recorder itself --------------------------------------------------------------------------

def tiny_params(root: Path, *overrides: str) -> Params:
    # every local path under root (paths.checkpoints_remote is a URL, null here)
    paths = [f"paths.{name}={root / name}" for name, field in params_module.Paths.model_fields.items()
             if field.annotation is Path]
    return params_module.load(TINY_RUN, paths + list(overrides))


def reads_the_learning_rate(params: Params) -> float:
    return params.train.lr


def test_the_recorder_catches_an_undeclared_read(tmp_path):
    params = tiny_params(tmp_path)
    with recording() as read:
        reads_the_learning_rate(params)
    assert read == {"train.lr"}
    assert undeclared(read, ("train.max_steps", "model")) == ["train.lr"]
    assert undeclared(read, ("train",)) == [] and undeclared(read, ("train.lr",)) == []


def test_the_recorder_sees_whole_sections_copies_and_dumps(tmp_path):
    params = tiny_params(tmp_path)
    with recording() as read:
        params.cost.model_copy(update={"hardware": "t4-16gb"}).hardware
        params.section("evaluate")
        dict(params.data)
    evaluate_keys = {f"evaluate.{name}" for name in params_module.Evaluate.model_fields}
    data_keys = {f"data.{name}" for name in params_module.Data.model_fields}
    assert read == {"cost.hardware"} | evaluate_keys | data_keys
    with recording() as read:
        params.as_dict()
    assert read == keys_of(params) and len(read) == sum(len(cls.model_fields) for cls in SECTIONS)


# ---- the stages -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reads(demo_tokens, tmp_path_factory) -> dict[str, set[str]]:
    """The keys each stage read, on one tiny run of the whole pipeline, each on the outputs of the
    one before, as a driver runs them."""
    root = tmp_path_factory.mktemp("declared")
    params = tiny_params(root, f"paths.corpus={demo_tokens.params.paths.corpus}")
    found = {}
    for stage in STAGES:
        with recording() as read:
            run_stage(stage.name, params)
        found[stage.name] = read
    return found


@pytest.mark.parametrize("stage", [s.name for s in STAGES])
def test_a_stage_reads_only_the_params_it_declares(reads, stage):
    missing = undeclared(reads[stage], by_name(stage).params)
    assert not missing, (f"the {stage} stage reads {', '.join(missing)}, which pipeline/registry.py does not "
                         f"declare for it: a change to them would not rerun it. Declare them in its `params` "
                         f"(then python -m pipeline dag), or stop reading them")

