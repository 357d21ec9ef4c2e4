"""The cost report for people: reports/cost.md and the estimate's terminal summary."""
from __future__ import annotations

from typing import Any

from pipeline.core.units import fmt, num
from pipeline.cost import forecast_render
from pipeline.cost.cpuinfo import under_load
from pipeline.cost.planner import describe
from pipeline.engine.plan import Plan
from pipeline.cost.report import CostReport
from pipeline.cost.spot import advice

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
    mem = "\n".join(f"| {k} | {fmt(v, 'GiB')} |" for k, v in r["memory"].items())
    lines = [
        f"# Cost estimate: {r['device']}",
        "",
        status,
        "",
        f"- Device: {r['device_description']} {_times(r)}",
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
        f"{fmt(r['peak_memory_bytes'], 'GiB')} of {fmt(r['memory_usable_bytes'], 'GiB')} usable)",
        f"- MFU: {r['mfu']:.1%} ({r['mfu_source']})",
        f"- Time: {fmt(r['hours'], 'h')} ({fmt(r['step_hours'], 'h')} of optimizer steps at "
        f"{r['tokens_per_second']:,.0f} tokens/s, the rest validation) at {r['peak_flops'] / 1e12:.3g} TFLOP/s peak",
        *_under_load(r["detected"]),
        f"- Money: {fmt(r['usd'], '$')} ({r['usd_basis']})",
        f"- Energy: {fmt(r['kwh'], 'kWh')}, {fmt(r['co2_kg'], 'kg CO2')}",
        f"- Budget: {budget}",
        "",
        "## Peak memory per device",
        "",
        "| part | size |",
        "| --- | --- |",
        mem,
        f"| **total** | **{fmt(r['peak_memory_bytes'], 'GiB')}** |",
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
                     f"{describe(row['plan'])} | {fmt(row['peak_memory_bytes'], 'GiB')} | "
                     f"{fmt(row['hours'], 'h')} | {fmt(row['usd'], '$')} ({row['pricing']}) | {num(row['kwh'])} |")
    lines += _spot_lines(r["spot"], r["pricing"]) if r["spot"] else []
    lines += forecast_render.markdown(r["forecast"]) if r.get("forecast") else []
    lines += ["", "## Sources", ""] + [f"- {k}: {v}" for k, v in r["sources"].items()]
    if r["detected"]:
        lines += ["", "## This machine, as detected", ""] + [f"- {k}: {v}" for k, v in r["detected"].items()]
    return "\n".join(lines) + "\n"


def render_terminal(report: CostReport, what_if: list[dict[str, Any]]) -> str:
    r = report.as_dict()
    head = (f"estimate: {r['device']} {_times(r)}: {r['tokens']:,} tokens, {r['flops']:.3g} FLOPs, "
            f"{describe(Plan(**r['plan']))}, peak {fmt(r['peak_memory_bytes'], 'GiB')} of "
            f"{fmt(r['memory_usable_bytes'], 'GiB')} ({'fits' if r['fits'] else 'DOES NOT FIT'}); "
            f"{fmt(r['hours'], 'h')}, {fmt(r['usd'], '$')}, {fmt(r['kwh'], 'kWh')} at MFU {r['mfu']:.1%}")
    rows = [f"  {'device':<20} {'fits':<4} {'hours':>22} {'$':>12} {'kWh':>10}"]
    rows += [f"  {row['device']:<20} {'yes' if row['fits'] else 'no':<4} {fmt(row['hours'], 'h'):>22} "
             f"{fmt(row['usd'], '$'):>12} {num(row['kwh']):>10}" for row in what_if if row["scale"] == 1]
    spot = r["spot"]
    if spot:
        head += (f"\n  on-demand {fmt(spot['usd_on_demand'], '$')}, spot {fmt(spot['usd_spot'], '$')}, spot with its "
                 f"expected reclaims {fmt(spot['usd_spot_with_reclaims'], '$')}; checkpoint_every "
                 f"{spot['checkpoint_every_recommended']:,} recommended (cost.md)")
    if r.get("forecast"):
        head += "\n  " + forecast_render.terminal(r["forecast"])
    return head + "\n" + "\n".join(rows)


