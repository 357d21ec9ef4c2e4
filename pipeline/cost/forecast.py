"""The loss forecast (cost.forecast): what validation loss the configured run will reach, with an
interval, and which model size and epochs the budget buys the lowest loss with.

    fc, held = forecast.when_asked(params, manifest, tokens_dir, device, fit, mfu, whole_steps, run_figures)
    fc.report        # reports/cost.json's "forecast" block
    fc.figures       # the pilots' hours, $ and kWh; held: the run's figures with them added

The law (pipeline/cost/scaling.py) is fitted to the pilots (pipeline/cost/pilots.py) and to every
finished run of the same corpus, architecture, layers and context that the evaluate stage recorded
(pipeline/cost/forecast_record.py): such a run is the measurement nearest the runs forecast, so together they
weigh as much as the pilots; a run's own record never forecasts it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.cache import cache_dir
from pipeline.core.errors import BudgetExceeded, PipelineError
from pipeline.core.params import Params
from pipeline.cost import budget, pilots, pricing, scaling
from pipeline.cost.forecast_record import RUNS_FILE, law_key, recorded_runs
from pipeline.cost.hardware import Device
from pipeline.cost.planner import Fit, fit_error, plan_for
from pipeline.data.tokens import TokenManifest
from pipeline.engine.identity import run_id
from pipeline.engine.plan import Plan
from pipeline.model import compute

WIDTH_SCALES = (0.5, 0.75, 1.0, 1.5, 2.0)     # the alternatives' model widths, x the configured heads
EPOCHS = (0.25, 0.5, 1.0, 2.0, 4.0)            # and their tokens, x the unique train tokens
# Past this many epochs the law gives a floor, not a forecast: its D' only stops repeated tokens from
# counting, while a model on repeated text overfits and its val loss rises (Muennighoff et al. 2023:
# returns fade past ~4 epochs and vanish by ~16). Measured: runs of 11 and 22 epochs ended 20-21%
# above the law's value, every run of at most 2.25 epochs within 12% (bench/README.md).
EPOCHS_TRUSTED = 4.0
FIGURES = ("hours", "usd", "kwh")


@dataclass(frozen=True)
class Forecast:
    report: dict[str, Any]
    figures: dict[str, float]     # the pilots' hours, usd, kwh


def when_asked(params: Params, manifest: TokenManifest, tokens_dir: Path, device: Device, fit: Fit, mfu: float,
               whole_steps: bool, run_figures: dict[str, Any]) -> tuple[Forecast | None, dict[str, Any]]:
    """The forecast under cost.forecast (else None) and the run's figures with the pilots' cost
    added, what the budget holds; the configured plan must fit to be forecast."""
    if not params.cost.forecast:
        return None, run_figures
    if not fit.fits:
        raise PipelineError(fit_error(fit, device, params) + ": the forecast needs a plan that fits; change the "
                            "model or device, or set cost.forecast: false")
    made = make(params, manifest, tokens_dir, device, fit.plan, mfu=mfu, whole_steps=whole_steps)
    return made, with_pilots(run_figures, made.figures)


def make(params: Params, manifest: TokenManifest, tokens_dir: Path, device: Device, plan: Plan, *,
         mfu: float, whole_steps: bool) -> Forecast:
    """The pilots (recalled by content, or run here), the law fitted to them, and the forecast."""
    run_work = pricing.Work.of(params, plan, manifest)
    grid = pilots.grid(params, manifest, run_work.flops)
    priced = _pilots_price(params, grid, device, plan, manifest, mfu)
    _check_pilots_fit(params, priced)
    key = pilots.key(params, manifest, grid, device.name, plan.precision)
    entry = pilots.recall(key)
    reran = entry is None
    if reran:
        entry = pilots.run_all(params, manifest, tokens_dir, grid, key, device=_device(device),
                               precision=plan.precision, micro_batch_size=plan.micro_batch_size)
    pilots.check_falling(entry["results"], manifest.vocab_size)
    figures = _measured_cost(priced, entry["seconds"])
    pilot_block = {"grid": entry["results"], "ran_now": reran, "key": key, "measured_at": entry["measured_at"],
                   "seconds": entry["seconds"], **figures, "cache": str(cache_dir() / pilots.FILE_NAME)}
    law, points = _fit(params, manifest, entry["results"])
    report = {"law": law.as_dict(), "points": points, "pilots": pilot_block,
              "unigram_loss": pilots.unigram_loss(tokens_dir, manifest.vocab_size),
              **_forecasts(params, manifest, device, law, mfu, whole_steps, figures)}
    return Forecast(report, figures)


def _forecasts(params: Params, manifest: TokenManifest, device: Device, law: scaling.Law, mfu: float,
               whole_steps: bool, pilot_figures: dict[str, float]) -> dict[str, Any]:
    """The configured run's forecast (at its end and each validation), the alternatives and the best."""
    unique, tokens = manifest.train_tokens, budget.tokens_to_train(params)
    n = compute.hidden_matrix_parameters(params.model)
    final, beyond = _point(law, n, tokens, unique), _beyond_law(tokens, unique)
    alternatives = _alternatives(params, manifest, device, law, mfu, whole_steps, pilot_figures)
    return {"law_key": law_key(params, manifest), "run": run_id(params, manifest),
            "parameters_non_embedding": n, "unique_tokens": unique, "epochs_trusted": EPOCHS_TRUSTED,
            "final": {"tokens": tokens, "epochs": tokens / unique, "beyond_law": beyond, **final},
            "validations": _validations(params, law, n, unique), "alternatives": alternatives,
            "best": next((a for a in alternatives if a["best"]), None),
            "target_val_loss": None if beyond else round(final["high"], 4)}   # a floor is no loss to stop at


