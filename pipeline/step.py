"""The training step, in one place: the train stage, the estimate stage's calibration, the memory
model's test and the benchmarks all run these functions, so what is timed and measured is what
trains.

    step = TrainStep(model, optimizer_for(model, params.train), precision="fp16", device="cuda",
                     grad_clip=1.0)
    for x, y in micro_batches:
        loss = step.micro(x, y, accum=len(micro_batches))
    outcome = step.update()

autocast and the fp16 GradScaler are ours rather than accelerate's: accelerate, asked for fp16
on CPU, trains in fp32 while reporting fp16.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.params import Train

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION_OF = {v: k for k, v in DTYPES.items()}


def optimizer_for(model: torch.nn.Module, train: Train) -> torch.optim.Optimizer:
    """AdamW that decays the matrices, token and position embeddings included (as GPT-2
    reproductions do); biases and LayerNorm gains are 1-D and left alone."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), fused=True)


def autocast(device: str, precision: str):
    return torch.autocast(device, dtype=DTYPES[precision], enabled=precision != "fp32")


def loss_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: str,
            precision: str) -> tuple[torch.Tensor, torch.dtype]:
    """Mean next-token cross-entropy, and the dtype the logits really came out in."""
    with autocast(device, precision):
        logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    return loss, logits.dtype


@dataclass(frozen=True)
class Update:
    applied: bool               # False: fp16 overflow, GradScaler skipped the optimizer step
    grad_norm: float | None     # before clipping


class TrainStep:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, precision: str, device: str,
                 grad_clip: float):
        self.model, self.optimizer = model, optimizer
        self.precision, self.device, self.grad_clip = precision, device, grad_clip
        self.scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
        self.logits_dtype: torch.dtype | None = None

    def micro(self, x: torch.Tensor, y: torch.Tensor, accum: int, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its (detached) mean loss. `model` may
        be a DDP-wrapped view of the same weights."""
        loss, self.logits_dtype = loss_of(model or self.model, x, y, self.device, self.precision)
        # every micro-batch holds the same number of tokens, so mean / accum is the step's mean
        self.scaler.scale(loss / accum).backward()
        return loss.detach()

    def update(self) -> Update:
        """Unscale, clip, step (skipped by GradScaler on fp16 overflow), zero the gradients."""
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip or math.inf)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        applied = scale is None or self.scaler.get_scale() >= scale
        return Update(applied=applied, grad_norm=norm.item())

    def discard(self) -> None:
        """Drop this step's gradients (a non-finite loss): the weights stay as they were."""
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def ran_precision(self) -> str | None:
        return PRECISION_OF.get(self.logits_dtype, str(self.logits_dtype)) if self.logits_dtype else None
