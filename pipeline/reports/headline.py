"""The headline numbers of a run, reports/metrics.json: what `dvc exp show` and `dvc metrics diff`
compare across experiments.

    {"val_loss": 5.94, "bits_per_byte": 4.31, "hours": 11.6, "usd": 4.06, "hours_error_pct": 8.2,
     "flores_azj_bits_per_byte": 1.92, "belebele_azj_Latn_acc": 0.27, "belebele_azj_Latn_acc_stderr": 0.015}

Written by the evaluate stage from its result; reports/eval.json keeps everything else (perplexity,
which is exp(val_loss), the per-checkpoint scores, every estimated quantity with its estimate,
actual and error, the notes, the provenance). Flat, numbers only, and few: each value is one
column of `dvc exp show`, whose table should fit a terminal. A quantity that was not measured is
left out rather than written as null. Each reference text and lm-eval task the user asked for adds
its own columns (evaluate.reference_texts, evaluate.tasks): NAME_bits_per_byte; TASK_acc,
TASK_acc_stderr and TASK_acc_norm(_stderr) where the task defines acc_norm.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline.core.atomic import write_json

# whole-val-split quality of the final model (reports/eval.json, same names); bits per byte
# compares models across tokenizers, val loss does not
QUALITY = ("val_loss", "bits_per_byte")
# what the run cost, as measured: reports/eval.json estimate_vs_actual.quantities.NAME.actual
ACTUAL = ("hours", "usd")
# how far the estimate was off, in % (+: the run took more): ...quantities.NAME.error_pct
ERROR = ("hours",)


def headline(result: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of the evaluate stage's result."""
    quantities = (result.get("estimate_vs_actual") or {}).get("quantities") or {}
    out = {name: result.get(name) for name in QUALITY}
    out.update({name: (quantities.get(name) or {}).get("actual") for name in ACTUAL})
    out.update({f"{name}_error_pct": (quantities.get(name) or {}).get("error_pct") for name in ERROR})
    out.update({f"{name}_bits_per_byte": text["bits_per_byte"] for name, text in (result.get("reference_texts") or {}).items()})
    for task, row in (result.get("tasks") or {}).items():
        for metric, m in row["metrics"].items():
            out.update({f"{task}_{metric}": m["value"], f"{task}_{metric}_stderr": m["stderr"]})
    return {name: float(value) for name, value in out.items() if _number(value)}


def write(path: str | Path, result: dict[str, Any]) -> dict[str, float]:
    numbers = headline(result)
    write_json(path, numbers)
    return numbers


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