def _beyond_law(tokens: float, unique: float) -> bool:
    """Whether a run of `tokens` repeats its `unique` tokens past EPOCHS_TRUSTED: its loss a floor."""
    return tokens / unique > EPOCHS_TRUSTED


def with_pilots(figures: dict[str, Any], pilot_figures: dict[str, float]) -> dict[str, Any]:
    """The run's figures with the pilots' added: what the budget is held against."""
    return {**figures, **{k: figures[k] + pilot_figures[k] for k in FIGURES}}


# ---- the pilots' price ---------------------------------------------------------------------------

def _pilots_price(params: Params, grid: list[pilots.Pilot], device: Device, plan: Plan, manifest: TokenManifest,
                  mfu: float) -> dict[str, float]:
    """Hours, $ and kWh of the pilots at the run's MFU: small models reach less, so the measured
    hours replace these once they have run (_measured_cost)."""
    total = dict.fromkeys(FIGURES, 0.0)
    for pilot in grid:
        p = pilots.pilot_params(params, pilot)
        work = pricing.Work(p, plan, compute.flops_per_token(p.model, manifest.vocab_size), pilot.tokens,
                            params.train.eval_batches * params.train.tokens_per_step, manifest.vocab_size)  # one validation
        figures = pricing.price(work, device, p, mfu=mfu, usd_per_hour=params.cost.usd_per_hour)
        for k in FIGURES:
            total[k] += figures[k]
    return total


def _check_pilots_fit(params: Params, priced: dict[str, float]) -> None:
    over = budget.over_budget(params.cost, priced)
    if over and not params.cost.override_budget:
        limits = budget.limits(params.cost)
        raise BudgetExceeded(
            "cost.forecast: the pilots alone would cost " + ", ".join(f"{priced[k]:.3g} {budget.UNITS[k]} (budget "
                                                                      f"{limits[k]:g})" for k in over)
            + ": lower cost.forecast_share, raise the budget, or set cost.forecast: false")


def _measured_cost(priced: dict[str, float], seconds: float) -> dict[str, float]:
    """The pilots' hours as measured, $ and kWh at the priced rate per hour."""
    hours = seconds / 3600
    scale = hours / priced["hours"] if priced["hours"] else 0.0
    return {"hours": hours, "usd": priced["usd"] * scale, "kwh": priced["kwh"] * scale,
            "priced_hours": priced["hours"]}


