"""The loss forecast for people: its section of reports/cost.md and its terminal line."""
from __future__ import annotations

from typing import Any

from pipeline.core.units import fmt

VALIDATION_ROWS = 12   # validation points shown; every one is in cost.json


def _early(fc: dict[str, Any]) -> bool:
    return min(p["val_loss"] for p in fc["pilots"]["grid"]) > fc["unigram_loss"]


def _cells(row: dict[str, Any]) -> tuple[str, str]:
    """A row's forecast and interval cells; past the epochs the law covers, its floor alone."""
    if row.get("beyond_law"):
        return f"at least {row['low']:.3f}", "none: a floor"
    return f"{row['loss']:.3f}", f"{row['low']:.3f} to {row['high']:.3f}"


def _headline(fc: dict[str, Any]) -> list[str]:
    final = fc["final"]
    run = (f"{fc['parameters_non_embedding']:,} non-embedding parameters, {final['tokens']:,} tokens "
           f"({final['epochs']:.2f} epochs of {fc['unique_tokens']:,} unique)")
    if not final["beyond_law"]:
        return [f"**{final['loss']:.3f}** (90% interval {final['low']:.3f} to {final['high']:.3f}) at the end of "
                f"this run: {run}."]
    return [f"**No forecast, a floor: at least {final['low']:.3f}** at the end of this run: {run}.", "",
            f"{final['epochs']:.1f} epochs is past the {fc['epochs_trusted']:g} the law covers. It counts repeated "
            "tokens for less, but a model on repeated text overfits, its validation loss flattening and then "
            "rising, which no fitted law here models: runs of 11 and 22 epochs ended 20-21% above the law's value "
            "(bench/README.md). So the law's lower bound is given, not a forecast. If early stopping "
            "(`train.patience`) ends the run, models/final is its best checkpoint. Add text, or choose a "
            f"plan of at most {fc['epochs_trusted']:g} epochs below."]


def markdown(fc: dict[str, Any]) -> list[str]:
    law, pilots, points = fc["law"], fc["pilots"], fc["points"]
    best = fc["best"]
    lines = [
        "", "## Validation loss forecast", "", *_headline(fc),
        *(["", f"**Early pilots**: every pilot ended above {fc['unigram_loss']:.3f}, the validation loss of the "
                "train split's token frequencies alone, so the law extrapolates from the first phase of training; "
                "on development text such forecasts came out high, by up to 12% (bench/README.md). A larger "
                "cost.forecast_share trains the pilots further."] if _early(fc) else []),
        "",
        f"- Law: L = {law['E']:.3f} + {law['A']:.3g} / (N/{law['n0']:.3g})^{law['alpha']:.2f} + "
        f"{law['B']:.3g} / (D'/{law['d0']:.3g})^{law['beta']:.2f}, N non-embedding parameters, D' effective "
        f"tokens (Muennighoff et al. 2023, R* = {law['repetition_decay']}); Chinchilla's form (Hoffmann et al. "
        f"2022); fit rmse {law['rmse']:.4f} nats",
        f"- Fitted to {points['pilots']} pilots" + (f" and {points['recorded_runs']} finished runs of this corpus "
                                                      f"(weighted {points['runs_weight']:.3g} each)"
                                                      if points["recorded_runs"] else "")
        + f"; interval: a residual bootstrap of {law['bootstrap']} refits (the law's form is not in it: past ~10x the "
          "pilots' compute, expect more error than it shows)",
        f"- Pilots: {'run now' if pilots['ran_now'] else 'recalled (same tokens, recipe and device: not rerun)'}, "
        f"{fmt(pilots['hours'], 'h')} measured ({fmt(pilots['priced_hours'], 'h')} priced), "
        f"{fmt(pilots['usd'], '$')}, {fmt(pilots['kwh'], 'kWh')}: counted against the budget with the run; "
        f"kept in {pilots['cache']}",
        *([f"- To stop at the forecast's upper bound: `train.target_val_loss: {fc['target_val_loss']}`"]
          if fc["target_val_loss"] is not None else []),
        "", "| pilot width | tokens | tokens/step | val loss | seconds |", "| ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {p['n_embd']} | {p['tokens']:,} | {p['tokens_per_step']:,} | "
              f"{p['val_loss']:.4f} | {p['seconds']:.1f} |" for p in pilots["grid"]]
    lines += ["", "A run ending at each validation point (mid-run, the LR still high, the loss sits above it):", "",
              "| step | tokens | forecast | 90% interval |", "| ---: | ---: | ---: | --- |"]
    points = fc["validations"]
    stride = -(-len(points) // VALIDATION_ROWS)
    shown = [v for i, v in enumerate(points) if i % stride == 0 or i == len(points) - 1]
    lines += [f"| {v['step']:,} | {v['tokens']:,} | {' | '.join(_cells(v))} |" for v in shown]
    lines += ["", "### Alternatives: model width x epochs", "",
              "The configured layers, head width and recipe; hours and $ at this run's MFU (smaller models reach "
              "less). Within budget: with the pilots' cost. **best**: the lowest forecast loss the budget affords, "
              f"of at most {fc['epochs_trusted']:g} epochs (past them, the law's floor alone).", "",
              "| width | non-embedding params | epochs | tokens | forecast | 90% interval | hours | $ | within budget |",
              "| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    for a in fc["alternatives"]:
        mark = " **best**" if a["best"] else ""
        mark += " (configured)" if a["configured"] else ""
        within = "yes" if a["within_budget"] and a["fits"] else ("no: does not fit" if not a["fits"] else "no")
        lines.append(f"| {a['n_embd']}{mark} | {a['parameters_non_embedding']:,} | {a['epochs']:.2f} | "
                     f"{a['tokens']:,} | {' | '.join(_cells(a))} | "
                     f"{fmt(a['hours'], 'h')} | {fmt(a['usd'], '$')} | {within} |")
    if best:
        lines += ["", f"Best plan for the budget: model.n_embd {best['n_embd']}, model.n_head {best['n_head']}, "
                      f"{best['tokens']:,} tokens ({best['epochs']:.2f} epochs): forecast {best['loss']:.3f} "
                      f"({best['low']:.3f} to {best['high']:.3f}), {fmt(best['hours'], 'h')}, {fmt(best['usd'], '$')}."]
    else:
        lines += ["", "No alternative fits the budget with the pilots' cost."]
    return lines


def terminal(fc: dict[str, Any]) -> str:
    final, best = fc["final"], fc["best"]
    line = (f"val loss at least {final['low']:.3f} (past {fc['epochs_trusted']:g} epochs: a floor, not a forecast)"
            if final["beyond_law"] else f"forecast val loss {final['loss']:.3f} ({final['low']:.3f} to {final['high']:.3f})")
    if best:
        line += (f"; best for the budget: n_embd {best['n_embd']}, {best['epochs']:.2f} epochs -> "
                 f"{best['loss']:.3f}, {fmt(best['usd'], '$')}")
    return line
