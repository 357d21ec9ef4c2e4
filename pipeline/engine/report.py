"""reports/train.json: what the run did, read by the evaluate stage."""
from __future__ import annotations

from typing import Any

from pipeline.core.record import Record

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
