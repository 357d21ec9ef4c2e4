"""Params: shipped files load, overlays and --set merge, and every problem is reported at once."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.core import params as P
from pipeline.core.errors import PipelineError
from pipeline.core.params import architecture_names

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "params.yaml"
DEMO = ROOT / "params" / "demo.yaml"


@pytest.mark.parametrize("files", [[BASE], [BASE, DEMO]], ids=["params.yaml", "demo overlay"])
def test_shipped_params_load(files):
    params = P.load(files)
    assert params.model.n_embd % params.model.n_head == 0
    assert params.tokenizer.vocab_size <= 2**16        # the defaults keep uint16 token files


def test_every_demo_key_exists_in_params_yaml():
    base, demo = P.flatten(P.merge_files([BASE])), P.flatten(P.merge_files([DEMO]))
    assert set(demo) <= set(base)


def test_overlay_merges_sections_key_by_key():
    base, demo = P.load([BASE]), P.load([BASE, DEMO])
    assert demo.model.n_layer == 4 and demo.model.context == 256      # from the overlay
    assert demo.train.beta2 == base.train.beta2                       # untouched keys survive
    assert demo.paths.tokens == base.paths.tokens
    assert demo.paths.corpus == Path("data/demo") != base.paths.corpus


def test_set_overrides_files_and_parses_yaml_values():
    params = P.load([BASE, DEMO], ["train.lr=3e-4", "cost.budget_usd=null", "train.compile=true",
                                   "train.micro_batch_size=8", "cost.hardware=a100-80gb",
                                   "data.text_field=content"])
    assert params.train.lr == 3e-4 and params.cost.budget_usd is None and params.train.compile is True
    assert params.train.micro_batch_size == 8 and params.cost.hardware == "a100-80gb"
    assert params.data.text_field == "content"


def test_all_problems_are_reported_at_once_each_naming_its_key():
    with pytest.raises(PipelineError) as info:
        P.load([BASE], ["data.val_fraction=1.5", "model.n_head=5", "train.lr=-1", "tokenizer.vocab_szie=10",
                        "data.format=csv"])
    message = str(info.value)
    assert message.startswith("5 problem(s) in")
    for key in ("data.val_fraction", "model:", "n_head (5)", "train.lr", "tokenizer.vocab_szie: unknown key",
                "data.format"):
        assert key in message, key


@pytest.mark.parametrize("value, message", [
    ('{"flores": "/data/flores.txt"}', "flores: /data/flores.txt must be a path inside paths.eval_data"),
    ('{"flores": "../flores.txt"}', "flores: ../flores.txt must be a path inside paths.eval_data"),
    ('{"flores.azj": "flores.txt"}', "'flores.azj': a name of letters, digits, '_' and '-'"),
])
def test_evaluation_data_is_named_inside_paths_eval_data(value, message):
    """DVC tracks paths.eval_data: a file elsewhere could change without rerunning evaluate."""
    for key in ("evaluate.reference_texts", "evaluate.tasks"):
        with pytest.raises(PipelineError) as info:
            P.load([BASE], [f"{key}={value}"])
        assert f"{key}: {message}" in str(info.value)


def test_an_unknown_architecture_is_one_problem_naming_the_choices_and_the_closest():
    with pytest.raises(PipelineError) as info:
        P.load([BASE], ["model.architecture=qwen"])
    message = str(info.value)
    assert message.startswith("1 problem(s) in")
    assert "model.architecture: unknown architecture 'qwen' (did you mean 'qwen3'?): one of " in message
    assert all(name in message for name in architecture_names())


def test_unknown_sections_and_missing_keys(tmp_path):
    (tmp_path / "extra.yaml").write_text("tokenise:\n  vocab_size: 10\n", encoding="utf-8")
    with pytest.raises(PipelineError, match="tokenise: unknown key"):
        P.load([BASE, tmp_path / "extra.yaml"])
    (tmp_path / "partial.yaml").write_text("paths:\n  corpus: x\n", encoding="utf-8")
    with pytest.raises(PipelineError, match=r"data: missing"):
        P.load([tmp_path / "partial.yaml"])


def test_params_are_frozen():
    params = P.load([BASE])
    with pytest.raises(Exception):
        params.train.lr = 1.0


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    ("a: [unclosed\n", "not valid YAML"),
    ("- a list\n", "must hold a mapping"),
])
def test_bad_params_files(tmp_path, content, message):
    path = tmp_path / "p.yaml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(PipelineError, match=message):
        P.load([path])


def test_bad_set_syntax():
    with pytest.raises(PipelineError, match="expected dotted.key=value"):
        P.load([BASE], ["train.lr"])
    with pytest.raises(PipelineError, match=r"train\.lr\.x=1.: lr is not a section"):
        P.load([BASE], ["train.lr.x=1"])


@pytest.mark.parametrize("text, key, line, first", [
    ("train:\n  lr: 0.001\n  seed: 2\n  lr: 0.002\n", "train.lr", 4, 2),
    ("train:\n  lr: 0.001\nmodel:\n  n_layer: 2\ntrain:\n  seed: 3\n", "train", 5, 1),
    ("cost:\n  extra_hardware:\n    mine:\n      peak_tflops: 1\n      peak_tflops: 2\n",
     "cost.extra_hardware.mine.peak_tflops", 5, 4),
], ids=["key", "section", "nested key"])
def test_a_key_or_section_given_twice_is_refused_naming_both_lines(tmp_path, text, key, line, first):
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    expected = f"{path}:{line}: {key} is given twice (first at line {first}): keep one"
    with pytest.raises(PipelineError) as info:
        P.load([BASE, path])
    assert str(info.value) == expected
    with pytest.raises(PipelineError) as info:       # the Snakefile reads files through merge_files
        P.merge_files([BASE, path])
    assert str(info.value) == expected


def test_a_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  lr: 0.001\n   seed: 2\n", encoding="utf-8")
    with pytest.raises(PipelineError) as info:
        P.load([path])
    assert str(info.value) == (f"params file {path}:3:8: mapping values are not allowed here "
                               "(not valid YAML: indent with spaces, close every quote and bracket)")


def test_a_params_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_bytes(b"data:\n  text_field: caf\xe9\n")
    with pytest.raises(PipelineError, match=rf"params file {path} is not UTF-8 text .*offset 23.*save it as UTF-8"):
        P.load([path])


def test_booleans_are_not_numbers_but_exponents_without_a_dot_are(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  micro_batch_size: true\n  lr: 3e-4\n", encoding="utf-8")
    with pytest.raises(PipelineError) as info:
        P.load([BASE, path], ["model.n_head=false", "cost.budget_usd=true", "train.seed=yes"])
    message = str(info.value)
    assert message.startswith("4 problem(s)")
    for key, value in (("train.micro_batch_size", "true"), ("model.n_head", "false"),
                       ("cost.budget_usd", "true"), ("train.seed", "true")):
        assert f"  - {key}: {value} is a boolean, not a number\n" in message, key
    # YAML 1.1 reads 3e-4 (no dot) as a string; it still means the number, in a file or in --set
    assert isinstance(yaml.safe_load("3e-4"), str)
    path.write_text("train:\n  lr: 3e-4\n", encoding="utf-8")
    assert P.load([BASE, path]).train.lr == 3e-4
    assert P.load([BASE], ["train.lr=3e-4"]).train.lr == 3e-4
