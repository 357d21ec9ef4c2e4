"""Output folders that are mount points (a container's volume on models/final or data/tokens):
they cannot be renamed aside, so each stage replaces what is inside them, and ends as it does on
any other folder."""
from __future__ import annotations

from transformers import AutoModelForCausalLM

from mountkit import tmpfs
from pipeline.data.tokens import load as load_manifest
from test_unwritable import stage_cli
from trainkit import cli, report, run_cli

MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
RUN = ("train.max_steps=2", "train.eval_every=2", "train.checkpoint_every=2")


def test_train_replaces_a_mounted_model_folder(demo_tokens, tmp_path):
    model = tmp_path / "model"
    with tmpfs(model, "size=64m"):
        (model / "left-over.txt").write_text("what an earlier run left in the volume\n")
        for steps in (2, 3):   # into the volume, then over what it wrote there
            done = run_cli(cli(demo_tokens, tmp_path, *RUN, f"train.max_steps={steps}"))
            assert done.returncode == 0, done.stderr
            assert {p.name for p in model.iterdir()} == MODEL_FILES
            assert report(tmp_path)["steps"] == steps
        AutoModelForCausalLM.from_pretrained(model, local_files_only=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_tokenize_replaces_mounted_token_and_tokenizer_folders(demo_tokens, tmp_path):
    tokens, tokenizer = tmp_path / "tokens", tmp_path / "tokenizer"
    with tmpfs(tokens, "size=64m"), tmpfs(tokenizer, "size=8m"):
        for _ in range(2):
            done = run_cli(stage_cli("tokenize", f"paths.clean={demo_tokens.params.paths.clean}",
                                     f"paths.tokenizer={tokenizer}", f"paths.tokens={tokens}",
                                     "tokenizer.vocab_size=512"))
            assert done.returncode == 0, done.stderr
            assert load_manifest(tokens, tokenizer).vocab_size == 512   # verified against its checksums
            assert {p.name for p in tokens.iterdir()} == {"train.bin", "val.bin", "manifest.json"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
