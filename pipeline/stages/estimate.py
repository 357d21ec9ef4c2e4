"""The estimate stage: FLOPs, a memory plan, hours, dollars, energy, and the budget gate.

    python -m pipeline estimate [--set cost.hardware=rtx2050-laptop-4gb] [--set cost.calibrate=true]

Reads the token manifest (checked against the tokenizer); writes the plan (read by train), the cost
report and a Markdown report: a what-if table over the catalog and, under cost.forecast, the loss
forecast (pipeline/cost/forecast.py). Over budget, or with no plan that fits memory, BudgetExceeded
(exit 3): only the Markdown report is written, saying why; an earlier plan or cost report goes.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.core import provenance
from pipeline.core.atomic import write_text
from pipeline.core.errors import BudgetExceeded, PipelineError
from pipeline.core.params import Params
from pipeline.cost import budget, forecast, hardware, pricing
from pipeline.cost.hardware import Device
from pipeline.cost.planner import Fit, fit_error, plan_for
from pipeline.cost.render import render_markdown, render_terminal
from pipeline.cost.report import CostReport
from pipeline.cost.spot import gated, side_by_side
from pipeline.data.tokens import TokenManifest, load as load_manifest
from pipeline.model import compute
from pipeline.registry import declared_params


def run(params: Params, *, tokens: Path, tokenizer: Path, plan: Path, cost: Path, cost_md: Path) -> CostReport:
    manifest = load_manifest(tokens, tokenizer, verify_files=False)
    check_windows(manifest, params.model.context, Path(tokens))
    vocab = manifest.vocab_size
    devices = hardware.catalog(params.cost.extra_hardware)
    device = hardware.get_device(params.cost)
    _check_settings(params, device)

    fit = plan_for(params, device, vocab)
    mfu, mfu_source, wall_over_steps, whole_steps = pricing.utilization(params, device, fit, manifest)
    work = pricing.Work.of(params, fit.plan, manifest)
    figures = pricing.price(work, device, params, mfu=mfu, usd_per_hour=params.cost.usd_per_hour,
                    wall_over_steps=wall_over_steps, whole_steps=whole_steps)
    steps = work.tokens // fit.plan.tokens_per_step
    spot = side_by_side(params, device, figures, steps, vocab, pricing.recalled(params, fit.plan, manifest))
    held = gated(figures, spot, params.cost.pricing)   # under spot pricing, with the expected reclaims
    predicted, held = forecast.when_asked(params, manifest, Path(tokens), device, fit, mfu, whole_steps, held)  # + pilots
    over = budget.over_budget(params.cost, held)
    what_if = [pricing.what_if_row(params, d, manifest, k, planned=(fit.plan, mfu, whole_steps) if d.name == device.name else None)
               for k in pricing.WHAT_IF_SCALES for d in devices.values()]
    report = CostReport.make(
        device=device.name, device_description=device.description, num_devices=params.cost.num_devices,
        pricing=params.cost.pricing, fits=fit.fits, within_budget=not over,
        override=bool(params.cost.override_budget and over and fit.fits),
        override_budget=params.cost.override_budget, over_budget=over,
        budget=budget.limits(params.cost), budget_tolerance=params.cost.budget_tolerance,
        tokens=work.tokens, steps=steps, tokens_per_step=fit.plan.tokens_per_step, train_tokens_available=manifest.train_tokens,
        epochs=work.tokens / manifest.train_tokens if manifest.train_tokens else None,
        parameters=compute.parameter_count(params.model, vocab), flops_per_token=work.flops_per_token,
        **figures, mfu=mfu, mfu_source=mfu_source, spot=spot, forecast=predicted.report if predicted else None,
        peak_memory_bytes=fit.memory.total, memory_usable_bytes=fit.usable_bytes, memory=fit.memory.as_dict(),
        plan=fit.plan.as_dict(), sources=device.sources, detected=getattr(device, "detected", None),
        provenance=provenance.record(declared_params("estimate", params)),
    )
    refusal = _refusal(params, device, fit, held, over, what_if, spot, str(cost_md), budget.pilots_spent(report))
    write_text(cost_md, render_markdown(report, what_if, refusal))
    print(render_terminal(report, what_if), *params.auto_notes(), sep="\n")  # the lr train will use, and why
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
    if not (budget.has_budget(cost) or cost.override_budget):
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


def _refusal(params: Params, device: Device, fit: Fit, figures: dict, over: list[str], what_if: list[dict],
             spot: dict | None, cost_md: str, pilots: dict[str, float]) -> str | None:
    """The one message that stops the pipeline: no plan fits, or over budget (the gate)."""
    if not fit.fits:
        roomy = [r["device"] for r in what_if if r["scale"] == 1 and r["fits"]]
        return (fit_error(fit, device, params) + ". Change: a smaller model (model.n_layer, "
                f"model.n_embd, model.context) or tokenizer.vocab_size"
                + ("" if params.train.micro_batch_size == "auto" and params.train.activation_checkpointing == "auto"
                   else ", train.micro_batch_size/activation_checkpointing: auto")
                + (f", or a device where it fits: {', '.join(roomy)}" if roomy else "")
                + f". See {cost_md}.")
    offer_spot = spot and params.cost.pricing == "on_demand" and params.cost.usd_per_hour is None  # with its reclaims
    spot_usd = spot["usd_spot_with_reclaims"] if offer_spot else None
    others = [r for r in what_if if r["scale"] == 1 and r["device"] != device.name]
    return budget.gate_refusal(params, figures, over, device=device.name, alternatives=others, spot_usd=spot_usd, cost_md=cost_md, pilots=pilots)
