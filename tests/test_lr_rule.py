"""train.lr: auto, AdamW's learning rate from the model's width for either optimizer, and train.min_lr:
auto, a tenth of it (pipeline/core/params.py auto_lr): resolved once by load, so the optimizer, the
run's identity, the records and the printed lines all see the same numbers; a number still
overrides; bad values are one line naming the key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.core import params as P
from pipeline.core.errors import PipelineError
from pipeline.engine.identity import identity
from pipeline.engine.step import optimizer_for
from pipeline.model.build import build_model
from pipeline.registry import run_stage
from trainkit import cli, report, run_cli, tiny_params

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "params.yaml", ROOT / "params" / "demo.yaml"]


def test_the_shipped_defaults_are_auto_and_the_demo_carries_no_lr_of_its_own():
    shipped = P.merge_files([ROOT / "params.yaml"])["train"]
    assert (shipped["lr"], shipped["min_lr"]) == ("auto", "auto")
    assert not {"lr", "min_lr"} & set(P.merge_files([ROOT / "params" / "demo.yaml"])["train"])


@pytest.mark.parametrize("width, expected", [(768, 6e-4), (1024, 4.5e-4), (384, 1.2e-3), (256, 1.8e-3), (128, 2e-3)])
@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_auto_lr_is_inverse_in_width_from_gpt2_smalls_up_to_a_cap(width, expected, optimizer):
    params = P.load(FILES, [f"model.n_embd={width}", "model.n_head=4", f"train.optimizer={optimizer}"])
    assert params.train.lr == pytest.approx(expected, rel=1e-12)
    assert params.train.min_lr == pytest.approx(expected / 10, rel=1e-12)
    assert params.section("train")["lr"] == pytest.approx(expected)   # what train.json's params record
    assert params.auto_notes() == [f"train.lr auto: {expected:.3g} = min(0.002, 0.0006 x 768/{width})",
                                   f"train.min_lr auto: {expected / 10:.3g} = train.lr x 0.1"]


def test_a_number_overrides_and_then_nothing_is_said_about_auto():
    params = P.load(FILES, ["train.lr=0.001", "train.min_lr=0"])
    assert (params.train.lr, params.train.min_lr) == (0.001, 0) and params.auto_notes() == []
    floor_only = P.load(FILES, ["train.lr=0.001"])   # min_lr auto follows the number
    assert floor_only.train.min_lr == pytest.approx(1e-4) and len(floor_only.auto_notes()) == 1


def test_copies_keep_the_note():
    params = P.load(FILES)
    copy = params.model_copy(update={"paths": params.paths.model_copy(update={"tokens": Path("/x")})})
    assert copy.auto_notes() == params.auto_notes() != []


@pytest.mark.parametrize("value, words", [("fast", ["train.lr", "'auto'", "number"]),
                                          ("-1", ["train.lr", "'auto'", "greater than 0"]),
                                          ("true", ["train.lr", "boolean"])])
def test_a_bad_lr_is_one_problem_naming_the_key(value, words):
    with pytest.raises(PipelineError) as caught:
        P.load(FILES, [f"train.lr={value}"])
    problems = [line for line in str(caught.value).splitlines() if line.startswith("  - ")]
    assert len(problems) == 1 and all(w in problems[0] for w in words), problems


def test_a_floor_above_the_auto_lr_names_both_keys_and_the_fix():
    with pytest.raises(PipelineError) as caught:
        P.load(FILES, ["model.n_embd=1024", "train.min_lr=0.001"])   # auto: 4.5e-4
    message = str(caught.value)
    assert "\n" not in message
    assert "train.min_lr (0.001)" in message and "train.lr auto (0.00045" in message and "set train.lr" in message


def test_a_floor_above_a_number_is_the_same_one_line():
    with pytest.raises(PipelineError) as caught:
        P.load(FILES, ["train.lr=0.001", "train.min_lr=0.002"])
    assert str(caught.value) == ("train.min_lr (0.002) exceeds train.lr (0.001): lower train.min_lr or set it "
                                 "to auto, or set train.lr to a larger number")


@pytest.mark.parametrize("architecture, optimizer", [("qwen3", "muon"), ("gpt2", "adamw")])
def test_the_optimizers_adamw_groups_get_the_resolved_lr(architecture, optimizer):
    params = P.load(FILES, ["model.n_layer=1", "model.n_embd=64", "model.n_head=2", "model.context=16",
                            f"model.architecture={architecture}", f"train.optimizer={optimizer}"])
    model = build_model(params.model, 64, 0)
    groups = optimizer_for(model, params.train).param_groups
    adamw = [g for g in groups if "betas" in g]
    assert adamw and all(g["lr"] == pytest.approx(2e-3) for g in adamw)
    if optimizer == "muon":   # Muon's matrices keep their own lr
        assert {g["lr"] for g in groups if "betas" not in g} == {params.train.muon_lr}


def test_the_run_identity_sees_the_resolved_lr():
    """A checkpoint made at one width's auto lr is another run at another's, and auto is the same run
    as the number it resolves to (a resume across that edit goes on)."""
    manifest = SimpleNamespace(vocab_size=512, eot_token_id=0, sha256={"train.bin": "a", "val.bin": "b"},
                               tokenizer_sha256="c")
    auto = P.load(FILES)
    same = P.load(FILES, [f"train.lr={auto.train.lr!r}"])
    assert identity(auto, manifest) == identity(same, manifest)
    assert identity(auto, manifest)["train.lr"] == pytest.approx(1.8e-3)
    assert identity(P.load(FILES, ["train.lr=0.002"]), manifest)["train.lr"] == 0.002


def test_the_cli_refuses_a_bad_lr_with_exit_2_and_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pipeline", "estimate", "--params", str(FILES[0]),
                           "--params", str(FILES[1]), "--set", "train.min_lr=0.01"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    assert "train.min_lr (0.01) exceeds train.lr auto (0.0018 at model.n_embd 256)" in done.stderr


def test_train_prints_and_records_the_auto_lr_and_resumes_as_the_same_run(demo_tokens, tmp_path):
    """End to end: the train stage's CLI says which lr auto chose and why, train.json records the
    number, and the same number written out resumes that run's checkpoint (the identity is the value)."""
    done = run_cli(cli(demo_tokens, tmp_path, "train.lr=auto", "train.min_lr=auto", "train.max_steps=2",
                       "train.checkpoint_every=2"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "train.lr auto: 0.002 = min(0.002, 0.0006 x 768/64)" in done.stdout
    assert "train.min_lr auto: 0.0002 = train.lr x 0.1" in done.stdout
    assert report(tmp_path)["params"]["train"]["lr"] == pytest.approx(2e-3)
    resumed = run_stage("train", tiny_params(demo_tokens, tmp_path, "train.lr=0.002", "train.min_lr=0.0002",
                                             "train.max_steps=4", "train.checkpoint_every=2")).as_dict()
    assert (resumed["resumed_from"], resumed["steps"]) == ("step-000002", 4)
