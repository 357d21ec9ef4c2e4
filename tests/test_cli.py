"""The command line as users run it: `python -m pipeline ...` in a subprocess."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.__main__ import TOOLS
from pipeline.registry import STAGES as _STAGES

STAGES = [s.name for s in _STAGES]

ROOT = Path(__file__).resolve().parent.parent
DEMO = ["--params", "params.yaml", "--params", "params/demo.yaml"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_help_lists_every_stage():
    result = cli("--help")
    assert result.returncode == 0
    for name in (*STAGES, *TOOLS):
        assert name in result.stdout


@pytest.mark.parametrize("stage", [*STAGES, *TOOLS])
def test_help_per_stage(stage):
    result = cli(stage, "--help")
    assert result.returncode == 0, result.stderr
    assert "--params FILE" in result.stdout and "--set KEY=VALUE" in result.stdout


def test_a_known_error_is_one_line_and_exit_code_2(tmp_path):
    result = cli("clean", *DEMO, "--set", f"paths.corpus={tmp_path / 'missing'}")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: paths.corpus")
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_bad_params_exit_2_naming_every_key():
    result = cli("tokenize", "--set", "data.val_fraction=2", "--set", "tokenizer.vocab_size=many")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "data.val_fraction" in result.stderr and "tokenizer.vocab_size" in result.stderr


def test_demo_corpus_then_tokenize(tmp_path):
    corpus = tmp_path / "demo"
    made = cli("demo-corpus", *DEMO, "--out", str(corpus), "--size-mb", "0.3")
    assert made.returncode == 0 and "wrote 4 files" in made.stdout
    assert "up to date" in cli("demo-corpus", *DEMO, "--out", str(corpus), "--size-mb", "0.3").stdout
    paths = [f"paths.{name}={tmp_path / name}" for name in ("clean", "reports", "tokens", "tokenizer")]
    sets = [item for value in [f"paths.corpus={corpus}", *paths, "data.val_fraction=0.1", "tokenizer.vocab_size=1000"]
            for item in ("--set", value)]
    cleaned = cli("clean", *DEMO, *sets)
    assert cleaned.returncode == 0 and "kept" in cleaned.stdout, cleaned.stderr
    result = cli("tokenize", *DEMO, *sets)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "tokens" / "manifest.json").read_text(encoding="utf-8"))
    assert f"{manifest['train_tokens']:,}" in result.stdout and manifest["vocab_size"] <= 1000
