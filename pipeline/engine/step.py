"""The training step, in one place: the train stage, the estimate stage's calibration, the memory
model's test and the benchmarks all run these functions, so what is timed and measured is what
trains.

    step = TrainStep(model, optimizer_for(model, params.train), precision="fp16", device="cuda",
                     grad_clip=1.0)
    for x, y in micro_batches:
        loss = step.micro(x, y, accum=len(micro_batches))
    outcome = step.update()

autocast and the fp16 GradScaler are ours rather than accelerate's: accelerate, asked for fp16
on CPU, trains in fp32 while reporting fp16. optimizer_for follows train.optimizer: fused AdamW,
or Muon for the hidden matrices with fused AdamW for the rest, one MuonAdamW object that the
scaler, the LR scheduler and the checkpoints treat as any optimizer.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.optim import _muon
from transformers.pytorch_utils import Conv1D

from pipeline.model.compute import newton_schulz_precision
from pipeline.core.params import Train

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION_OF = {v: k for k, v in DTYPES.items()}


def optimizer_for(model: torch.nn.Module, train: Train) -> torch.optim.Optimizer:
    """train.optimizer for this model: fused AdamW (adamw), or Muon for the hidden matrices with
    fused AdamW for the rest (muon), as one optimizer object either way."""
    if train.optimizer == "muon":
        return muon_adamw(model, train)
    return torch.optim.AdamW(_adamw_groups(list(_trainable(model)), train), lr=train.lr,
                             betas=(train.beta1, train.beta2), fused=True)


def _trainable(model: torch.nn.Module):
    return (p for p in model.parameters() if p.requires_grad)


def _adamw_groups(params: list[torch.Tensor], train: Train) -> list[dict]:
    """AdamW that decays the matrices, token and position embeddings included (as GPT-2
    reproductions do); biases and LayerNorm/RMSNorm gains are 1-D and left alone."""
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def hidden_matrices(model: torch.nn.Module) -> list[torch.Tensor]:
    """The 2-D weights of the transformer blocks (attention and MLP projections): what Muon
    trains. The token and position embeddings and the lm_head are not hidden layers (Keller
    Jordan's Muon README: "embeddings, classifier heads, and hidden gains/biases should be
    optimized using standard AdamW"), nor are 1-D gains and biases."""
    outside = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    outside.add(id(model.get_output_embeddings().weight))
    return [p for p in _trainable(model) if p.dim() == 2 and id(p) not in outside]


def _fan_ratio(rows: int, cols: int) -> float:
    return math.sqrt(max(1.0, rows / cols))


def _muon_groups(model: torch.nn.Module, hidden: list[torch.Tensor], train: Train) -> list[dict]:
    """Muon scales each matrix's step by sqrt(max(1, rows / cols)) of its shape, i.e. by
    sqrt(fan_out / fan_in) for nn.Linear's (out, in) layout. GPT-2's Conv1D stores (in, out):
    its matrices get a group whose lr (and weight decay, so lr x wd stays muon_lr x
    muon_weight_decay) carries the ratio for their true orientation."""
    conv1d = {id(m.weight) for m in model.modules() if isinstance(m, Conv1D)}
    by_factor: dict[float, list[torch.Tensor]] = {}
    for p in hidden:
        rows, cols = p.shape
        factor = _fan_ratio(cols, rows) / _fan_ratio(rows, cols) if id(p) in conv1d else 1.0
        by_factor.setdefault(factor, []).append(p)
    return [{"params": ps, "lr": train.muon_lr * f, "weight_decay": train.muon_weight_decay / f}
            for f, ps in sorted(by_factor.items())]


def muon_adamw(model: torch.nn.Module, train: Train) -> MuonAdamW:
    hidden = hidden_matrices(model)
    ids = {id(p) for p in hidden}
    rest = [p for p in _trainable(model) if id(p) not in ids]
    device = hidden[0].device if hidden else torch.device("cpu")
    return MuonAdamW(_muon_groups(model, hidden, train), _adamw_groups(rest, train), lr=train.lr,
                     betas=(train.beta1, train.beta2), muon_lr=train.muon_lr, momentum=train.muon_momentum,
                     newton_schulz=newton_schulz_precision(device.type, bf16_native(device)))


def bf16_native(device: torch.device) -> bool:
    """Whether this device multiplies bf16 natively: what PyTorch itself asks before it takes the
    fast path (cuBLAS on sm_80+; oneDNN on CPUs with AVX512-bf16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def orthogonalize(grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float,
                  *, dtype: torch.dtype) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz iteration (torch/optim/_muon.py,
    _zeropower_via_newtonschulz, whose argument checks ran at construction) in `dtype` instead of
    its fixed bf16. The matrix is normalized before the cast, so no value passes fp16's 65504."""
    a, b, c = ns_coefficients
    x = (grad / grad.norm().clamp(min=eps)).to(dtype)  # Frobenius norm 1 bounds the spectral norm by 1
    if grad.size(0) > grad.size(1):
        x = x.T
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


@contextmanager
def _newton_schulz_in(precision: str):
    """torch.optim.Muon looks its Newton-Schulz function up by name at each step: run it in
    `precision` for the duration of one step (bf16: torch's own, untouched)."""
    if precision == "bf16":
        yield
        return
    original = _muon._zeropower_via_newtonschulz
    _muon._zeropower_via_newtonschulz = lambda *args: orthogonalize(*args, dtype=DTYPES[precision])
    try:
        yield
    finally:
        _muon._zeropower_via_newtonschulz = original


class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon (github.com/KellerJordan/Muon; Nesterov momentum, then five Newton-Schulz
    iterations that orthogonalize the step) for the hidden matrices and fused
    torch.optim.AdamW for everything else, as the one optimizer the train stage, GradScaler, the
    LR scheduler and the checkpoints see (as the Muon repository's MuonWithAuxAdam is one object):

    - param_groups are the two optimizers' own group dicts, AdamW's first (so the first group's lr,
      which the train log records, is train.lr's schedule as with adamw alone): an LR scheduler
      scales every group by the same factor, and defaults["lr"] is train.lr, so
      get_cosine_with_min_lr_schedule_with_warmup's min_lr / lr floor applies to both.
    - GradScaler: unscale_ sees every gradient through param_groups; this class does not claim
      _step_supports_amp_scaling, so on an fp16 overflow GradScaler.step skips step() as a whole
      and neither optimizer moves. (The torch AMP examples, "Working with multiple models, losses,
      and optimizers": each optimizer given to scaler.step decides on its own whether to skip, so
      one may skip while the other steps; one object for both never applies half an update.)
    - state_dict() holds both optimizers' state dicts (Muon keeps one momentum buffer per
      matrix, AdamW exp_avg and exp_avg_sq), so a checkpoint resumes exactly.
    - newton_schulz: what the iterations run in (pipeline.model.compute.newton_schulz_precision): torch's
      bf16 where the device has it natively, fp16 on a T4, fp32 on a CPU without AVX512-bf16/AMX.
    """

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], *, lr: float,
                 betas: tuple[float, float], muon_lr: float, momentum: float, newton_schulz: str = "bf16"):
        self.newton_schulz = newton_schulz
        self.adamw = torch.optim.AdamW([g for g in adamw_groups if g["params"]], lr=lr, betas=betas, fused=True)
        self.muon = torch.optim.Muon([g for g in muon_groups if g["params"]], lr=muon_lr, momentum=momentum,
                                     nesterov=True, adjust_lr_fn="original")
        groups = self.adamw.param_groups + self.muon.param_groups
        super().__init__([{"params": g["params"]} for g in groups], {"lr": lr})
        self.param_groups = groups  # the inner optimizers' dicts: a scheduler's lr reaches them

    @property
    def state(self) -> dict:
        """Both optimizers' per-parameter state (read-only view: each keeps its own)."""
        return {**self.adamw.state, **self.muon.state}

    @state.setter
    def state(self, value) -> None:
        if value:  # Optimizer.__init__ assigns an empty state; the real ones live in .adamw and .muon
            raise AttributeError("MuonAdamW keeps its state in .adamw and .muon")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.adamw.step()
        with _newton_schulz_in(self.newton_schulz):
            self.muon.step()
        return loss

    def state_dict(self) -> dict:
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != {"adamw", "muon"}:
            raise ValueError("not a MuonAdamW state (an AdamW checkpoint? train.optimizer changed)")
        self.adamw.load_state_dict(state_dict["adamw"])
        self.muon.load_state_dict(state_dict["muon"])
        # Optimizer.load_state_dict replaces each group dict with the loaded one: point at those,
        # or the LR scheduler would go on setting lrs the inner optimizers no longer read
        self.param_groups = self.adamw.param_groups + self.muon.param_groups


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
        loss, self.logits_dtype = loss_of(self.model if model is None else model, x, y, self.device, self.precision)
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