def _spot_lines(spot: dict[str, Any], pricing: str) -> list[str]:
    """On-demand, spot and spot with its expected reclaims, and the checkpoint interval (pipeline/cost/spot.py)."""
    hours, added_usd = spot["hours_spot_with_reclaims"], spot["usd_spot_with_reclaims"] - spot["usd_spot"]
    gated = " (the budget gate holds this one: cost.pricing is spot)" if pricing == "spot" else ""
    return [
        "", "## On-demand, spot, and spot with its reclaims", "",
        "| price | hours | $ |", "| --- | ---: | ---: |",
        f"| on-demand | {fmt(spot['hours'], 'h')} | "
        f"{fmt(spot['usd_on_demand'], '$') if spot['usd_on_demand'] is not None else 'n/a'} |",
        f"| spot, never reclaimed | {fmt(spot['hours'], 'h')} | "
        f"{fmt(spot['usd_spot'], '$')} |",
        f"| **spot with its expected reclaims**{gated} | {fmt(hours, 'h')} | **{fmt(spot['usd_spot_with_reclaims'], '$')}** |",
        "",
        f"- Expected reclaims add {(hours - spot['hours']) * 3600:,.3g} s and ${added_usd:,.3g} "
        f"({added_usd / spot['usd_spot']:.2%} of the spot price)",
        f"- Reclaims: {spot['reclaims_per_month']:.0%} of instances a month, {spot['reclaims_per_hour']:.3g} an hour "
        f"(one every {spot['mean_hours_between_reclaims']:,.0f} h on average): {spot['expected_reclaims']:.3g} expected "
        f"in this run, each losing {fmt(spot['hours_lost_per_reclaim'], 'h')} (half of "
        f"{fmt(spot['checkpoint_interval_hours'], 'h')} between surviving checkpoints, plus "
        f"{fmt(spot['restart_hours'], 'h')} to restart)",
        f"- Checkpoint: {spot['checkpoint_bytes'] / 1e6:,.0f} MB, {spot['checkpoint_seconds']:.3g} s "
        f"({spot['checkpoint_seconds_source']})",
        f"- Recommended train.checkpoint_every: {spot['checkpoint_every_recommended']:,} steps, the Young/Daly interval "
        f"sqrt(2 x {spot['checkpoint_seconds']:.3g} s x {spot['mean_hours_between_reclaims']:,.0f} h) = "
        f"{fmt(spot['young_daly_hours'], 'h')} (J. W. Young, CACM 1974; J. T. Daly, FGCS 2006); {advice(spot)}",
    ] + [f"- {k}: {v}" for k, v in spot["sources"].items()]


def _times(r: dict[str, Any]) -> str:
    """x N devices; on a CPU, N processes that share its cores, priced as the one CPU they are."""
    n = r["num_devices"]
    if r["plan"]["device_kind"] != "cpu" or n == 1:
        return f"x {n}"
    cores = (r["detected"] or {}).get("cores")
    crowded = (f"; {n} processes on {cores} cores crowd each other: set cost.num_devices to at most {cores}"
               if cores and n > cores else "")
    return f"x 1 (cost.num_devices: {n} processes share this CPU's cores and memory, priced as one CPU{crowded})"


def _under_load(detected: dict[str, Any] | None) -> list[str]:
    """A peak timed on a busy machine is low, and the hours priced from it high: said beside them."""
    if not detected or not under_load(detected["load_average"], detected["cores"]):
        return []
    return [f"- Peak measured under load: the load average was {detected['load_average']:g} on "
            f"{detected['cores']} cores when it was timed ({detected['measured_at']}), so it may be low and the "
            f"time high; it is measured again once this machine is quieter, or now by `{detected['remeasure']}`"]
