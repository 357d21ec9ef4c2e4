"""The headline numbers of a run, reports/metrics.json: what `dvc exp show` and `dvc metrics diff`
compare across experiments.

    {"val_loss": 5.91, "perplexity": 368.2, "bits_per_byte": 4.29,
     "hours": 0.00016, "usd": 7.3e-07, "hours_error_pct": 12.5, "usd_error_pct": 12.5}

Written by the evaluate stage from its result (the same numbers as reports/eval.json, which keeps
everything else: per-checkpoint scores, the estimate against actual table with its notes, the
provenance). Flat, numbers only and small, so that each value is one short column: a quantity
that was not measured is left out rather than written as null.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline.atomic import write_json

# whole-val-split quality of the final model (reports/eval.json, same names)
QUALITY = ("val_loss", "perplexity", "bits_per_byte")
# what the run cost, as measured, and how far the estimate was from it (in %):
# reports/eval.json estimate_vs_actual.quantities.NAME.{actual,error_pct}
COST = ("hours", "usd")


def headline(result: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of the evaluate stage's result."""
    out = {name: result.get(name) for name in QUALITY}
    quantities = (result.get("estimate_vs_actual") or {}).get("quantities") or {}
    for name in COST:
        q = quantities.get(name) or {}
        out[name] = q.get("actual")
        out[f"{name}_error_pct"] = q.get("error_pct")
    return {name: float(value) for name, value in out.items() if _number(value)}


def write(path: str | Path, result: dict[str, Any]) -> dict[str, float]:
    numbers = headline(result)
    write_json(path, numbers)
    return numbers


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
