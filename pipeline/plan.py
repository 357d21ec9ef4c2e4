"""How a run is laid out on its device: micro-batch, gradient accumulation, precision, activation
checkpointing. The estimate stage plans (and writes reports/plan.json); the train stage reads the
plan and refuses one made for a device it is not running on.

One home for the rules that decide a run's layout: which device `train.device` means here,
which precision a device runs natively, and the planner that fits the memory model to a device.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline import compute
from pipeline.errors import PipelineError
from pipeline.hardware import GIB, Device
from pipeline.params import Params
from pipeline.record import Record

PRECISIONS = ("fp32", "fp16", "bf16")


class Plan(Record):
    """reports/plan.json: the plan alone, so a budget change leaves it byte-identical and no
    driver retrains for it."""

    FORMAT = 1
    WRITTEN_BY = "estimate"

    device: str                 # the catalog name planned for (cost.hardware)
    device_kind: str            # "cpu" | "cuda": what train must be running on
    devices: int                # cost.num_devices: processes that share each step
    micro_batch_size: int
    grad_accum_steps: int
    precision: str
    activation_checkpointing: bool
    tokens_per_step: int


@dataclass(frozen=True)
class Fit:
    plan: Plan
    memory: compute.Memory
    usable_bytes: int

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.usable_bytes


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


def native_precision(device: Device) -> str:
    """bf16 on GPUs with native bf16, fp16 with loss scaling on the others (a T4); fp32 on every
    CPU, so that one params file gives one loss curve on any CPU (bf16, where the CPU has it
    natively, is one train.precision away and ~1.2-1.7x faster)."""
    if device.kind == "cpu":
        return "fp32"
    return "bf16" if device.bf16_native else "fp16"


def precision_for(params: Params, device: Device) -> str:
    wanted = params.train.precision
    if wanted == "auto":
        return native_precision(device)
    if wanted == "bf16" and device.kind == "cuda" and not device.bf16_native:
        raise PipelineError(f"train.precision bf16 on {device.name}: it has no native bf16 (only slow "
                            "emulation); use fp16 or auto")
    return wanted


def check_runs_here(plan: Plan, plan_path: Path | str, device_kind: str, params: Params) -> None:
    """A plan made for another kind of device is refused: a T4 plan (fp16, a GPU-sized micro-batch)
    applied to a CPU runs hundreds of times slower than fp32 there, and a CPU plan wastes a GPU."""
    if plan.device_kind != device_kind:
        fix = ("run on a machine with an NVIDIA GPU, or set cost.hardware: cpu and rerun estimate"
               if plan.device_kind == "cuda" else
               f"set cost.hardware to this GPU's catalog name (see pipeline/hardware.yaml) and rerun estimate, "
               "or train.device: cpu")
        raise PipelineError(f"{plan_path} plans for cost.hardware {plan.device} (a {plan.device_kind} device) but "
                            f"this run is on {device_kind} (train.device {params.train.device}): {fix}")
    if plan.precision == "bf16" and device_kind == "cuda":
        import torch

        if torch.cuda.get_device_capability()[0] < 8:
            raise PipelineError(f"{plan_path} plans bf16 but {torch.cuda.get_device_name()} has no native bf16 "
                                "(only slow emulation): set cost.hardware to this GPU and rerun estimate")
    laid_out = plan.micro_batch_size * plan.grad_accum_steps * plan.devices * params.model.context
    if plan.tokens_per_step != params.train.tokens_per_step or laid_out != plan.tokens_per_step:
        raise PipelineError(f"{plan_path} lays out {plan.micro_batch_size} x {plan.grad_accum_steps} sequences on "
                            f"{plan.devices} device(s) for train.tokens_per_step {plan.tokens_per_step}, but params "
                            f"ask for {params.train.tokens_per_step} tokens of model.context {params.model.context} "
                            "per step: rerun the estimate stage")


# ---- the planner --------------------------------------------------------------------------------

def sequences_per_device(params: Params, num_devices: int) -> int:
    train, context = params.train, params.model.context
    per_step = context * num_devices
    if train.tokens_per_step % per_step:
        lower = max(per_step, train.tokens_per_step // per_step * per_step)
        raise PipelineError(f"train.tokens_per_step ({train.tokens_per_step}) must be a multiple of model.context "
                            f"x cost.num_devices ({context} x {num_devices}): use {lower} or {lower + per_step}")
    return train.tokens_per_step // per_step


def plan_for(params: Params, device: Device, vocab: int, *, auto: bool = False) -> Fit:
    """The largest micro-batch that fits, without activation checkpointing if possible.

    Fixed train.micro_batch_size / activation_checkpointing / precision are respected (auto=True
    ignores them, for the what-if table). Returns the smallest failing candidate when nothing fits.
    """
    train, cost = params.train, params.cost
    seqs = sequences_per_device(params, cost.num_devices)
    precision = native_precision(device) if auto else precision_for(params, device)
    if train.micro_batch_size != "auto" and not auto:
        if seqs % train.micro_batch_size:
            raise PipelineError(f"train.micro_batch_size {train.micro_batch_size} does not divide the {seqs} "
                                "sequences each device runs per step (train.tokens_per_step / model.context / "
                                f"cost.num_devices); use one of {divisors(seqs)}")
        micros = [train.micro_batch_size]
    else:
        micros = sorted(divisors(seqs), reverse=True)
    checkpointing = [False, True] if train.activation_checkpointing == "auto" or auto else \
        [train.activation_checkpointing]
    usable = int(device.memory_bytes * (1 - cost.memory_headroom))
    last = None
    for ckpt in checkpointing:
        for micro in micros:
            memory = compute.training_memory(params.model, vocab, micro, precision, ckpt,
                                             optimizer=params.train.optimizer, device_kind=device.kind,
                                             runtime_bytes=device.runtime_overhead_bytes,
                                             newton_schulz=compute.newton_schulz_precision(device.kind,
                                                                                           device.bf16_native))
            plan = Plan.make(device=device.name, device_kind=device.kind, devices=cost.num_devices,
                             micro_batch_size=micro,
                             grad_accum_steps=seqs // micro, precision=precision, activation_checkpointing=ckpt,
                             tokens_per_step=train.tokens_per_step)
            last = Fit(plan, memory, usable)
            if last.fits:
                return last
    return last


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def describe(plan: Plan) -> str:
    return (f"micro-batch {plan.micro_batch_size} x {plan.grad_accum_steps} accum, {plan.precision}"
            + (", checkpointing" if plan.activation_checkpointing else ""))


def fit_error(fit: Fit, device: Device, params: Params) -> str:
    p, need, have = fit.plan, fit.memory.total, fit.usable_bytes
    return (f"no plan fits {device.name}: micro-batch {p.micro_batch_size}, {p.precision}, activation "
            f"checkpointing {'on' if p.activation_checkpointing else 'off'} needs {need / GIB:.2f} GiB, "
            f"{(need - have) / GIB:.2f} GiB more than the {have / GIB:.2f} GiB usable (device memory less "
            f"cost.memory_headroom {params.cost.memory_headroom:.0%})")


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
    settings_from: str          # the plan file, or "planned by train" when there was none


def setup_for(params: Params, plan_path: Path, device_kind: str, world: int, vocab: int) -> Setup:
    """The estimate stage's plan, checked against this machine and params; planned here, with the
    same planner, when there is no plan file (the train stage run on its own)."""
    from pipeline import hardware

    plan_path = Path(plan_path)
    if plan_path.is_file():
        plan, source = Plan.read(plan_path), str(plan_path)
    else:
        planned = params.model_copy(update={"cost": params.cost.model_copy(update={"num_devices": world})})
        fit = plan_for(planned, hardware.get_device(params.cost), vocab)
        if not fit.fits:
            raise PipelineError(fit_error(fit, hardware.get_device(params.cost), params)
                                + ": run the estimate stage for the options")
        plan, source = fit.plan, "planned by train (no plan file: run the estimate stage to see the costs)"
        print(f"note: {plan_path} not found; planned here for cost.hardware {plan.device}: {describe(plan)}")
    check_runs_here(plan, plan_path, device_kind, params)
    _check_params_agree(plan, plan_path, params)
    if plan.devices != world:
        raise PipelineError(f"{plan_path} plans for {plan.devices} device(s) (cost.num_devices) but this run has "
                            f"{world} process(es): set cost.num_devices: {world} and rerun the estimate stage")
    return Setup(device=device_kind, world=world, micro_batch_size=plan.micro_batch_size,
                 grad_accum_steps=plan.grad_accum_steps, precision=plan.precision,
                 activation_checkpointing=plan.activation_checkpointing, compile=params.train.compile,
                 settings_from=source)


def _check_params_agree(plan: Plan, plan_path: Path, params: Params) -> None:
    """Explicit train values must be the plan's: otherwise the plan is stale."""
    train = params.train
    fixed = {"micro_batch_size": train.micro_batch_size, "precision": train.precision,
             "activation_checkpointing": train.activation_checkpointing}
    stale = [f"train.{k} is {v!r}, the plan has {getattr(plan, k)!r}" for k, v in fixed.items()
             if v != "auto" and v != getattr(plan, k)]
    if stale:
        raise PipelineError(f"{plan_path} is stale ({'; '.join(stale)}): rerun the estimate stage")
