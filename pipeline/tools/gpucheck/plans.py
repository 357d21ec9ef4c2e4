"""The 4 GB and 16 GB plans: each device's plan, as the planner makes it, trained under a
torch.cuda.set_per_process_memory_fraction cap of that device's memory."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.core.units import GIB
from pipeline.tools.gpucheck.machine import Machine, RandomTokenSteps, first_line, free_device

if TYPE_CHECKING:
    from pipeline.core.params import Params

PLAN_DEVICES = ("rtx2050-laptop-4gb", "t4-16gb")
PLAN_STEPS = 20


@dataclass
class PlanProof:
    device: str
    layout: str = ""
    precision_run: str = ""
    status: str = "not run"     # fits | out of memory | failed | skipped | no plan
    note: str = ""
    predicted_bytes: int = 0
    usable_bytes: int = 0
    cap_bytes: int | None = None
    steps: int = 0
    tensor_peak_bytes: int | None = None
    reserved_peak_bytes: int | None = None
    fp16_skipped_steps: int | None = None


def prove_plan(name: str, params: Params, machine: Machine) -> PlanProof:
    from pipeline.cost import hardware
    from pipeline.cost.planner import describe, fit_error, plan_for

    proof = PlanProof(device=name)
    device = hardware.get_device(params.cost.model_copy(update={"hardware": name}))
    fit = plan_for(params.model_copy(update={"cost": params.cost.model_copy(update={"hardware": name,
                                                                                    "num_devices": 1})}),
                   device, params.tokenizer.vocab_size)
    proof.layout, proof.predicted_bytes, proof.usable_bytes = describe(fit.plan), fit.memory.total, fit.usable_bytes
    if not fit.fits:
        proof.status, proof.note = "no plan", fit_error(fit, device, params)
        return proof
    if machine.kind != "cuda":
        proof.status, proof.note = "skipped", "predicted only: the memory cap needs a CUDA GPU"
        return proof
    total = machine.facts["total_bytes"]
    if device.memory_bytes > total and machine.device.chip != device.chip:
        proof.status = "skipped"
        proof.note = (f"the {device.memory_bytes / GIB:.2f} GiB cap is larger than this GPU's "
                      f"{total / GIB:.2f} GiB: run the check on a larger GPU to prove this plan")
        return proof
    proof.cap_bytes = min(device.memory_bytes, total)
    _run_capped(proof, fit.plan, params, machine)
    if device.memory_bytes > total:
        proof.note = "; ".join(filter(None, [proof.note, f"this GPU is a {name}: the cap is its whole memory"]))
    return proof


def _run_capped(proof: PlanProof, plan: Any, params: Params, machine: Machine) -> None:
    import torch

    # bf16 and fp16 hold the same bytes; emulated bf16 would spend minutes for the same answer
    proof.precision_run = plan.precision if plan.precision != "bf16" or machine.facts["bf16_native"] else "fp16"
    if proof.precision_run != plan.precision:
        proof.note = "ran fp16 in place of bf16 (same bytes; this GPU has no native bf16)"
    free_device("cuda")
    torch.cuda.set_per_process_memory_fraction(proof.cap_bytes / machine.facts["total_bytes"])
    stepping = None
    try:
        stepping = RandomTokenSteps.build(params, "cuda", proof.precision_run, plan.activation_checkpointing,
                                          plan.micro_batch_size, plan.grad_accum_steps)
        for _ in range(PLAN_STEPS):
            stepping.timed_step()
        proof.status = "fits"
    except torch.cuda.OutOfMemoryError as exc:
        proof.status, proof.note = "out of memory", "; ".join(filter(None, [proof.note, first_line(exc)]))
    except Exception as exc:  # reported as a problem; the cap is lifted below either way
        proof.status, proof.note = "failed", f"{type(exc).__name__}: {first_line(exc)}"
    finally:
        proof.steps = stepping.steps if stepping else 0
        proof.fp16_skipped_steps = stepping.skipped if stepping and proof.precision_run == "fp16" else None
        proof.tensor_peak_bytes = torch.cuda.max_memory_allocated()
        proof.reserved_peak_bytes = torch.cuda.max_memory_reserved()
        stepping = None
        free_device("cuda")
        torch.cuda.set_per_process_memory_fraction(1.0)
