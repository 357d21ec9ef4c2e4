"""reports/metrics.json: a few flat numbers from the evaluate result, what `dvc exp show` compares."""
from __future__ import annotations

import json
import math

from pipeline.reports import headline


def _result(**quantities):
    return {"val_loss": 5.5, "perplexity": math.exp(5.5), "bits_per_byte": 4.1, "window": 64,
            "checkpoints": {"step-000006": {"val_loss": 5.5}},
            "estimate_vs_actual": {"available": True, "note": "prose", "quantities": quantities}}


def test_headline_is_flat_numbers_named_as_in_eval_json(tmp_path):
    result = _result(hours={"estimate": 1.0, "actual": 1.25, "error_pct": 25.0},
                     usd={"estimate": 0.4, "actual": 0.5, "error_pct": 25.0},
                     mfu={"estimate": 0.4, "actual": 0.3, "error_pct": -25.0})
    path = tmp_path / "metrics.json"
    written = headline.write(path, result)
    assert json.loads(path.read_text()) == written == {
        "val_loss": 5.5, "bits_per_byte": 4.1, "hours": 1.25, "usd": 0.5, "hours_error_pct": 25.0}


def test_what_was_not_measured_is_left_out():
    result = _result(hours={"estimate": None, "actual": 0.5, "error_pct": None},
                     usd={"estimate": 1.0, "actual": None, "error_pct": None})
    assert headline.headline(result) == {"val_loss": 5.5, "bits_per_byte": 4.1, "hours": 0.5}
    unavailable = {"val_loss": float("nan"), "bits_per_byte": 4.1,
                   "estimate_vs_actual": {"available": False, "note": "no train report"}}
    assert headline.headline(unavailable) == {"bits_per_byte": 4.1}


def test_each_reference_text_and_task_adds_its_columns():
    """evaluate.reference_texts and evaluate.tasks: one column per text, per task metric and its
    error; an error lm-eval could not give (one item) is left out."""
    result = {**_result(), "reference_texts": {"flores_azj": {"bits_per_byte": 1.9, "tokens": 10}},
              "tasks": {"belebele_azj_Latn": {"n": 900, "chance": 0.25, "metrics": {
                  "acc": {"value": 0.27, "stderr": 0.015, "vs_chance": "not distinguishable from chance"},
                  "acc_norm": {"value": 0.29, "stderr": None, "vs_chance": "above chance"}}}}}
    assert headline.headline(result) == {
        "val_loss": 5.5, "bits_per_byte": 4.1, "flores_azj_bits_per_byte": 1.9, "belebele_azj_Latn_acc": 0.27,
        "belebele_azj_Latn_acc_stderr": 0.015, "belebele_azj_Latn_acc_norm": 0.29}
