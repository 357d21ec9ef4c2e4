"""pipeline.engine.progress and the train report built from it (pipeline.engine.report.train_report):
what a checkpoint saves of a run comes back whole, non-finite numbers become null."""
from __future__ import annotations

import json
import math
from pathlib import Path

from pipeline.core import params as params_module
from pipeline.engine.plan import Setup
from pipeline.engine.progress import Progress, json_float
from pipeline.engine.report import TrainReport, train_report

ROOT = Path(__file__).resolve().parent.parent


def three_steps() -> Progress:
    progress = Progress()
    progress.record_train(5.0, 1e-3, 1.2)
    progress.record_train(math.nan, 2e-3, None)
    progress.counts["nonfinite_steps_skipped"] += 1
    progress.record_train(4.0, 3e-3, 0.9)
    return progress


def test_steps_and_validations_are_recorded_as_json_allows():
    progress = three_steps()
    assert progress.step == 3 and progress.last_val is None
    assert progress.history["train"][1] == {"step": 2, "loss": None, "lr": 2e-3, "grad_norm": None}
    entry = progress.record_val(800.0)  # a perplexity past float range
    assert entry == {"step": 3, "loss": 800.0, "perplexity": None} and progress.last_eval_step == 3
    json.dumps(progress.history, allow_nan=False)


def test_early_stopping_counts_validations_since_the_best():
    progress = Progress()
    progress.judge_val(3.0, improved=True)
    progress.judge_val(3.1, improved=False)
    progress.judge_val(3.2, improved=False)
    assert (progress.best_val, progress.bad_evals) == (3.0, 2)
    progress.judge_val(2.5, improved=True)
    assert (progress.best_val, progress.bad_evals) == (2.5, 0)


def test_a_checkpoints_meta_gives_the_same_progress_back():
    progress = three_steps()
    progress.record_val(3.5)
    progress.judge_val(3.5, improved=True)
    meta = progress.meta(tokens_per_step=512, hours=0.25)
    assert meta == {"step": 3, "tokens": 1536, "val_loss": 3.5, "train_hours": 0.25, "best_val_loss": 3.5,
                    "bad_evals": 0, "counts": {"nonfinite_steps_skipped": 1, "overflow_steps_skipped": 0}}
    again = Progress.resumed(json.loads(json.dumps(meta)), json.loads(json.dumps(progress.history)))
    assert again == Progress(step=3, earlier_hours=0.25, history=progress.history, best_val=3.5, bad_evals=0,
                             counts=progress.counts, last_eval_step=3)


def test_a_checkpoint_between_validations_has_no_val_loss_and_no_best_yet():
    progress = three_steps()
    meta = progress.meta(tokens_per_step=512, hours=0.0)
    assert meta["val_loss"] is None and meta["best_val_loss"] is None
    again = Progress.resumed(meta, progress.history)
    assert again.best_val == math.inf and again.last_eval_step == -1


def test_json_float():
    assert json_float(1.5) == 1.5 and json_float(None) is None
    assert json_float(math.inf) is None and json_float(math.nan) is None


def test_the_train_report_gathers_the_runs_numbers():
    params = params_module.load([ROOT / "params.yaml", ROOT / "params" / "demo.yaml"])
    setup = Setup(device="cpu", world=1, micro_batch_size=4, grad_accum_steps=4, precision="fp32",
                  activation_checkpointing=False, compile=False, device_name="cpu", peak_flops=1e11,
                  calibration_key="cpu|key", settings_from="reports/plan.json")
    measured = {"tokens_per_second": 1000.0, "this_run_hours": 0.1, "seconds": {"steps": 300.0},
                "mfu": 0.2, "mfu_device": "cpu", "flops_per_token": 2e7, "peak_memory_bytes": 2**30,
                "peak_memory_kind": "process_peak_rss"}
    progress = three_steps()
    progress.record_val(3.5)
    progress.judge_val(3.5, improved=True)
    report = train_report("max_steps", progress, setup, measured, params=params, precision="fp32",
                          parameters=1234, epochs=0.5, wall_hours=0.3, resumed_from="step-000002",
                          checkpoints=None, quarantined=[], estimate=None, budget_guard=None,
                          final_weights="step-000003")
    assert isinstance(report, TrainReport)
    got = report.as_dict()
    assert (got["steps"], got["tokens"], got["stop_reason"], got["final_weights"]) == (3, 3 * 4096, "max_steps",
                                                                                       "step-000003")
    assert got["loss"] == {"first": 5.0, "last": 4.0, "min": 4.0, "best_val": 3.5,
                           "val": [{"step": 3, "loss": 3.5, "perplexity": math.exp(3.5)}]}
    assert (got["nonfinite_steps_skipped"], got["micro_batch_size"], got["world"]) == (1, 4, 1)
    assert got["kwh"] is None and got["kwh_source"] is None and got["mfu"] == 0.2
    assert "peak_flops" not in got and got["params"]["train"]["tokens_per_step"] == 4096
