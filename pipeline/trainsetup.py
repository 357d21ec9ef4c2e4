"""How a run is laid out on this hardware: micro-batch, accumulation, precision, activation
checkpointing, from params, else from the estimate stage's reports/plan.json, else defaults.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import PipelineError
from pipeline.params import Params

PRECISIONS = ("fp32", "fp16", "bf16")
# Default micro-batch when there is no plan: small enough for any GPU at GPT-2 small's context.
FALLBACK_MICRO_BATCH = 8


@dataclass(frozen=True)
class Setup:
    device: str
    world: int
    micro_batch_size: int
    grad_accum_steps: int
    precision: str
    activation_checkpointing: bool
    compile: bool
    settings_from: str  # where micro-batch/precision/checkpointing came from: params, plan or defaults


def resolve_setup(params: Params, plan_path: Path, device: str, world: int) -> Setup:
    """Micro-batch, accumulation, precision and activation checkpointing, from params, plan or default."""
    train, context = params.train, params.model.context
    if train.tokens_per_step % context:
        raise PipelineError(f"train.tokens_per_step ({train.tokens_per_step}) must be a multiple of "
                            f"model.context ({context})")
    seqs = train.tokens_per_step // context
    if seqs % world:
        raise PipelineError(f"train.tokens_per_step / model.context = {seqs} sequences per step cannot be "
                            f"split over {world} processes: change train.tokens_per_step")
    per_rank = seqs // world
    auto = [k for k in ("micro_batch_size", "precision", "activation_checkpointing") if getattr(train, k) == "auto"]
    plan: dict[str, Any] = {}
    source = "params"
    if auto and plan_path.is_file():
        plan = json.loads(plan_path.read_text(encoding="utf-8"))
        source = f"params + {plan_path}"
    elif auto:
        source = "params + defaults (no plan)"
        print(f"note: {plan_path} not found (run the estimate stage to plan); for train.{', train.'.join(auto)} "
              f"= auto using defaults: largest micro-batch <= {FALLBACK_MICRO_BATCH} dividing {per_rank} "
              "sequences, fp32 on CPU (bf16 on CUDA with native bf16, else fp16), no activation checkpointing")

    micro = train.micro_batch_size
    if micro == "auto":
        micro = plan.get("micro_batch_size") or max(d for d in range(1, FALLBACK_MICRO_BATCH + 1) if per_rank % d == 0)
    if per_rank % micro:
        where = "train.micro_batch_size" if train.micro_batch_size != "auto" else f"{plan_path} (rerun estimate)"
        raise PipelineError(f"micro-batch {micro} from {where} does not divide the {per_rank} sequences each of "
                            f"{world} process(es) runs per step (train.tokens_per_step / model.context / processes)")

    precision = train.precision
    if precision == "auto":
        precision = plan.get("precision") or default_precision(device)
    if precision not in PRECISIONS:
        raise PipelineError(f"{plan_path} plans precision {precision!r}, not fp32, fp16 or bf16: rerun estimate")
    if precision == "bf16" and device == "cuda" and torch.cuda.get_device_capability()[0] < 8:
        raise PipelineError(f"train.precision bf16 on {torch.cuda.get_device_name()}: no native bf16 here "
                            "(only slow emulation); use fp16 or rerun estimate")

    checkpointing = train.activation_checkpointing
    if checkpointing == "auto":
        checkpointing = bool(plan.get("activation_checkpointing", False))
    return Setup(device=device, world=world, micro_batch_size=micro, grad_accum_steps=per_rank // micro,
                 precision=precision, activation_checkpointing=checkpointing, compile=train.compile,
                 settings_from=source)


def resolve_device(wanted: str) -> str:
    if wanted == "cuda" and not torch.cuda.is_available():
        raise PipelineError("train.device is cuda but torch sees no CUDA device: set train.device to auto or cpu")
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def default_precision(device: str) -> str:
    if device == "cpu":
        return "fp32"
    return "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16"
