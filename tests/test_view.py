"""A stage sees its declared params alone (pipeline/core/view.py): every read of another key, by
attribute or by a dump, raises UndeclaredParam naming the stage, the key and the line that read it.

The stages' own reads are checked where they run: every test that calls run_stage, and
tests/test_declared_params.py on the whole pipeline.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline import registry
from pipeline.__main__ import main
from pipeline.core import params as params_module
from pipeline.core.params import Model, Params
from pipeline.core.view import UndeclaredParam, view
from pipeline.registry import by_name, run_stage

ROOT = Path(__file__).resolve().parent.parent
THIS_FILE = Path(__file__).relative_to(ROOT).as_posix()
DECLARED = ("paths.tokens", "model", "train.lr", "train.min_lr", "train.max_steps")


@pytest.fixture(scope="module")
def params() -> Params:
    return params_module.load([ROOT / "params.yaml"])   # train.lr and train.min_lr are auto there


@pytest.fixture(scope="module")
def seen(params) -> Params:
    return view(params, "train", DECLARED)


def refused(key: str, stage: str = "train") -> str:
    return f"the {stage} stage reads {key} ({THIS_FILE}:"


# ---- what passes -----------------------------------------------------------------------------------

def test_the_declared_keys_read_as_they_are(params, seen):
    assert seen.paths.tokens == params.paths.tokens and seen.train.lr == params.train.lr
    assert seen.section("model") == params.section("model") and seen.model == params.model
    assert seen.is_auto("train.lr") and seen.auto_notes() == params.auto_notes()


def test_a_view_is_the_params_library_code_takes(params, seen):
    assert isinstance(seen, Params) and isinstance(seen.model, Model)
    assert Model.model_validate(seen.model) is seen.model   # a pydantic field typed Model takes it as it is


def test_repr_shows_the_declared_fields_alone(seen):
    assert repr(seen.paths) == f"PathsView(tokens={seen.paths.tokens!r})"


# ---- what raises -----------------------------------------------------------------------------------

def test_an_undeclared_field_raises_naming_the_stage_the_key_and_the_line(seen):
    with pytest.raises(UndeclaredParam) as caught:
        seen.train.warmup_steps
    message = str(caught.value)
    assert message.startswith(refused("train.warmup_steps")) and "\n" not in message
    assert "pipeline/registry.py" in message and "python -m pipeline dag" in message
    assert caught.value.exit_code == 1


def test_getattr_with_a_default_and_hasattr_do_not_swallow_it(seen):
    # an AttributeError would turn a read of an undeclared key into the default, silently
    with pytest.raises(UndeclaredParam, match="cost.hardware"):
        getattr(seen.cost, "hardware", "t4-16gb")
    with pytest.raises(UndeclaredParam, match="cost.hardware"):
        hasattr(seen.cost, "hardware")


@pytest.mark.parametrize("dump", [lambda s: s.section("train"), lambda s: s.train.model_dump(),
                                  lambda s: s.train.model_dump_json(), lambda s: dict(s.train),
                                  lambda s: s.train == s.train, lambda s: hash(s.train)],
                         ids=["section", "model_dump", "model_dump_json", "dict", "eq", "hash"])
def test_a_dump_of_a_section_that_holds_an_undeclared_field_raises(seen, dump):
    first = next(name for name in params_module.Train.model_fields if f"train.{name}" not in DECLARED)
    with pytest.raises(UndeclaredParam, match=f"the train stage reads train.{first} "):
        dump(seen)


def test_a_dump_of_the_whole_params_raises(seen):
    with pytest.raises(UndeclaredParam, match="paths.corpus"):
        seen.as_dict()


def test_whether_an_undeclared_key_was_auto_raises(params):
    without_lr = view(params, "evaluate", ("train.device",))
    with pytest.raises(UndeclaredParam, match="train.lr"):
        without_lr.is_auto("train.lr")
    with pytest.raises(UndeclaredParam, match="train.lr"):
        without_lr.auto_notes()   # "train.lr auto: 0.0006 = ..." tells its value


def test_a_copy_keeps_the_guard(seen):
    copy = seen.model_copy(update={"train": seen.train.model_copy(update={"lr": 0.01})})
    assert copy.train.lr == 0.01 and copy.model == seen.model
    with pytest.raises(UndeclaredParam, match="train.seed"):
        copy.train.seed


# ---- through a stage -------------------------------------------------------------------------------

@pytest.fixture
def tokenize_without_val_fraction(monkeypatch):
    """The registry with tokenize's data.val_fraction left out: the first key the stage reads
    after the vocabulary size, before it opens a file."""
    tokenize = by_name("tokenize")
    lacking = dataclasses.replace(tokenize, params=tuple(k for k in tokenize.params if k != "data.val_fraction"))
    monkeypatch.setattr(registry, "STAGES", tuple(lacking if s is tokenize else s for s in registry.STAGES))


def test_a_stage_that_reads_an_undeclared_key_gets_the_named_error(tokenize_without_val_fraction, tmp_path):
    params = params_module.load([ROOT / "params.yaml"], [f"paths.clean={tmp_path / 'clean'}"])
    with pytest.raises(UndeclaredParam) as caught:
        run_stage("tokenize", params)
    assert str(caught.value).startswith("the tokenize stage reads data.val_fraction (pipeline/stages/tokenize.py:")
    assert not (tmp_path / "clean").exists()


def test_the_cli_says_it_in_one_line_and_exits_1(tokenize_without_val_fraction, tmp_path, capsys):
    code = main(["tokenize", "--params", str(ROOT / "params.yaml"), "--set", f"paths.clean={tmp_path / 'clean'}",
                 "--set", f"paths.tokens={tmp_path / 'tokens'}", "--set", f"paths.tokenizer={tmp_path / 'tokenizer'}"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: the tokenize stage reads data.val_fraction (pipeline/stages/tokenize.py:")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())   # nothing written


def test_the_view_is_in_no_stages_code_deps():
    """It changes no output, it only refuses a read: an edit to it reruns nothing."""
    assert not any("pipeline/core/view.py" in stage.all_deps for stage in registry.STAGES)
