"""The budget held while train runs: a run whose measured rate heads over budget stops with exit
3, a checkpoint and the projection; with the budget raised it resumes and finishes."""
from __future__ import annotations

import json
import sys

import pytest

from pipeline.cost.report import CostReport
from pipeline.cost.budget import GUARD_FIRST_STEPS, BudgetGuard, gate_refusal, tokens_to_train
from trainkit import DEMO_FILES, report, run_cli, tiny_sets

import recordkit


def stage(name: str, demo_tokens, base, *overrides: str):
    args = [sys.executable, "-m", "pipeline", name]
    for f in DEMO_FILES:
        args += ["--params", str(f)]
    for item in tiny_sets(demo_tokens, base, *overrides):
        args += ["--set", item]
    return run_cli(args)


# the estimate believes this CPU multiplies at 1 PFLOP/s: its gate passes on any machine, and the
# real rate (however fast this machine) projects far more
OPTIMISTIC = ("cost.mfu=0.99", "cost.extra_hardware={cpu: {peak_tflops: {fp32: 1000, fp16: 1000, bf16: 1000}}}")


def test_a_run_heading_over_budget_stops_then_resumes_when_the_budget_is_raised(demo_tokens, tmp_path):
    # $1 per second of training and an optimistic estimate: the gate passes a $1 budget, the real
    # rate projects far more; dollars, not hours, so no clock decides first
    run = ("train.max_steps=300", "train.eval_every=150", "train.checkpoint_every=150", *OPTIMISTIC,
           "cost.pricing=on_demand", "cost.usd_per_hour=3600", "cost.budget_hours=null", "cost.budget_kwh=null")
    assert stage("estimate", demo_tokens, tmp_path, *run, "cost.budget_usd=1").returncode == 0
    stopped = stage("train", demo_tokens, tmp_path, *run, "cost.budget_usd=1")
    assert stopped.returncode == 3, stopped.stderr
    message = stopped.stderr.strip().splitlines()[-1]
    assert "heads over budget" in message and "projected > cost.budget_usd $1" in message
    assert "train.max_tokens:" in message and "cost.override_budget" in message and "Saved " in message
    first = report(tmp_path)
    assert first["stop_reason"] == "over_budget" and first["steps"] == first["budget_guard"]["step"]
    assert first["steps"] <= GUARD_FIRST_STEPS + 1  # the first projection decides
    assert first["budget_guard"]["projected"]["usd"] > 1.1 and first["budget_guard"]["over"] == ["usd"]
    assert (tmp_path / "checkpoints" / f"step-{first['steps']:06d}").is_dir()
    assert not (tmp_path / "model").exists()

    assert stage("estimate", demo_tokens, tmp_path, *run, "cost.budget_usd=1000000").returncode == 0
    done = stage("train", demo_tokens, tmp_path, *run, "cost.budget_usd=1000000")
    assert done.returncode == 0, done.stderr
    final = report(tmp_path)
    assert final["resumed_from"] == f"step-{first['steps']:06d}" and final["steps"] == 300
    assert final["wall_hours"] > first["wall_hours"]  # what was spent before the stop counts
    assert final["budget_guard"]["spent_hours"] >= first["wall_hours"]


def test_budget_hours_stop_the_run_however_the_rate_goes(demo_tokens, tmp_path):
    run = ("train.max_steps=2000", "train.eval_every=1000", "train.checkpoint_every=1000", *OPTIMISTIC,
           "cost.pricing=owned", "cost.budget_hours=0.002")
    assert stage("estimate", demo_tokens, tmp_path, *run).returncode == 0
    stopped = stage("train", demo_tokens, tmp_path, *run)
    assert stopped.returncode == 3, stopped.stderr
    assert "cost.budget_hours" in stopped.stderr.strip().splitlines()[-1]
    assert report(tmp_path)["stop_reason"] == "over_budget" and report(tmp_path)["steps"] < 2000


def test_override_budget_lets_the_run_go(demo_tokens, tmp_path):
    run = ("train.max_steps=12", *OPTIMISTIC, "cost.pricing=owned", "cost.budget_hours=0.00001",
           "cost.override_budget=true")
    assert stage("estimate", demo_tokens, tmp_path, *run).returncode == 0
    done = stage("train", demo_tokens, tmp_path, *run)
    assert done.returncode == 0, done.stderr
    assert report(tmp_path)["stop_reason"] == "max_steps"


def test_projection_counts_spent_hours_the_tolerance_and_the_estimates_rates(tmp_path):
    cost = recordkit.cost(tmp_path / "cost.json", hours=2.0, step_hours=1.6, usd=4.0, kwh=1.0, tokens=1000,
                          tokens_per_step=10, budget={"usd": 10.0, "hours": None, "kwh": None})
    guard = BudgetGuard(CostReport.read(tmp_path / "cost.json"), tokens_planned=1000)
    assert guard.active and not guard.due(GUARD_FIRST_STEPS - 1, 1.0) and guard.due(GUARD_FIRST_STEPS, 1.0)
    # 500 tokens to go at 0.1 token/s: 5000 s of steps, x 2.0/1.6 for validation = 1.736 h, plus 3 h spent
    p = guard.project(step=50, tokens_done=500, step_rate=0.1, spent_hours=3.0)
    assert abs(p.projected["hours"] - (3.0 + 5000 / 3600 * 2.0 / 1.6)) < 1e-9
    assert abs(p.projected["usd"] - p.projected["hours"] * 2.0) < 1e-9  # the estimate's $/h
    assert p.over == [] and p.projected["usd"] < 10.0 * 1.1
    assert guard.project(step=50, tokens_done=500, step_rate=0.05, spent_hours=3.0).over == ["usd"]
    assert cost.tokens == 1000 and json.loads((tmp_path / "cost.json").read_text())["format"] == 2


