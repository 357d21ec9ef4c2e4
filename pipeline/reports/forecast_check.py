"""The loss forecast against the run (cost.forecast): each validation the train stage ran beside
the forecast for its step, in reports/summary.md, eval.json and the loss plot; and the finished
run kept for later forecasts of the same corpus (pipeline/cost/forecast_record.py).

The forecast is the one in the cost report the run was gated with (train.json's estimate), as for
hours and dollars. Error = (actual - forecast) / forecast. Past the epochs the law covers the
estimate gives a floor, not a forecast (pipeline/cost/forecast.py): there the run is held against
the floor, with no error.
"""
from __future__ import annotations

from typing import Any

from pipeline.cost import forecast_record

PLANNED_ENDS = ("max_steps", "max_tokens")   # a run that ended on its schedule: a point of the law


def held_against(train: dict[str, Any] | None) -> dict[str, Any] | None:
    """The forecast against the run (compare), and the run kept for later forecasts (remember)."""
    remember(train)
    return compare(train)


def compare(train: dict[str, Any] | None) -> dict[str, Any] | None:
    """None when the run was estimated without cost.forecast."""
    fc = ((train or {}).get("estimate") or {}).get("forecast")
    if not fc:
        return None
    measured = {v["step"]: v["loss"] for v in (train.get("loss") or {}).get("val", []) if v.get("loss") is not None}
    rows = [_held(v, measured.get(v["step"])) for v in fc["validations"]]
    final = rows[-1] if rows and rows[-1]["actual"] is not None else None
    return {"final": final, "validations": rows, "law": fc["law"], "stop_reason": train.get("stop_reason"),
            "inside_interval": final is not None and not final["beyond_law"]
            and final["low"] <= final["actual"] <= final["high"]}


def _held(point: dict[str, Any], actual: float | None) -> dict[str, Any]:
    """A validation point of the forecast with the run's loss there: its error, or past the epochs
    the law covers, whether the floor held."""
    beyond = bool(point.get("beyond_law"))
    return {**point, "beyond_law": beyond, "actual": actual,
            "error_pct": None if beyond else _error(point["loss"], actual),
            "floor_held": actual >= point["low"] if beyond and actual is not None else None}


def remember(train: dict[str, Any] | None) -> bool:
    """Keep the finished run's last validation for later forecasts; only a run that ended on its
    schedule (an early stop ends with the LR still high, above the law's loss)."""
    fc = ((train or {}).get("estimate") or {}).get("forecast")
    vals = [v for v in ((train or {}).get("loss") or {}).get("val", []) if v.get("loss") is not None]
    if not fc or not vals or train.get("stop_reason") not in PLANNED_ENDS or vals[-1]["step"] != train.get("steps"):
        return False
    return forecast_record.remember_run(fc["law_key"], fc["run"], parameters=fc["parameters_non_embedding"],
                                        tokens=train["tokens"], unique_tokens=fc["unique_tokens"],
                                        val_loss=vals[-1]["loss"])


def markdown(check: dict[str, Any] | None) -> list[str]:
    if check is None:
        return []
    out = ["## Validation loss: forecast against actual", "",
           "The forecast of the estimate this run was gated with (cost.forecast: pilots and a fitted law, "
           "reports/cost.md); during training, on train's validation subset. Mid-run the forecast is for a run "
           "ending there, so the measured loss, its LR still high, sits above it until the end.", "",
           "| step | tokens | forecast | 90% interval | actual | error |", "| ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in check["validations"]:
        if r["actual"] is None:
            continue
        if r["beyond_law"]:
            out.append(f"| {r['step']:,} | {r['tokens']:,} | at least {r['low']:.3f} | none: a floor | "
                       f"{r['actual']:.3f} | {'floor held' if r['floor_held'] else 'below the floor'} |")
        else:
            out.append(f"| {r['step']:,} | {r['tokens']:,} | {r['loss']:.3f} | {r['low']:.3f} to {r['high']:.3f} | "
                       f"{r['actual']:.3f} | {r['error_pct']:+.1f}% |")
    final = check["final"]
    if final and final["beyond_law"]:
        out += ["", f"At the end: actual {final['actual']:.3f} against a floor of {final['low']:.3f} "
                    f"({'held' if final['floor_held'] else 'below it'}): past the epochs the law covers, the estimate "
                    "gave a floor, not a forecast."]
    elif final:
        out += ["", f"At the end: forecast {final['loss']:.3f}, actual {final['actual']:.3f} ({final['error_pct']:+.1f}%), "
                    f"{'inside' if check['inside_interval'] else 'outside'} the 90% interval."]
    else:
        out += ["", f"The run stopped ({check['stop_reason']}) before the forecast's last validation."]
    return out


def _error(forecast: float, actual: float | None) -> float | None:
    return 100.0 * (actual - forecast) / forecast if actual is not None else None
