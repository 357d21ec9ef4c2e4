"""What spot really costs: the reclaim arithmetic against hand computations from its formulas, the
default experiment's on-demand / spot / spot-with-reclaims prices in cost.json and cost.md, the gate
and the budget guard (after a recovery) under spot pricing, and the catalog's reclaim sources."""
from __future__ import annotations

import json
import math

import pytest

from pipeline.core.errors import BudgetExceeded, PipelineError
from pipeline.cost import calibration, hardware, reclaim
from pipeline.cost.budget import BudgetGuard
from pipeline.cost.planner import plan_for
from pipeline.cost.report import CostReport
from test_estimate import load, run, tokens, write_tokens  # noqa: F401  (tokens: the 100M-token fixture)

import recordkit

T4_RATE = -math.log(1 - 0.20) / 730   # the catalog's T4: 20% of instances a month, as an hourly Poisson rate


def test_reclaim_arithmetic_matches_the_formulas_by_hand():
    assert reclaim.reclaims_per_hour(0.20) == pytest.approx(0.000305676, rel=1e-5)
    # Young 1974 / Daly 2006: tau = sqrt(2 C M); C = 30 s, M = 100 h: sqrt(2 x 30 x 360000) s = 4647.58 s
    assert reclaim.young_daly_hours(30 / 3600, 100) * 3600 == pytest.approx(4647.58, abs=0.01)
    # 10 h at 0.01/h: 0.1 reclaims, each losing half of a 2 h interval plus 0.25 h of restart
    assert reclaim.expected_reclaims(10, 0.01) == pytest.approx(0.1)
    assert reclaim.hours_lost_per_reclaim(2.0, 0.25) == pytest.approx(1.25)
    assert reclaim.reclaim_hours(10, 0.01, 2.0, 0.25) == pytest.approx(0.125)
    # what survives a reclaim: the bucket's checkpoints, or without a bucket only the start
    assert reclaim.surviving_interval_hours(10, 2.0, remote=True) == 2.0
    assert reclaim.surviving_interval_hours(10, 2.0, remote=False) == 10
    assert reclaim.surviving_interval_hours(1, 2.0, remote=True) == 1
    with pytest.raises(ValueError):
        reclaim.reclaims_per_hour(1.0)


def test_the_default_experiment_shows_on_demand_spot_and_spot_with_reclaims(tokens, tmp_path):
    report = run(tokens, tmp_path)
    spot, hours = report["spot"], report["hours"]
    assert report["pricing"] == "on_demand" and report["usd"] == pytest.approx(hours * 0.526)  # kept as it was
    assert spot["usd_on_demand"] == pytest.approx(hours * 0.526) and spot["usd_spot"] == pytest.approx(hours * 0.21)
    # no bucket by default: a reclaim loses the whole run so far (half of it on average) and 8 min
    lost = hours / 2 + 8 / 60
    assert spot["checkpoints_remote"] is False and spot["hours_lost_per_reclaim"] == pytest.approx(lost)
    assert spot["expected_reclaims"] == pytest.approx(hours * T4_RATE)
    assert spot["usd_spot_with_reclaims"] == pytest.approx(0.21 * (hours + hours * T4_RATE * lost))
    assert spot["usd_spot"] < spot["usd_spot_with_reclaims"] < spot["usd_on_demand"]
    # Young/Daly from the checkpoint's bytes at the catalog's 125 MB/s disk, in steps of the predicted time
    c_seconds = spot["checkpoint_bytes"] / 125e6
    assert spot["checkpoint_seconds"] == pytest.approx(c_seconds) and "predicted" in spot["checkpoint_seconds_source"]
    tau = math.sqrt(2 * c_seconds / 3600 / T4_RATE)
    assert spot["checkpoint_every_recommended"] == round(tau / (hours / report["steps"]))
    md = (tmp_path / "cost.md").read_text()
    assert "## On-demand, spot, and spot with its reclaims" in md
    for row in ("| on-demand |", "| spot, never reclaimed |", "| **spot with its expected reclaims** |"):
        assert row in md
    assert "Recommended train.checkpoint_every" in md and "Spot Instance Advisor" in md
    assert "no paths.checkpoints_remote" in md


def test_with_a_bucket_a_reclaim_loses_half_a_checkpoint_interval_and_a_checkpoint_costs_its_upload(
        tokens, tmp_path):
    report = run(tokens, tmp_path, "paths.checkpoints_remote=s3://bucket/checkpoints")
    spot, hours, steps = report["spot"], report["hours"], report["steps"]
    size = spot["checkpoint_bytes"]
    assert spot["checkpoints_remote"] is True
    assert spot["checkpoint_seconds"] == pytest.approx(size / 125e6 + size / 100e6)   # write, then upload
    assert spot["restart_hours"] == pytest.approx(8 / 60 + size / 100e6 / 3600)          # and download
    interval = 500 * hours / steps                                                      # train.checkpoint_every 500
    assert spot["checkpoint_interval_hours"] == pytest.approx(interval)
    assert spot["hours_lost_per_reclaim"] == pytest.approx(interval / 2 + spot["restart_hours"])
    tau = math.sqrt(2 * spot["checkpoint_seconds"] / 3600 / T4_RATE)
    assert spot["young_daly_hours"] == pytest.approx(tau)
    assert "bucket_mb_per_s" in spot["checkpoint_seconds_source"]
    assert "no paths.checkpoints_remote" not in (tmp_path / "cost.md").read_text()


