"""The planner: the largest micro-batch that fits the device's memory, without activation
checkpointing where possible, in the precision the device runs natively. The estimate stage
writes its result as reports/plan.json (pipeline/engine/plan.py: Plan).

    fit = plan_for(params, hardware.get_device(params.cost), vocab)
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.errors import PipelineError
from pipeline.core.params import Model, Params
from pipeline.core.units import GIB

from pipeline.cost.hardware import Device
from pipeline.engine.plan import Plan
from pipeline.model import compute


@dataclass(frozen=True)
class Fit:
    plan: Plan
    memory: compute.Memory
    usable_bytes: int

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.usable_bytes



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



def check_compile(params: Params, device: Device) -> None:
    """train.compile on a GPU below compute capability 8.0 is refused before anything is paid for:
    torch.compile generates its GPU kernels with Triton, and Triton dropped Turing (sm_75, the T4)
    in 3.3 (triton-lang/triton PR #5066); the lock pins triton 3.7.1, so the compile would fail at
    the first step. Refused rather than planned without it: the estimate prices the run params
    describe, and a params file that silently trains otherwise on one device is a second recipe.
    Every catalog GPU without native bf16 is below 8.0 (bf16 tensor cores came with Ampere, 8.0)."""
    if params.train.compile and device.kind == "cuda" and not device.bf16_native:
        raise PipelineError(f"train.compile: true on {device.name}: torch.compile's GPU kernels need Triton, which "
                            "supports compute capability 8.0 and newer only (Triton 3.3 dropped Turing): set "
                            "train.compile: false")


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
    if not auto:
        check_compile(params, device)
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
    # each process's share of a device: all of a GPU; on a CPU, whose cores and memory the
    # processes share (Device.priced), a num_devices-th
    share = device.priced(cost.num_devices) / cost.num_devices
    usable = int(device.memory_bytes * (1 - cost.memory_headroom) * share)
    last = None
    for ckpt in checkpointing:
        for micro in micros:
            memory = compute.training_memory(params.model, vocab, micro, precision, ckpt,
                                             optimizer=params.train.optimizer, device_kind=device.kind,
                                             runtime_bytes=device.runtime_overhead_bytes,
                                             newton_schulz=compute.newton_schulz_precision(device.kind,
                                                                                           device.bf16_native))
            layout = dict(micro_batch_size=micro, grad_accum_steps=seqs // micro, precision=precision,
                          activation_checkpointing=ckpt)
            plan = Plan.make(device=device.name, device_kind=device.kind, devices=cost.num_devices, **layout,
                             tokens_per_step=train.tokens_per_step, optimizer=train.optimizer,
                             model=params.section("model"), peak_flops=device.peak_flops[precision] * share,
                             calibration_key=key_for(device, params.model, vocab, **layout,
                                                     optimizer=train.optimizer, devices=cost.num_devices))
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


def key_for(device: Device, model: Model, vocab_size: int, *, micro_batch_size: int, grad_accum_steps: int,
            precision: str, activation_checkpointing: bool, optimizer: str, devices: int) -> str:
    """The key a run's measured speed is learned under (pipeline/cost/calibration.py): a speed
    measured with N processes (their gradient all-reduce included) prices N processes only."""
    machine = device.name + (f"@{device.detected['fingerprint']}" if device.detected else "") + f"x{devices}"
    shape = (f"{model.architecture}:L{model.n_layer}xD{model.n_embd}xH{model.n_head}xT{model.context}xV{vocab_size}"
             f"/{optimizer}")
    layout = f"{precision}/mb{micro_batch_size}x{grad_accum_steps}{'/ckpt' if activation_checkpointing else ''}"
    return f"{machine}|{shape}|{layout}"
