"""The plan as the train stage runs it: reports/plan.json (written by the estimate stage's planner,
pipeline/cost/planner.py), checked against this machine and params.

The plan carries everything train needs from the hardware catalog (the device's peak for MFU, the
key its measured speed is learned under), so train never reads the catalog: a price edit there
cannot rerun it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError
from pipeline.core.params import Params
from pipeline.core.record import Record


class Plan(Record):
    """reports/plan.json: the plan alone, so a budget change leaves it byte-identical and no
    driver retrains for it."""

    FORMAT = 2
    WRITTEN_BY = "estimate"

    device: str                 # the catalog name planned for (cost.hardware)
    device_kind: str            # "cpu" | "cuda": what train must be running on
    devices: int                # cost.num_devices: processes that share each step
    micro_batch_size: int
    grad_accum_steps: int
    precision: str
    activation_checkpointing: bool
    tokens_per_step: int
    optimizer: str              # train.optimizer: its state is in the memory fit, its update in the price
    model: dict[str, Any]       # the model section planned for
    peak_flops: float           # the device's peak in this precision, per device: what train's MFU is of
    calibration_key: str        # where train keeps the speed it measured (pipeline/cost/calibration.py)


# ---- the device this process runs on -----------------------------------------------------------

def resolve_device(wanted: str) -> str:
    """train.device as this machine can honour it: auto is cuda where torch sees a GPU, else cpu."""
    import torch

    if wanted == "cuda" and not torch.cuda.is_available():
        raise PipelineError("train.device is cuda but torch sees no CUDA device here: set train.device to "
                            "auto or cpu, or run on a machine with an NVIDIA GPU")
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def check_runs_here(plan: Plan, plan_path: Path | str, device_kind: str, params: Params) -> None:
    """A plan made for another kind of device is refused: a T4 plan (fp16, a GPU-sized micro-batch)
    applied to a CPU runs hundreds of times slower than fp32 there, and a CPU plan wastes a GPU."""
    if plan.device_kind != device_kind:
        fix = ("run on a machine with an NVIDIA GPU, or set cost.hardware: cpu and rerun estimate"
               if plan.device_kind == "cuda" else
               f"set cost.hardware to this GPU's catalog name (see pipeline/cost/hardware.yaml) and rerun estimate, "
               "or train.device: cpu")
        raise PipelineError(f"{plan_path} plans for cost.hardware {plan.device} (a {plan.device_kind} device) but "
                            f"this run is on {device_kind} (train.device {params.train.device}): {fix}")
    if device_kind == "cuda":
        import torch

        below_ampere = torch.cuda.get_device_capability()[0] < 8
        if plan.precision == "bf16" and below_ampere:
            raise PipelineError(f"{plan_path} plans bf16 but {torch.cuda.get_device_name()} has no native bf16 "
                                "(only slow emulation): set cost.hardware to this GPU and rerun estimate")
        if params.train.compile and below_ampere:  # Triton >= 3.3 generates no code below 8.0
            raise PipelineError(f"train.compile: true but {torch.cuda.get_device_name()} is below compute "
                                "capability 8.0, which torch.compile's Triton kernels need: set train.compile: false")
    laid_out = plan.micro_batch_size * plan.grad_accum_steps * plan.devices * params.model.context
    if plan.tokens_per_step != params.train.tokens_per_step or laid_out != plan.tokens_per_step:
        raise PipelineError(f"{plan_path} lays out {plan.micro_batch_size} x {plan.grad_accum_steps} sequences on "
                            f"{plan.devices} device(s) for train.tokens_per_step {plan.tokens_per_step}, but params "
                            f"ask for {params.train.tokens_per_step} tokens of model.context {params.model.context} "
                            "per step: rerun the estimate stage")


# ---- the planner --------------------------------------------------------------------------------


# ---- the plan as this process runs it -----------------------------------------------------------

@dataclass(frozen=True)
class Setup:
    device: str                 # "cpu" | "cuda", resolved on this machine
    world: int                  # processes (DDP)
    micro_batch_size: int
    grad_accum_steps: int
    precision: str
    activation_checkpointing: bool
    compile: bool
    device_name: str            # the catalog's name for it (cost.hardware)
    peak_flops: float           # per device, in the planned precision
    calibration_key: str
    settings_from: str          # the plan file


def setup_for(params: Params, plan_path: Path, device_kind: str, world: int) -> Setup:
    """The estimate stage's plan, checked against this machine and params."""
    plan_path = Path(plan_path)
    if not plan_path.is_file():
        raise PipelineError(f"{plan_path} not found: run the estimate stage first (python -m pipeline estimate "
                            "with the same params); it plans the run and checks it fits the budget")
    plan = Plan.read(plan_path)
    check_runs_here(plan, plan_path, device_kind, params)
    _check_params_agree(plan, plan_path, params)
    if plan.devices != world:
        raise PipelineError(f"{plan_path} plans for {plan.devices} device(s) (cost.num_devices) but this run has "
                            f"{world} process(es): set cost.num_devices: {world} and rerun the estimate stage")
    return Setup(device=device_kind, world=world, micro_batch_size=plan.micro_batch_size,
                 grad_accum_steps=plan.grad_accum_steps, precision=plan.precision,
                 activation_checkpointing=plan.activation_checkpointing, compile=params.train.compile,
                 device_name=plan.device, peak_flops=plan.peak_flops, calibration_key=plan.calibration_key, settings_from=str(plan_path))


def _check_params_agree(plan: Plan, plan_path: Path, params: Params) -> None:
    """Explicit train values, the model and the optimizer must be the plan's: otherwise the plan,
    its memory fit and its price were made for another run, and it is stale."""
    train = params.train
    fixed = {"micro_batch_size": train.micro_batch_size, "precision": train.precision,
             "activation_checkpointing": train.activation_checkpointing}
    stale = [f"train.{k} is {v!r}, the plan has {getattr(plan, k)!r}" for k, v in fixed.items()
             if v != "auto" and v != getattr(plan, k)]
    if train.optimizer != plan.optimizer:
        stale.append(f"train.optimizer is {train.optimizer}, the plan is for {plan.optimizer}")
    model = params.section("model")
    stale += [f"model.{k} is {v!r}, the plan has {plan.model.get(k)!r}" for k, v in model.items()
              if plan.model.get(k) != v]
    if stale:
        raise PipelineError(f"{plan_path} is stale ({'; '.join(stale)}): rerun the estimate stage")