def test_spot_pricing_gates_the_price_with_its_reclaims(tokens, tmp_path):
    often = "cost.extra_hardware={t4-16gb: {spot_reclaims_per_month: 0.99}}"   # one reclaim every ~160 h
    free = run(tokens, tmp_path, "cost.pricing=spot", often, "cost.override_budget=true")["spot"]
    between = (free["usd_spot"] + free["usd_spot_with_reclaims"]) / 2      # above spot, below spot with reclaims
    with pytest.raises(BudgetExceeded, match=r"over budget on t4-16gb .* cost.budget_usd"):
        run(tokens, tmp_path, "cost.pricing=spot", often, f"cost.budget_usd={between}")
    assert "the budget gate holds this one" in (tmp_path / "cost.md").read_text()


def test_a_measured_checkpoint_time_replaces_the_prediction(tokens, tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGETGPT_CACHE_DIR", str(tmp_path / "cache"))   # this test's measurements only
    params = load(tokens, tmp_path)
    fit = plan_for(params, hardware.get_device(params.cost), 32000)
    calibration.remember(fit.plan.calibration_key, run="an-earlier-run", mfu=0.2, wall_over_steps=1.1,
                         tokens_per_second=1000.0, step_seconds=100.0, checkpoint_seconds=42.0)
    spot = run(tokens, tmp_path)["spot"]
    assert spot["checkpoint_seconds"] == 42.0 and spot["checkpoint_seconds_source"].startswith("measured")


def test_the_guard_after_a_recovery_under_spot_adds_the_rest_of_the_runs_reclaims(tmp_path):
    spot = {"reclaims_per_hour": 0.01, "restart_hours": 0.25, "checkpoint_every": 100, "checkpoints_remote": True}
    recordkit.cost(tmp_path / "spot.json", pricing="spot", hours=2.0, step_hours=1.6, usd=4.0, kwh=1.0, tokens=1000,
                   tokens_per_step=10, budget={"usd": 10.0, "hours": None, "kwh": None}, spot=spot)
    recordkit.cost(tmp_path / "on_demand.json", pricing="on_demand", hours=2.0, step_hours=1.6, usd=4.0, kwh=1.0,
                   tokens=1000, tokens_per_step=10, budget={"usd": 10.0, "hours": None, "kwh": None}, spot=spot)
    guarded = BudgetGuard(CostReport.read(tmp_path / "spot.json"), tokens_planned=1000)
    # resumed after a reclaim: 3 h spent; 500 tokens to go at 0.1 token/s, x 2.0/1.6 for validation
    to_come = 5000 / 3600 * 2.0 / 1.6
    # a checkpoint every 100 steps x 10 tokens at the wall rate of 0.1 x 1.6/2.0 token/s
    interval = 100 * 10 / (0.1 * 1.6 / 2.0) / 3600
    p = guarded.project(step=50, tokens_done=500, step_rate=0.1, spent_hours=3.0)
    assert p.projected["hours"] == pytest.approx(3.0 + to_come + to_come * 0.01 * (interval / 2 + 0.25))
    assert p.projected["usd"] == pytest.approx(p.projected["hours"] * 2.0)
    assert p.reclaim_hours == pytest.approx(to_come * 0.01 * (interval / 2 + 0.25)) and p.as_dict()["reclaim_hours"]
    on_demand = BudgetGuard(CostReport.read(tmp_path / "on_demand.json"), tokens_planned=1000)
    assert on_demand.project(step=50, tokens_done=500, step_rate=0.1, spent_hours=3.0).projected["hours"] == \
        pytest.approx(3.0 + to_come)


def test_every_spot_price_in_the_catalog_has_its_reclaims_and_their_sources():
    priced = {name: d for name, d in hardware.gpus().items() if d.usd_per_hour_spot is not None}
    assert "t4-16gb" in priced
    for name, device in priced.items():
        assert 0 < device.spot_reclaims_per_month < 1 and device.spot_restart_minutes > 0, name
        assert "Spot" in device.sources["spot_reclaims_per_month"] and device.sources["spot_restart_minutes"], name
    assert set(hardware.storage().sources) == {"disk_write_mb_per_s", "bucket_mb_per_s"}
    with pytest.raises(PipelineError, match=r"extra_hardware.my-gpu: a spot price needs spot_reclaims_per_month"):
        entry = {k: v for k, v in hardware._entries(None)["t4-16gb"].items() if k != "spot_reclaims_per_month"}
        hardware.catalog({"my-gpu": entry})
