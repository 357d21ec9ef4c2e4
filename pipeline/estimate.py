"""The estimate stage: FLOPs, a memory plan, hours, dollars, energy, and the budget gate.

    python -m pipeline estimate [--set cost.hardware=rtx2050-laptop-4gb] [--set cost.calibrate=true]

Reads the token manifest (checked against the tokenizer). Writes the plan (pipeline/plan.py: read
by train), the cost report (CostReport, DVC metrics) and a Markdown report for people with a
what-if table over the catalog. Over budget, or when no plan fits in memory, it raises
BudgetExceeded (exit 3): then only the Markdown report is written, saying why, and a plan or cost
report left by an earlier run is removed so no later stage can run on it.

MFU here is model FLOPs utilization as the train stage measures it: model training FLOPs per
second (6N + attention per token, recompute not counted) over the device's peak. A catalog MFU is
an assumption for a run without activation checkpointing; with it, the same hardware does a
third more work per token, so the model MFU it reaches is the catalog's / RECOMPUTE_FACTOR.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline import calibration, compute, hardware, provenance
from pipeline.atomic import write_text
from pipeline.errors import BudgetExceeded, PipelineError
from pipeline.hardware import GIB, Device
from pipeline.model import build_model
from pipeline.params import Params
from pipeline.plan import Fit, Plan, describe, fit_error, plan_for
from pipeline.record import Record
from pipeline.tokens import TokenManifest, load as load_manifest

WHAT_IF_SCALES = (1, 10)  # what 10x the tokens (1B instead of 100M) would cost
# Activation checkpointing recomputes each block's forward in backward: ~2N of the 6N FLOPs again.
RECOMPUTE_FACTOR = 4 / 3
# A validation pass is a forward pass only: 2N of the 6N FLOPs per token.
FORWARD_SHARE = 1 / 3
CPU_CALIBRATION_TOKENS = 2048  # per timed micro-batch on CPU (see calibrate)


class CostReport(Record):
    """reports/cost.json: the estimate, read by the evaluate stage to hold it against the run."""

    FORMAT = 1
    WRITTEN_BY = "estimate"

    device: str
    device_description: str
    num_devices: int
    pricing: str
    fits: bool
    within_budget: bool
    override: bool                # over budget, and allowed by cost.override_budget
    override_budget: bool         # cost.override_budget as given: train's budget guard obeys it too
    over_budget: list[str]
    budget: dict[str, float | None]
    tokens: int
    steps: int
    tokens_per_step: int
    train_tokens_available: int
    epochs: float | None
    parameters: int
    flops_per_token: float
    flops: float                  # model training FLOPs: what MFU counts
    executed_flops: float         # what the device executes: recompute and validation included
    eval_flops: float
    hours: float                  # the whole run: steps and validations
    step_hours: float             # optimizer steps alone, what tokens_per_second counts
    tokens_per_second: float
    usd: float
    usd_per_hour: float | None
    usd_basis: str
    kwh: float
    co2_kg: float
    peak_flops: float
    recompute_factor: float
    mfu: float
    mfu_source: str
    peak_memory_bytes: int
    memory_usable_bytes: int
    memory: dict[str, int]
    plan: dict[str, Any]
    sources: dict[str, str]
    detected: dict[str, Any] | None   # what was measured of this machine (the cpu entry)
    provenance: dict[str, Any]


def run(params: Params, *, tokens: Path, tokenizer: Path, plan: Path, cost: Path, cost_md: Path) -> CostReport:
    manifest = load_manifest(tokens, tokenizer, verify_files=False)
    check_windows(manifest, params.model.context, Path(tokens))
    vocab = manifest.vocab_size
    devices = hardware.catalog(params.cost.extra_hardware)
    device = hardware.get_device(params.cost)
    _check_settings(params, device)

    fit = plan_for(params, device, vocab)
    mfu, mfu_source, wall_over_steps, whole_steps = _mfu(params, device, fit, manifest)
    work = Work.of(params, fit.plan, manifest)
    figures = price(work, device, params, mfu=mfu, usd_per_hour=params.cost.usd_per_hour,
                    wall_over_steps=wall_over_steps, whole_steps=whole_steps)
    over = _over_budget(params, figures)
    what_if = [_what_if_row(params, d, manifest, k, planned=(fit.plan, mfu, whole_steps) if d.name == device.name else None)
               for k in WHAT_IF_SCALES for d in devices.values()]
    report = CostReport.make(
        device=device.name, device_description=device.description, num_devices=params.cost.num_devices,
        pricing=params.cost.pricing, fits=fit.fits, within_budget=not over,
        override=bool(params.cost.override_budget and over and fit.fits),
        override_budget=params.cost.override_budget, over_budget=over,
        budget={"usd": params.cost.budget_usd, "hours": params.cost.budget_hours, "kwh": params.cost.budget_kwh},
        tokens=work.tokens, steps=work.tokens // fit.plan.tokens_per_step, tokens_per_step=fit.plan.tokens_per_step,
        train_tokens_available=manifest.train_tokens,
        epochs=work.tokens / manifest.train_tokens if manifest.train_tokens else None,
        parameters=compute.parameter_count(params.model, vocab), flops_per_token=work.flops_per_token,
        **figures, mfu=mfu, mfu_source=mfu_source,
        peak_memory_bytes=fit.memory.total, memory_usable_bytes=fit.usable_bytes, memory=fit.memory.as_dict(),
        plan=fit.plan.as_dict(), sources=device.sources, detected=getattr(device, "detected", None),
        provenance=provenance.record({"model": params.section("model"), "cost": params.section("cost"),
                                      "train": params.section("train")}),
    )
    refusal = _refusal(params, device, fit, figures, over, what_if, Path(cost_md))
    write_text(cost_md, render_markdown(report, what_if, refusal))
    print(render_terminal(report, what_if))
    if refusal:
        for stale in (Path(plan), Path(cost)):
            stale.unlink(missing_ok=True)
        raise BudgetExceeded(refusal)
    fit.plan.write(plan)
    report.write(cost)
    return report


# ---- inputs -------------------------------------------------------------------------------------

def check_windows(manifest: TokenManifest, context: int, tokens_dir: Path) -> None:
    """Both splits must hold one training window. Checked here, not in tokenize, so that a
    model.context change does not retokenize the corpus."""
    for name, tokens in (("val", manifest.val_tokens), ("train", manifest.train_tokens)):  # val: the one to grow
        if tokens < context + 1:
            raise PipelineError(
                f"the corpus is too small for one context window: its {name} split has {tokens} tokens "
                f"({tokens_dir}), and model.context {context} needs at least {context + 1}: add text "
                "to the corpus, raise data.val_fraction (for val), or lower model.context")


def _check_settings(params: Params, device: Device) -> None:
    train, cost = params.train, params.cost
    if train.device != "auto" and train.device != device.kind:
        raise PipelineError(f"train.device is {train.device} but cost.hardware {device.name} is a {device.kind} "
                            f"device: make them agree (train.device: auto follows the machine)")
    if not (cost.budget_usd or cost.budget_hours or cost.budget_kwh or cost.override_budget):
        raise PipelineError("no budget: set cost.budget_usd, cost.budget_hours or cost.budget_kwh (or "
                            "cost.override_budget: true to run without one)")
    if cost.pricing == "owned" and cost.electricity_usd_per_kwh <= 0:
        raise PipelineError("cost.electricity_usd_per_kwh must be > 0 with cost.pricing: owned "
                            "(owned hardware costs its electricity)")
    if cost.pricing != "owned" and cost.usd_per_hour is None and device.usd_per_hour(cost.pricing) is None:
        rented = [p for p in ("on_demand", "spot", "colab") if device.usd_per_hour(p) is not None]
        raise PipelineError(f"cost.pricing {cost.pricing}: the catalog has no such price for {device.name} "
                            f"(it has: {', '.join(rented) or 'none, it is owned hardware'}); set "
                            "cost.usd_per_hour, another cost.pricing, or cost.pricing: owned")


def tokens_to_train(params: Params) -> int:
    """max_steps x tokens_per_step, capped by max_tokens (the train stage stops at whichever comes first)."""
    train = params.train
    tokens = train.max_steps * train.tokens_per_step
    return min(tokens, train.max_tokens) if train.max_tokens else tokens


# ---- time, money, energy ------------------------------------------------------------------------

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
    """Hours, dollars, kWh and CO2 of `work` on cost.num_devices devices at model FLOPs utilization
    `mfu`. The time outside the optimizer steps is a measured share (wall_over_steps, learned from
    an earlier run) where there is one, else the validations' forward FLOPs. whole_steps: the MFU
    was measured over whole optimizer steps (calibrated, learned), so their update is in it."""
    cost = params.cost
    peak = device.peak_flops[work.plan.precision] * cost.num_devices
    # Muon's Newton-Schulz iterations: matmuls outside model FLOPs, in the device's own precision
    ns_peak = device.peak_flops[compute.newton_schulz_precision(device.kind, device.bf16_native)]
    optimizer_hours = 0.0 if whole_steps else work.optimizer_flops / (ns_peak * cost.num_devices * mfu) / 3600
    step_hours = work.flops / (peak * mfu) / 3600 + optimizer_hours
    if wall_over_steps:
        hours = step_hours * wall_over_steps
    else:
        # validation runs at the hardware's utilization for this model, which recompute does not lower
        hours = step_hours + work.eval_flops / (peak * mfu * work.recompute) / 3600
    kwh = device.power_watts * cost.num_devices * hours * cost.pue / 1000
    if cost.pricing == "owned":
        rate = usd_per_hour or 0.0
        usd = kwh * cost.electricity_usd_per_kwh + rate * cost.num_devices * hours
        basis = "owned: electricity" + (f" + ${rate}/device-hour" if rate else "")
    else:
        rate = usd_per_hour if usd_per_hour is not None else device.usd_per_hour(cost.pricing)
        usd = rate * cost.num_devices * hours
        basis = f"{cost.pricing}: ${rate}/device-hour" + (" (cost.usd_per_hour)" if usd_per_hour is not None else "")
    return {"hours": hours, "step_hours": step_hours,
            "tokens_per_second": work.tokens / (step_hours * 3600) if step_hours else 0.0,
            "usd": usd, "usd_per_hour": usd / hours if hours else None, "usd_basis": basis,
            "kwh": kwh, "co2_kg": kwh * cost.grid_gco2_per_kwh / 1000, "peak_flops": peak / cost.num_devices,
            "flops": work.flops,
            "executed_flops": work.flops * work.recompute + work.eval_flops + work.optimizer_flops,
            "eval_flops": work.eval_flops, "recompute_factor": work.recompute}


def _mfu(params: Params, device: Device, fit: Fit,
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
    key = calibration.key_for(device, params.model, manifest.vocab_size, fit.plan, params.train.optimizer)
    learned = calibration.recall(key) if cost.learn_mfu else None
    if learned:
        return (learned.mfu, f"learned: measured by the train stage on this machine at {learned.measured_at} "
                             f"({learned.tokens_per_second:,.0f} tokens/s, wall time {learned.wall_over_steps:.3g}x "
                             f"the step time; kept in {calibration.path()}; cost.learn_mfu: false ignores it)",
                learned.wall_over_steps, True)
    return (*_catalog_mfu(device, fit.plan), None, False)


def _catalog_mfu(device: Device, plan: Plan) -> tuple[float, str]:
    key = "mfu_by_precision" if plan.precision in device.mfu_by_precision else "mfu_default"
    source = f"catalog default for {device.name} in {plan.precision}: {device.sources.get(key, '')}"
    if plan.activation_checkpointing:
        return (device.mfu(plan.precision) / RECOMPUTE_FACTOR,
                source + f" (/ {RECOMPUTE_FACTOR:.3g}: checkpointing recomputes)")
    return device.mfu(plan.precision), source


def calibrate(params: Params, plan: Plan, device: Device, vocab: int, eos_token_id: int) -> tuple[float, str]:
    """Time real optimizer steps of the configured model here with the train stage's own step;
    MFU = model FLOPs per second / catalog peak (recompute, if planned, is in the timing).

    The model, precision and checkpointing are the plan's; so is the micro-batch on a GPU. On CPU
    the micro-batch is capped at CPU_CALIBRATION_TOKENS: a full GPT-2 micro-batch takes minutes
    there, and past a few thousand tokens throughput per token hardly depends on the batch.
    """
    import torch

    from pipeline.step import TrainStep, optimizer_for

    if device.kind == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"cost.calibrate: cost.hardware is {device.name} but this machine has no CUDA GPU; "
                            "calibrate on the target machine, or set cost.mfu")
    where = device.kind
    micro = plan.micro_batch_size if where == "cuda" else \
        max(1, min(plan.micro_batch_size, CPU_CALIBRATION_TOKENS // params.model.context))
    torch.manual_seed(params.train.seed)
    model = build_model(params.model, vocab, eos_token_id).to(where)
    if plan.activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    # the optimizer's values (lr, betas, decay) do not change its speed: estimate does not declare them
    step = TrainStep(model, optimizer_for(model, params.train), precision=plan.precision, device=where,
                     grad_clip=params.train.grad_clip)
    ids = torch.randint(0, vocab, (micro, params.model.context + 1), device=where)  # speed ignores content
    x, y = ids[:, :-1], ids[:, 1:]

    def timed(work) -> float:
        start = time.perf_counter()
        work()
        if where == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed(lambda: step.micro(x, y, accum=1))  # warm-up: allocator, kernels, lazy init, optimizer state
    timed(step.update)
    micro_seconds = update_seconds = 0.0
    for _ in range(params.cost.calibrate_steps):
        micro_seconds += timed(lambda: step.micro(x, y, accum=1))
        update_seconds += timed(step.update)
    # a planned step is its micro-batches and one update (Muon's Newton-Schulz is per step, not
    # per token): the CPU's capped micro-batch counts as many times as a step holds it
    micros_per_step = plan.micro_batch_size * plan.grad_accum_steps / micro
    step_seconds = (micros_per_step * micro_seconds + update_seconds) / params.cost.calibrate_steps
    rate = micros_per_step * micro * params.model.context / step_seconds
    mfu = compute.mfu(rate, compute.flops_per_token(params.model, vocab), device.peak_flops[plan.precision])
    return mfu, (f"calibrated: {rate:,.0f} tokens/s over {params.cost.calibrate_steps} steps of micro-batch "
                 f"{micro} x {params.model.context} ({plan.precision}) on this {where}, a step "
                 f"{micros_per_step:g} of them and one update, against {device.name}'s peak")


def _over_budget(params: Params, figures: dict[str, Any]) -> list[str]:
    cost = params.cost
    limits = {"usd": cost.budget_usd, "hours": cost.budget_hours, "kwh": cost.budget_kwh}
    return [k for k, limit in limits.items() if limit is not None and figures[k] > limit]


def _what_if_row(params: Params, device: Device, manifest: TokenManifest, scale: int, *,
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
    mfu = planned[1] if same_layout else _catalog_mfu(device, fit.plan)[0]
    work = Work.of(params, fit.plan, manifest, tokens_to_train(params) * scale)
    figures = price(work, device, row_params, mfu=mfu, usd_per_hour=params.cost.usd_per_hour if planned else None,
                    whole_steps=bool(same_layout and planned[2]))
    return {"device": device.name, "scale": scale, "tokens": work.tokens, "fits": fit.fits, "plan": fit.plan,
            "peak_memory_bytes": fit.memory.total, "pricing": pricing, **figures}


# ---- the gate -----------------------------------------------------------------------------------

def _refusal(params: Params, device: Device, fit: Fit, figures: dict[str, Any], over: list[str],
             what_if: list[dict[str, Any]], cost_md: Path) -> str | None:
    """The one message that stops the pipeline, or None when the run may go ahead."""
    if not fit.fits:
        roomy = [r["device"] for r in what_if if r["scale"] == 1 and r["fits"]]
        return (fit_error(fit, device, params) + ". Change: a smaller model (model.n_layer, "
                f"model.n_embd, model.context) or tokenizer.vocab_size"
                + ("" if params.train.micro_batch_size == "auto" and params.train.activation_checkpointing == "auto"
                   else ", train.micro_batch_size/activation_checkpointing: auto")
                + (f", or a device where it fits: {', '.join(roomy)}" if roomy else "")
                + f". See {cost_md}.")
    if not over or params.cost.override_budget:
        return None
    cost = params.cost
    limits = {"usd": (cost.budget_usd, "$", "cost.budget_usd"), "hours": (cost.budget_hours, "h", "cost.budget_hours"),
              "kwh": (cost.budget_kwh, "kWh", "cost.budget_kwh")}
    broken = "; ".join(" > {} ".join(_side_by_side(figures[k], limit, unit)).format(name)
                       for k in over for limit, unit, name in [limits[k]])
    share = min(limits[k][0] / figures[k] for k in over)
    tokens = tokens_to_train(params)
    fewer = int(tokens * share) // params.train.tokens_per_step * params.train.tokens_per_step
    options = [f"fewer tokens (train.max_tokens: {fewer} fits)" if fewer > 0 else "far fewer tokens",
               "a smaller model"]
    cheaper = [f"{r['device']} ({_fmt(r['hours'], 'h')}, {_fmt(r['usd'], '$')}, {r['pricing']})"
               for r in what_if if r["scale"] == 1 and r["fits"] and r["device"] != device.name
               and all(r[k] <= limits[k][0] for k in limits if limits[k][0] is not None)]
    if cheaper:
        options.append("a device within budget: " + ", ".join(cheaper))
    spot = device.usd_per_hour("spot")
    if cost.pricing == "on_demand" and spot is not None and cost.usd_per_hour is None:
        at_spot = figures["usd"] * spot / device.usd_per_hour("on_demand")
        options.append(f"spot pricing (cost.pricing: spot: {_fmt(at_spot, '$')})")
    return (f"over budget on {device.name} ({figures['usd_basis']}): {broken}. Change: " + "; ".join(options)
            + f"; or cost.override_budget: true to run anyway. See {cost_md}.")


def _side_by_side(value: float, limit: float, unit: str) -> tuple[str, str]:
    """A figure and the limit it broke, with digits enough to tell them apart ($0.0042 > $0.004,
    never <$0.01 > <$0.01)."""
    decimals = 2
    while decimals < 9 and round(value, decimals) == round(limit, decimals) or round(value, decimals) == 0:
        decimals += 1
        if decimals >= 9:
            break
    text = [f"{x:,.{decimals}f}" for x in (value, limit)]
    return tuple({"$": f"${t}", "h": f"{t} h", "kWh": f"{t} kWh"}[unit] for t in text)


# ---- reports ------------------------------------------------------------------------------------

def _fmt(value: float | None, unit: str) -> str:
    """Human figures: small runs (the demo) in seconds and fractions of a cent, long ones in days."""
    if value is None:
        return "-"
    if unit == "$":
        return f"${value:,.2f}" if value >= 0.01 or value == 0 else "<$0.01"
    if unit == "h":
        if value < 1 / 60:
            return f"{value * 3600:.0f} s"
        if value < 1:
            return f"{value * 60:.0f} min"
        return f"{value:,.1f} h" if value < 100 else f"{value:,.0f} h ({value / 24:,.1f} days)"
    if unit == "GiB":
        return f"{value / GIB:.2f} GiB"
    return f"{_num(value)} {unit}"


def _num(value: float) -> str:
    if 0 < value < 0.001:
        return "<0.001"
    return f"{value:,.2f}" if value >= 10 else f"{value:.3g}"


def _pricing_words(pricing: str) -> str:
    if pricing in ("on_demand", "owned"):
        return "on-demand price"
    return f"{pricing} price where it has one, else on-demand"


def render_markdown(report: CostReport, what_if: list[dict[str, Any]], refusal: str | None) -> str:
    r = report.as_dict()
    plan = r["plan"]
    if refusal:
        status = f"**REFUSED** (exit 3): {refusal}"
    elif r["override"]:
        status = f"**Over budget ({', '.join(r['over_budget'])}), run allowed by cost.override_budget.**"
    else:
        status = "Within budget: the run may go ahead."
    budget = ", ".join(f"{k} {v}" for k, v in r["budget"].items() if v is not None) or "none"
    mem = "\n".join(f"| {k} | {_fmt(v, 'GiB')} |" for k, v in r["memory"].items())
    lines = [
        f"# Cost estimate: {r['device']}",
        "",
        status,
        "",
        f"- Device: {r['device_description']} x {r['num_devices']}",
        f"- Model: {r['parameters']:,} parameters, {r['flops_per_token']:.3g} training FLOPs per token "
        "(6N + attention, as nanoGPT counts)",
        f"- Tokens: {r['tokens']:,} in {r['steps']:,} steps of {r['tokens_per_step']:,} "
        f"({r['epochs']:.2f} epochs of the {r['train_tokens_available']:,} train tokens)" if r["epochs"] is not None
        else f"- Tokens: {r['tokens']:,}",
        f"- Compute: {r['flops']:.3g} model FLOPs; {r['executed_flops']:.3g} executed, with "
        f"{r['eval_flops']:.3g} for validation"
        + (f" and x{r['recompute_factor']:.2f} for recompute (activation checkpointing)"
           if r["recompute_factor"] != 1 else ""),
        f"- Plan: {describe(Plan(**plan))} ({'fits' if r['fits'] else 'does NOT fit'}: "
        f"{_fmt(r['peak_memory_bytes'], 'GiB')} of {_fmt(r['memory_usable_bytes'], 'GiB')} usable)",
        f"- MFU: {r['mfu']:.1%} ({r['mfu_source']})",
        f"- Time: {_fmt(r['hours'], 'h')} ({_fmt(r['step_hours'], 'h')} of optimizer steps at "
        f"{r['tokens_per_second']:,.0f} tokens/s, the rest validation) at {r['peak_flops'] / 1e12:.3g} TFLOP/s peak",
        f"- Money: {_fmt(r['usd'], '$')} ({r['usd_basis']})",
        f"- Energy: {_fmt(r['kwh'], 'kWh')}, {_fmt(r['co2_kg'], 'kg CO2')}",
        f"- Budget: {budget}",
        "",
        "## Peak memory per device",
        "",
        "| part | size |",
        "| --- | --- |",
        mem,
        f"| **total** | **{_fmt(r['peak_memory_bytes'], 'GiB')}** |",
        "",
        "## What if: every catalog device, 1x and 10x the tokens",
        "",
        "Each device planned automatically, at its catalog MFU (this run's MFU for "
        f"{r['device']}); $ at its {_pricing_words(r['pricing'])}, else electricity (owned).",
        "",
        "| device | tokens | fits | plan | peak memory | hours | $ | kWh |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in what_if:
        lines.append(f"| {row['device']} | {row['tokens']:,} ({row['scale']}x) | {'yes' if row['fits'] else 'no'} | "
                     f"{describe(row['plan'])} | {_fmt(row['peak_memory_bytes'], 'GiB')} | "
                     f"{_fmt(row['hours'], 'h')} | {_fmt(row['usd'], '$')} ({row['pricing']}) | {_num(row['kwh'])} |")
    lines += ["", "## Sources", ""] + [f"- {k}: {v}" for k, v in r["sources"].items()]
    if r["detected"]:
        lines += ["", "## This machine, as detected", ""] + [f"- {k}: {v}" for k, v in r["detected"].items()]
    return "\n".join(lines) + "\n"


def render_terminal(report: CostReport, what_if: list[dict[str, Any]]) -> str:
    r = report.as_dict()
    head = (f"estimate: {r['device']} x {r['num_devices']}: {r['tokens']:,} tokens, {r['flops']:.3g} FLOPs, "
            f"{describe(Plan(**r['plan']))}, peak {_fmt(r['peak_memory_bytes'], 'GiB')} of "
            f"{_fmt(r['memory_usable_bytes'], 'GiB')} ({'fits' if r['fits'] else 'DOES NOT FIT'}); "
            f"{_fmt(r['hours'], 'h')}, {_fmt(r['usd'], '$')}, {_fmt(r['kwh'], 'kWh')} at MFU {r['mfu']:.1%}")
    rows = [f"  {'device':<20} {'fits':<4} {'hours':>22} {'$':>12} {'kWh':>10}"]
    rows += [f"  {row['device']:<20} {'yes' if row['fits'] else 'no':<4} {_fmt(row['hours'], 'h'):>22} "
             f"{_fmt(row['usd'], '$'):>12} {_num(row['kwh']):>10}" for row in what_if if row["scale"] == 1]
    return head + "\n" + "\n".join(rows)
