"""What a run costs: its work (model FLOPs of the steps, forward FLOPs of the validations), the
utilization it will reach (calibrated here, given, learned from an earlier run, or the catalog's
assumption), and the hours, dollars, kWh and CO2 that follow on the planned device.

MFU here is model FLOPs utilization as the train stage measures it: model training FLOPs per
second (6N + attention per token, recompute not counted) over the device's peak. A catalog MFU is
an assumption for a run without activation checkpointing; with it, the same hardware does a
third more work per token, so the model MFU it reaches is the catalog's / RECOMPUTE_FACTOR.
"""
from __future__ import annotations

import time
from typing import Any

from pipeline.core.errors import PipelineError
from pipeline.core.params import Params
from pipeline.cost import calibration
from pipeline.cost.budget import tokens_to_train
from pipeline.cost.hardware import Device
from pipeline.cost.planner import Fit, plan_for
from pipeline.data.tokens import TokenManifest
from pipeline.engine.identity import run_id
from pipeline.engine.plan import Plan
from pipeline.model import compute

WHAT_IF_SCALES = (1, 10)  # what 10x the tokens (1B instead of 100M) would cost


# Activation checkpointing recomputes each block's forward in backward: ~2N of the 6N FLOPs again.
RECOMPUTE_FACTOR = 4 / 3


# A validation pass is a forward pass only: 2N of the 6N FLOPs per token.
FORWARD_SHARE = 1 / 3


CPU_CALIBRATION_TOKENS = 2048  # per timed micro-batch on CPU (see calibrate)