def _device(device: Device) -> str:
    import torch

    if device.kind == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"cost.forecast: cost.hardware is {device.name} but this machine has no CUDA GPU: the "
                            "pilots run on the device they forecast; estimate on the target machine, or set "
                            "cost.forecast: false")
    return device.kind


# ---- the law -------------------------------------------------------------------------------------

def _fit(params: Params, manifest: TokenManifest, results: list[dict]) -> tuple[scaling.Law, dict[str, Any]]:
    runs = [r for run, r in recorded_runs(law_key(params, manifest)).items() if run != run_id(params, manifest)]
    points = [(r["parameters"], r["tokens"], manifest.train_tokens, r["val_loss"], 1.0) for r in results]
    weight = len(results) / len(runs) if runs else 0.0
    points += [(r["parameters"], r["tokens"], r["unique_tokens"], r["val_loss"], weight) for r in runs]
    law = scaling.fit(*[list(column) for column in zip(*points)])
    return law, {"pilots": len(results), "recorded_runs": len(runs), "runs_weight": weight,
                 "runs_file": str(cache_dir() / RUNS_FILE)}


def _point(law: scaling.Law, n: float, tokens: float, unique: float) -> dict[str, float]:
    low, high = law.interval(n, tokens, unique)
    return {"loss": law.loss(n, tokens, unique), "low": low, "high": high}


def _validations(params: Params, law: scaling.Law, n: float, unique: float) -> list[dict[str, Any]]:
    """The loss a run ending at each validation would reach (a floor past EPOCHS_TRUSTED): a run
    mid-schedule sits above it, its LR still high."""
    train = params.train
    steps = budget.tokens_to_train(params) // train.tokens_per_step
    points = list(range(train.eval_every, steps + 1, train.eval_every))
    if not points or points[-1] != steps:
        points.append(steps)
    return [{"step": s, "tokens": s * train.tokens_per_step, **_point(law, n, s * train.tokens_per_step, unique),
             "beyond_law": _beyond_law(s * train.tokens_per_step, unique)} for s in points]


def _alternatives(params: Params, manifest: TokenManifest, device: Device, law: scaling.Law, mfu: float,
                  whole_steps: bool, pilot_figures: dict[str, float]) -> list[dict[str, Any]]:
    """Model width x epochs (EPOCHS and the configured run's): forecast loss, hours, $, whether it fits memory and the budget (the pilots'
    cost counted), and the best: the lowest forecast loss of those that fit both, within the epochs
    the law is trusted for."""
    model, unique, step = params.model, manifest.train_tokens, params.train.tokens_per_step
    head_dim = model.n_embd // model.n_head
    rows = []
    for heads in sorted({max(1, round(model.n_head * s)) for s in WIDTH_SCALES}):
        shaped = params.model_copy(update={"model": model.model_copy(update={
            "n_head": heads, "n_embd": heads * head_dim,
            "mlp_width": pilots._mlp(model.mlp_width, heads / model.n_head)})})
        fit = plan_for(shaped, device, manifest.vocab_size)
        n = compute.hidden_matrix_parameters(shaped.model)
        configured = budget.tokens_to_train(params)
        for tokens in sorted({max(step, int(e * unique) // step * step) for e in EPOCHS} | {configured}):
            work = pricing.Work.of(shaped, fit.plan, manifest, tokens)
            figures = pricing.price(work, device, shaped, mfu=mfu, usd_per_hour=params.cost.usd_per_hour,
                                    whole_steps=whole_steps)
            within = not budget.over_budget(params.cost, with_pilots(figures, pilot_figures))
            rows.append({"n_embd": heads * head_dim, "n_head": heads, "parameters_non_embedding": n,
                         "epochs": tokens / unique, "tokens": tokens, **_point(law, n, tokens, unique),
                         "hours": figures["hours"], "usd": figures["usd"], "kwh": figures["kwh"],
                         "fits": fit.fits, "within_budget": within,
                         "configured": heads == model.n_head and tokens == configured,
                         "beyond_law": _beyond_law(tokens, unique),
                         "best": False})
    eligible = [r for r in rows if r["fits"] and r["within_budget"] and not r["beyond_law"]]
    if eligible:
        min(eligible, key=lambda r: r["loss"])["best"] = True
    return rows
