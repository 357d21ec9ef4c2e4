"""What trains, built one way for every caller: the model, its optimizer, the one LR schedule, and
the step (pipeline/engine/step.py) that updates them.

    training = build_training(params, vocab, eos_token_id, device="cpu", precision="fp32",
                              activation_checkpointing=False)
    for index in range(steps):
        done = training.step(index, lambda micro: windows.batch(index, micro, 0, 1, 8), accum=4)

The train stage's Trainer, the estimate's calibration (pipeline/cost/pricing.py), the GPU check
(pipeline/tools/gpucheck/) and the benchmarks (bench/) all build it here and step it with these
methods, so what they time is what trains. A step is two halves, `forward_backward` then
`finish`: the Trainer agrees with the other processes on the loss and its stop flags in between.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from pipeline.core.errors import PipelineError
from pipeline.core.params import Params, Train
from pipeline.engine.step import TrainStep, Update, optimizer_for
from pipeline.model.build import build_model, count_parameters

Batch = tuple[torch.Tensor, torch.Tensor]


def lr_horizon(train: Train) -> int:
    """The steps the cosine schedule decays over: train.max_steps, or fewer where train.max_tokens
    ends the run first, so the LR reaches train.min_lr at the last step either way."""
    if train.max_tokens:
        return min(train.max_steps, math.ceil(train.max_tokens / train.tokens_per_step))
    return train.max_steps


def build_training(params: Params, vocab: int, eos_token_id: int, *, device: str | torch.device, precision: str,
                   activation_checkpointing: bool, compile: bool = False,
                   prepare: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> Training:
    """params.model from train.seed's initial weights on `device`, its optimizer (train.optimizer)
    and the LR schedule of lr_horizon. `prepare` wraps the model the forward runs through
    (accelerate's prepare: DDP across processes); the step updates the unwrapped weights."""
    train, device = params.train, torch.device(device)
    torch.manual_seed(train.seed)
    raw = build_model(params.model, vocab, eos_token_id).to(device)
    if activation_checkpointing:
        raw.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = torch.compile(raw) if compile else raw
    if prepare is not None:
        model = prepare(model)
    step = TrainStep(raw, optimizer_for(raw, train), precision=precision, device=device.type,
                     grad_clip=train.grad_clip)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(step.optimizer, train.warmup_steps, lr_horizon(train),
                                                            min_lr=train.min_lr)
    return Training(raw, model, step, scheduler, seed=train.seed, device=device)


@dataclass(frozen=True)
class Stepped:
    loss: float                 # the step's mean loss (non-finite: its gradients were dropped)
    update: Update | None       # None when the loss was non-finite


class Training:
    def __init__(self, raw: torch.nn.Module, model: torch.nn.Module, train_step: TrainStep, scheduler: Any, *,
                 seed: int, device: torch.device):
        self.raw = raw          # the weights: what checkpoints hold and validation scores
        self.model = model      # what the forward runs through: raw, compiled and/or DDP-wrapped
        self.train_step, self.scheduler = train_step, scheduler
        self.seed, self.device = seed, device
        self.parameters = count_parameters(raw)
        self._precision_checked = False

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.train_step.optimizer

    @property
    def scaler(self) -> torch.amp.GradScaler:
        return self.train_step.scaler

    @property
    def lr(self) -> float:
        """The LR the next update applies (the first param group's: AdamW's, under Muon too)."""
        return self.scheduler.get_last_lr()[0]

    @property
    def ran_precision(self) -> str | None:
        """The precision the logits really came out in; None before the first forward."""
        return self.train_step.ran_precision

    def forward_backward(self, index: int, batch: Callable[[int], Batch], accum: int, *, rank: int = 0,
                         after_micro: Callable[[], Any] | None = None) -> torch.Tensor:
        """Forward and backward of step `index`'s `accum` micro-batches (`batch(micro)` gives each)
        on this process; their mean loss, left on the device for the caller to read or reduce.

        Dropout draws from (train.seed, index, rank) alone, so a resumed run needs no RNG state.
        """
        torch.manual_seed(int(np.random.SeedSequence([self.seed, index, rank]).generate_state(1)[0]))
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(accum):
            x, y = batch(micro)
            # DDP averages the gradients in the last micro-batch's backward, once per step
            with nullcontext() if micro == accum - 1 else getattr(self.model, "no_sync", nullcontext)():
                loss_sum += self.train_step.micro(to_device(x, self.device), to_device(y, self.device), accum,
                                                  model=self.model)
            self._check_precision()
            if after_micro is not None:
                after_micro()
        return loss_sum / accum

    def finish(self, *, apply: bool) -> Update | None:
        """Apply the step's gradients (unscale, clip, the optimizer update, which the fp16 loss scaler
        skips on overflow) or, for a non-finite loss, drop them; then advance the LR schedule."""
        update = self.train_step.update() if apply else self.train_step.discard()
        self.scheduler.step()
        return update

    def step(self, index: int, batch: Callable[[int], Batch], accum: int, *,
             after_micro: Callable[[], Any] | None = None) -> Stepped:
        """One whole optimizer step in one process: updated unless the loss is non-finite."""
        loss = self.forward_backward(index, batch, accum, after_micro=after_micro).item()
        return Stepped(loss, self.finish(apply=math.isfinite(loss)))

    def _check_precision(self) -> None:
        """A precision the device does not run is never claimed: autocast can fall back silently."""
        if self._precision_checked:
            return
        self._precision_checked = True
        asked, ran = self.train_step.precision, self.ran_precision
        if ran != asked:
            raise PipelineError(f"asked for {asked} but the model computed in {ran} on {self.device.type}: set "
                                "train.precision to one this device runs")


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU batch onto `device`; to a GPU through pinned memory, so the copy overlaps the compute."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t
