"""Helpers for the train-stage tests: a tiny GPT-2 on the demo corpus's real tokens.

2 layers x 64 wide, context 64, 8 sequences (512 tokens) per optimizer step: a step costs
milliseconds, so the tests can afford real training runs. The recipe is pinned to gpt2 + AdamW,
whose fp32 loss curve is the same on every CPU to float rounding (tests/golden); Muon's Newton-
Schulz precision follows the CPU (pipeline.model.compute.newton_schulz_precision). tests/test_step.py
runs every architecture x optimizer through the stage, and the end-to-end tests (tests/tiny.yaml)
run the default recipe.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from pipeline.core import params as params_module

ROOT = Path(__file__).resolve().parent.parent
DEMO_FILES = [ROOT / "params.yaml", ROOT / "params" / "demo.yaml"]
TINY = (
    "model.architecture=gpt2", "train.optimizer=adamw", "model.n_layer=2", "model.n_embd=64", "model.n_head=2", "model.context=64",
    "train.tokens_per_step=512", "train.micro_batch_size=8", "train.precision=fp32", "train.device=cpu",
    "train.activation_checkpointing=false", "train.lr=0.02", "train.min_lr=0.002", "train.warmup_steps=5",
    "train.max_steps=20", "train.eval_every=10", "train.eval_batches=2", "train.checkpoint_every=10",
    "train.log_every=5",
)


def tiny_sets(demo_tokens, base: Path, *overrides: str) -> list[str]:
    """--set items: the demo's tokens and tokenizer, every output under `base`, the tiny model."""
    data = demo_tokens.params.paths
    paths = [f"paths.tokens={data.tokens}", f"paths.tokenizer={data.tokenizer}",
             f"paths.reports={base / 'reports'}", f"paths.checkpoints={base / 'checkpoints'}",
             f"paths.model={base / 'model'}"]
    return paths + list(TINY) + list(overrides)


def tiny_params(demo_tokens, base: Path, *overrides: str, plan: bool = True) -> params_module.Params:
    """The params, with the estimate stage's plan for them written where train reads it (as a
    driver runs estimate first): the planner's own plan, without the estimate's pricing."""
    params = params_module.load(DEMO_FILES, tiny_sets(demo_tokens, base, *overrides))
    if plan:
        write_plan(params, demo_tokens.manifest["vocab_size"])
    return params


def write_plan(params: params_module.Params, vocab: int) -> None:
    from pipeline.cost import hardware
    from pipeline.cost.planner import plan_for

    fit = plan_for(params, hardware.get_device(params.cost), vocab)
    fit.plan.write(params.paths.reports / "plan.json")


def cli(demo_tokens, base: Path, *overrides: str, plan: bool = True) -> list[str]:
    """The train stage's command line for the same run (for tests that signal the process), its
    plan written as tiny_params writes it."""
    tiny_params(demo_tokens, base, *overrides, plan=plan)
    args = [sys.executable, "-m", "pipeline", "train"]
    for f in DEMO_FILES:
        args += ["--params", str(f)]
    for item in tiny_sets(demo_tokens, base, *overrides):
        args += ["--set", item]
    return args


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600, **kwargs)


def final_weights(base: Path) -> dict[str, torch.Tensor]:
    return load_file(base / "model" / "model.safetensors")


def report(base: Path) -> dict:
    return json.loads((base / "reports" / "train.json").read_text())


def manifest(base: Path) -> dict:
    return json.loads((base / "checkpoints" / "manifest.json").read_text())


def train_losses(base: Path) -> list[float | None]:
    history = json.loads((base / "checkpoints" / manifest(base)["latest"] / "history.json").read_text())
    return [e["loss"] for e in history["train"]]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)
