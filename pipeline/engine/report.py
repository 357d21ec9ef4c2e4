"""reports/train.json: what the run did, read by the evaluate stage; `train_report` assembles it."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pipeline.core.params import Params
from pipeline.core.provenance import record
from pipeline.core.record import Record
from pipeline.engine.plan import Setup
from pipeline.engine.progress import Progress


class TrainReport(Record):
    """reports/train.json: what the run did, read by the evaluate stage."""

    FORMAT = 1
    WRITTEN_BY = "train"

    steps: int
    tokens: int
    epochs: float
    stop_reason: str
    stop_message: str | None = None
    resumed_from: str | None
    final_weights: str | None          # the checkpoint models/final holds: the best one after early stopping
    wall_hours: float
    tokens_per_second: float | None
    this_run_hours: float
    seconds: dict[str, float]
    mfu: float | None
    mfu_device: str | None
    flops_per_token: float | None
    peak_memory_bytes: int
    peak_memory_kind: str
    kwh: float | None
    kwh_source: str | None
    precision: str
    device: str
    parameters: int
    world: int
    micro_batch_size: int
    grad_accum_steps: int
    activation_checkpointing: bool
    compile: bool
    settings_from: str
    loss: dict[str, Any]
    nonfinite_steps_skipped: int
    overflow_steps_skipped: int
    quarantined_checkpoints: list[str] = []
    # the cost report (reports/cost.json) this run was gated with, as train read it when it
    # started: evaluate holds the run against it, never against a later estimate
    estimate: dict[str, Any] | None = None
    budget_guard: dict[str, Any] | None = None   # the last projection of the run's totals (pipeline/cost/budget.py)
    checkpoints: dict[str, Any] | None
    params: dict[str, Any]
    versions: dict[str, str]
    git_revision: str | None


def train_report(reason: str, progress: Progress, setup: Setup, measured: dict[str, Any], *, params: Params,
                 precision: str, parameters: int, epochs: float, wall_hours: float, resumed_from: str | None,
                 checkpoints: dict[str, Any] | None, quarantined: list[str], estimate: dict[str, Any] | None,
                 budget_guard: dict[str, Any] | None, stop_message: str | None = None,
                 final_weights: str | None = None, kwh: float | None = None) -> TrainReport:
    """The report of a run that stopped for `reason`: its progress, the plan it ran (`setup`), what
    its meter measured (pipeline/engine/meter.py: Meter.summary), its checkpoints and budget."""
    planned_elsewhere = ("device", "precision", "device_name", "peak_flops", "calibration_key")
    return TrainReport.make(
        steps=progress.step, tokens=progress.step * params.train.tokens_per_step, epochs=epochs,
        stop_reason=reason, stop_message=stop_message, resumed_from=resumed_from, final_weights=final_weights,
        wall_hours=wall_hours, **measured, kwh=kwh, kwh_source="nvml_total_energy" if kwh is not None else None,
        precision=precision, device=setup.device, parameters=parameters,
        **{k: v for k, v in asdict(setup).items() if k not in planned_elsewhere},
        loss=progress.loss_summary(), **progress.counts, quarantined_checkpoints=quarantined,
        estimate=estimate, budget_guard=budget_guard, checkpoints=checkpoints,
        **record({"model": params.section("model"), "train": params.section("train")}),
    )
