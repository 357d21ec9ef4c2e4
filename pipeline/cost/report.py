"""reports/cost.json: the estimate stage's record, read by train (the budget it holds) and
evaluate (the estimate it holds the run against)."""
from __future__ import annotations

from typing import Any

from pipeline.core.record import Record

class CostReport(Record):
    """reports/cost.json: the estimate, read by the evaluate stage to hold it against the run."""

    FORMAT = 2
    WRITTEN_BY = "estimate"

    device: str
    device_description: str
    num_devices: int
    pricing: str
    fits: bool
    within_budget: bool
    override: bool                # over budget, and allowed by cost.override_budget
    override_budget: bool         # cost.override_budget as given: train's budget guard obeys it too
    over_budget: list[str]
    budget: dict[str, float | None]
    budget_tolerance: float       # cost.budget_tolerance: how far over a budget train's guard lets a projection go
    tokens: int
    steps: int
    tokens_per_step: int
    train_tokens_available: int
    epochs: float | None
    parameters: int
    flops_per_token: float
    flops: float                  # model training FLOPs: what MFU counts
    executed_flops: float         # what the device executes: recompute and validation included
    eval_flops: float
    hours: float                  # the whole run: steps and validations
    step_hours: float             # optimizer steps alone, what tokens_per_second counts
    tokens_per_second: float
    usd: float
    usd_per_hour: float | None
    usd_basis: str
    kwh: float
    co2_kg: float
    peak_flops: float
    recompute_factor: float
    mfu: float
    mfu_source: str
    peak_memory_bytes: int
    memory_usable_bytes: int
    memory: dict[str, int]
    plan: dict[str, Any]
    sources: dict[str, str]
    detected: dict[str, Any] | None   # what was measured of this machine (the cpu entry)
    # on-demand, spot and spot with its expected reclaims side by side, the reclaim figures the
    # budget guard projects with under spot pricing, and the recommended train.checkpoint_every
    # (pipeline/cost/spot.py); None where the device has no spot price
    spot: dict[str, Any] | None = None
    # cost.forecast: the fitted law, the forecast val loss with its interval, the alternatives, the
    # pilots and their cost (pipeline/cost/forecast.py); None without it
    forecast: dict[str, Any] | None = None
    provenance: dict[str, Any]