def test_the_pilots_spend_is_in_every_projection_and_the_wall_clock(tmp_path):
    pilots = {"hours": 0.5, "usd": 1.0, "kwh": 0.25}
    recordkit.cost(tmp_path / "cost.json", hours=2.0, step_hours=2.0, usd=4.0, kwh=1.0, tokens=1000, tokens_per_step=10,
                   budget={"usd": None, "hours": 3.0, "kwh": None}, forecast={"pilots": {**pilots, "ran_now": True}})
    guard = BudgetGuard(CostReport.read(tmp_path / "cost.json"), tokens_planned=1000)
    p = guard.project(step=50, tokens_done=500, step_rate=500 / 3600, spent_hours=1.0)   # 1 h spent, 1 h to come
    assert p.projected == pytest.approx({"hours": 2.5, "usd": 5.0, "kwh": 1.25}) and p.pilots == pilots
    assert not p.wall_clock_over and p.over == []
    late = guard.project(step=90, tokens_done=900, step_rate=500 / 3600, spent_hours=2.5)  # 2.5 h + the pilots' 0.5
    assert late.wall_clock_over
    assert "2.5 h of training and 0.5 h of the forecast's pilots reached cost.budget_hours 3 h" in str(
        guard.refusal(late, "ckpt"))


def test_what_the_forecasts_pilots_spent_counts_while_training(demo_tokens, tmp_path, monkeypatch):
    # the estimate's pilots (cost.forecast) cost $1 a second, the run it believes nearly free; a budget
    # of the pilots' measured $ plus the predicted run and a millisecond passes the gate, and the real
    # run alone would keep it: its 8 steps take seconds, the pilots as recorded an hour (their
    # measured seconds, as long as the run's on a loaded machine, would make that a race)
    monkeypatch.setenv("BUDGETGPT_CACHE_DIR", str(tmp_path / "cache"))
    run = ("model.n_head=8", "cost.forecast=true", "cost.forecast_share=1", "train.max_steps=8", "train.eval_every=8",
           "train.checkpoint_every=8", *OPTIMISTIC, "cost.pricing=on_demand", "cost.usd_per_hour=3600",
           "cost.budget_hours=null", "cost.budget_kwh=null", "cost.budget_tolerance=0")
    assert stage("estimate", demo_tokens, tmp_path, *run, "cost.budget_usd=1000000").returncode == 0
    key = json.loads((tmp_path / "reports" / "cost.json").read_text())["forecast"]["pilots"]["key"]
    kept = json.loads((tmp_path / "cache" / "pilots.json").read_text())
    kept[key]["seconds"] = 3600.0
    (tmp_path / "cache" / "pilots.json").write_text(json.dumps(kept))
    assert stage("estimate", demo_tokens, tmp_path, *run, "cost.budget_usd=1000000").returncode == 0
    estimate = json.loads((tmp_path / "reports" / "cost.json").read_text())
    pilots_usd = estimate["forecast"]["pilots"]["usd"]
    assert pilots_usd == pytest.approx(3600)
    budget = pilots_usd + estimate["usd"] + 0.001
    again = stage("estimate", demo_tokens, tmp_path, *run, f"cost.budget_usd={budget}")
    assert again.returncode == 0, again.stderr
    assert not json.loads((tmp_path / "reports" / "cost.json").read_text())["forecast"]["pilots"]["ran_now"]

    stopped = stage("train", demo_tokens, tmp_path, *run, f"cost.budget_usd={budget}")
    assert stopped.returncode == 3, stopped.stderr
    assert "the forecast's pilots' $" in stopped.stderr.strip().splitlines()[-1]
    guard = report(tmp_path)["budget_guard"]
    assert guard["pilots"]["usd"] == pytest.approx(pilots_usd) and guard["over"] == ["usd"]
    assert budget < guard["projected"]["usd"] and guard["projected"]["usd"] - pilots_usd < budget  # the run alone fits


def test_the_gate_offers_the_tokens_that_fit_what_the_pilots_left(demo_tokens):
    """$15 held against $10: the pilots spent $5 whatever the run does, so half the run's $10 fits
    (not 10/15 of it, as if the pilots shrank with the tokens)."""
    params = demo_tokens.params.model_copy(update={"cost": demo_tokens.params.cost.model_copy(update={"budget_usd": 10.0}),
                                                   "train": demo_tokens.params.train.model_copy(
                                                       update={"max_steps": 1000, "max_tokens": None})})
    planned = tokens_to_train(params)
    figures = {"usd": 15.0, "hours": 1.0, "kwh": 0.1, "usd_basis": "on demand"}
    message = gate_refusal(params, figures, ["usd"], device="cpu", alternatives=[], spot_usd=None, cost_md="cost.md",
                           pilots={"usd": 5.0, "hours": 0.5, "kwh": 0.05})
    half = planned // 2 // params.train.tokens_per_step * params.train.tokens_per_step
    assert f"train.max_tokens: {half} fits" in message