class Work:
    """What a run computes: model FLOPs of its optimizer steps, and the forward FLOPs of the
    validations the train stage runs every train.eval_every steps and at the end."""

    def __init__(self, params: Params, plan: Plan, flops_per_token: float, tokens: int, eval_tokens: int,
                 vocab: int):
        self.params, self.plan, self.flops_per_token = params, plan, flops_per_token
        self.tokens, self.eval_tokens, self.vocab = tokens, eval_tokens, vocab

    @classmethod
    def of(cls, params: Params, plan: Plan, manifest: TokenManifest, tokens: int | None = None) -> Work:
        tokens = tokens_to_train(params) if tokens is None else tokens
        steps = tokens // params.train.tokens_per_step
        evals = steps // params.train.eval_every + (steps % params.train.eval_every != 0)
        # the val subset: eval_batches steps' worth of windows, or the whole split when it is smaller
        windows = min(params.train.eval_batches * params.train.tokens_per_step // params.model.context,
                      max(1, (manifest.val_tokens - 1) // params.model.context))
        return cls(params, plan, compute.flops_per_token(params.model, manifest.vocab_size), tokens,
                   evals * windows * params.model.context, manifest.vocab_size)

    @property
    def flops(self) -> float:
        return self.flops_per_token * self.tokens

    @property
    def recompute(self) -> float:
        return RECOMPUTE_FACTOR if self.plan.activation_checkpointing else 1.0

    @property
    def optimizer_flops(self) -> float:
        steps = self.tokens // self.params.train.tokens_per_step
        return steps * compute.optimizer_flops_per_step(self.params.model, self.vocab, self.params.train.optimizer)

    @property
    def eval_flops(self) -> float:
        return self.flops_per_token * FORWARD_SHARE * self.eval_tokens


def price(work: Work, device: Device, params: Params, *, mfu: float, usd_per_hour: float | None,
          wall_over_steps: float | None = None, whole_steps: bool = False) -> dict[str, Any]:
    """Hours, dollars, kWh and CO2 of `work` on cost.num_devices devices (one, on a CPU:
    Device.priced) at model FLOPs utilization `mfu`. The time outside the optimizer steps is a
    measured share (wall_over_steps, learned from an earlier run) where there is one, else the
    validations' forward FLOPs. whole_steps: the MFU was measured over whole optimizer steps
    (calibrated, learned), so their update is in it."""
    cost, devices = params.cost, device.priced(params.cost.num_devices)
    peak = device.peak_flops[work.plan.precision] * devices
    # Muon's Newton-Schulz iterations: matmuls outside model FLOPs, in the device's own precision
    ns_peak = device.peak_flops[compute.newton_schulz_precision(device.kind, device.bf16_native)]
    optimizer_hours = 0.0 if whole_steps else work.optimizer_flops / (ns_peak * devices * mfu) / 3600
    step_hours = work.flops / (peak * mfu) / 3600 + optimizer_hours
    if wall_over_steps:
        hours = step_hours * wall_over_steps
    else:
        # validation runs at the hardware's utilization for this model, which recompute does not lower
        hours = step_hours + work.eval_flops / (peak * mfu * work.recompute) / 3600
    kwh = device.power_watts * devices * hours * cost.pue / 1000
    if cost.pricing == "owned":
        rate = usd_per_hour or 0.0
        usd = kwh * cost.electricity_usd_per_kwh + rate * devices * hours
        basis = "owned: electricity" + (f" + ${rate}/device-hour" if rate else "")
    else:
        rate = usd_per_hour if usd_per_hour is not None else device.usd_per_hour(cost.pricing)
        usd = rate * devices * hours
        basis = f"{cost.pricing}: ${rate}/device-hour" + (" (cost.usd_per_hour)" if usd_per_hour is not None else "")
    return {"hours": hours, "step_hours": step_hours,
            "tokens_per_second": work.tokens / (step_hours * 3600) if step_hours else 0.0,
            "usd": usd, "usd_per_hour": usd / hours if hours else None, "usd_basis": basis,
            "kwh": kwh, "co2_kg": kwh * cost.grid_gco2_per_kwh / 1000, "peak_flops": peak / devices,
            "flops": work.flops,
            "executed_flops": work.flops * work.recompute + work.eval_flops + work.optimizer_flops,
            "eval_flops": work.eval_flops, "recompute_factor": work.recompute}


def utilization(params: Params, device: Device, fit: Fit,
         manifest: TokenManifest) -> tuple[float, str, float | None, bool]:
    """Model FLOPs utilization for this plan, where it came from, the measured share of wall time
    outside the steps if known, and whether it was measured over whole optimizer steps: timed here
    (cost.calibrate), given (cost.mfu), learned from an earlier run of this shape on this machine
    (cost.learn_mfu), or the catalog's assumption lowered by the recompute of activation
    checkpointing."""
    cost = params.cost
    if cost.calibrate and fit.fits:  # a plan that does not fit is refused below: nothing to time
        return (*calibrate(params, fit.plan, device, manifest.vocab_size, manifest.eot_token_id), None, True)
    if cost.mfu is not None:
        return cost.mfu, "params: cost.mfu", None, False
    learned = recalled(params, fit.plan, manifest)
    if learned:
        return (learned.mfu, f"learned: measured by an earlier train run of this shape on this machine at {learned.measured_at} "
                             f"({learned.tokens_per_second:,.0f} tokens/s, wall time {learned.wall_over_steps:.3g}x "
                             f"the step time; kept in {calibration.path()}; cost.learn_mfu: false ignores it)",
                learned.wall_over_steps, True)
    return (*catalog_mfu(device, fit.plan), None, False)


def recalled(params: Params, plan: Plan, manifest: TokenManifest) -> calibration.Learned | None:
    """What an earlier train run of this plan's shape measured on this machine (cost.learn_mfu).
    Never this run's own measurement: held against itself, a run would look perfectly predicted."""
    if not params.cost.learn_mfu:
        return None
    return calibration.recall(plan.calibration_key, not_run=run_id(params, manifest))


def catalog_mfu(device: Device, plan: Plan) -> tuple[float, str]:
    key = "mfu_by_precision" if plan.precision in device.mfu_by_precision else "mfu_default"
    source = f"catalog default for {device.name} in {plan.precision}: {device.sources.get(key, '')}"
    if plan.activation_checkpointing:
        return (device.mfu(plan.precision) / RECOMPUTE_FACTOR,
                source + f" (/ {RECOMPUTE_FACTOR:.3g}: checkpointing recomputes)")
    return device.mfu(plan.precision), source


def calibrate(params: Params, plan: Plan, device: Device, vocab: int, eos_token_id: int) -> tuple[float, str]:
    """Time real optimizer steps of the configured model here, built and stepped as the train stage
    builds and steps it (pipeline/engine/training.py); MFU = model FLOPs per second / catalog peak
    (recompute, if planned, is in the timing).

    The model, precision and checkpointing are the plan's; so is the micro-batch on a GPU. On CPU
    the micro-batch is capped at CPU_CALIBRATION_TOKENS: a full GPT-2 micro-batch takes minutes
    there, and past a few thousand tokens throughput per token hardly depends on the batch.
    """
    import torch

    from pipeline.engine.training import build_training

    if device.kind == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"cost.calibrate: cost.hardware is {device.name} but this machine has no CUDA GPU; "
                            "calibrate on the target machine, or set cost.mfu")
    where = device.kind
    micro = plan.micro_batch_size if where == "cuda" else \
        max(1, min(plan.micro_batch_size, CPU_CALIBRATION_TOKENS // params.model.context))
    # the optimizer's values (lr, betas, decay) do not change its speed: estimate does not declare them
    training = build_training(params, vocab, eos_token_id, device=where, precision=plan.precision,
                              activation_checkpointing=plan.activation_checkpointing)
    ids = torch.randint(0, vocab, (micro, params.model.context + 1), device=where)  # speed ignores content
    batch = (ids[:, :-1], ids[:, 1:])

    def timed(work) -> float:
        start = time.perf_counter()
        work()
        if where == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def forward_backward(index: int) -> None:
        training.forward_backward(index, lambda micro_index: batch, accum=1)

    # warm-up: allocator, kernels, lazy init, optimizer state
    timed(lambda: forward_backward(0))
    timed(lambda: training.finish(apply=True))
    micro_seconds = update_seconds = 0.0
    for index in range(1, params.cost.calibrate_steps + 1):
        micro_seconds += timed(lambda: forward_backward(index))
        update_seconds += timed(lambda: training.finish(apply=True))
    # a planned step is its micro-batches and one update (Muon's Newton-Schulz is per step, not
    # per token): the CPU's capped micro-batch counts as many times as a step holds it
    micros_per_step = plan.micro_batch_size * plan.grad_accum_steps / micro
    step_seconds = (micros_per_step * micro_seconds + update_seconds) / params.cost.calibrate_steps
    rate = micros_per_step * micro * params.model.context / step_seconds
    mfu = compute.mfu(rate, compute.flops_per_token(params.model, vocab), device.peak_flops[plan.precision])
    return mfu, (f"calibrated: {rate:,.0f} tokens/s over {params.cost.calibrate_steps} steps of micro-batch "
                 f"{micro} x {params.model.context} ({plan.precision}) on this {where}, a step "
                 f"{micros_per_step:g} of them and one update, against {device.name}'s peak")


def what_if_row(params: Params, device: Device, manifest: TokenManifest, scale: int, *,
                 planned: tuple[Plan, float, bool] | None) -> dict[str, Any]:
    """One device at `scale` x the tokens, planned automatically, at its catalog MFU and price;
    the run's own device (`planned`: its plan, MFU and whether that was measured over whole steps)
    at this run's MFU where the layout agrees."""
    fit = plan_for(params, device, manifest.vocab_size, auto=True)
    pricing = params.cost.pricing
    if pricing == "owned" or device.usd_per_hour(pricing) is None:
        pricing = "on_demand" if device.usd_per_hour("on_demand") is not None else "owned"
    row_params = params.model_copy(update={"cost": params.cost.model_copy(update={"pricing": pricing})})
    same_layout = planned and planned[0].activation_checkpointing == fit.plan.activation_checkpointing
    mfu = planned[1] if same_layout else catalog_mfu(device, fit.plan)[0]
    work = Work.of(params, fit.plan, manifest, tokens_to_train(params) * scale)
    figures = price(work, device, row_params, mfu=mfu, usd_per_hour=params.cost.usd_per_hour if planned else None,
                    whole_steps=bool(same_layout and planned[2]))
    return {"device": device.name, "scale": scale, "tokens": work.tokens, "fits": fit.fits, "plan": fit.plan,
            "peak_memory_bytes": fit.memory.total, "pricing": pricing, **figures}
