"""The loss forecast (cost.forecast): the law's fit, the pilots on the demo's real tokens through the
estimate stage (recalled, not rerun, the second time), their cost in the budget, bad input, and the
forecast held against a run in evaluate's words."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.core import params as params_module
from pipeline.core.errors import BudgetExceeded, PipelineError
from pipeline.cost import forecast, forecast_record, forecast_render, hardware, scaling
from pipeline.data.tokens import TokenManifest
from pipeline.registry import run_stage
from pipeline.reports import forecast_check

ROOT = Path(__file__).resolve().parent.parent
DEMO_PARAMS = [ROOT / "params.yaml", ROOT / "params" / "demo.yaml"]

# a model small enough that the 9 pilots take seconds on one CPU core
SMALL = {"model.n_layer": 2, "model.n_embd": 96, "model.n_head": 6, "model.context": 64,
         "train.tokens_per_step": 512, "train.max_steps": 120, "train.warmup_steps": 6, "train.eval_every": 40,
         "train.eval_batches": 2, "cost.forecast": True,
         # a fixed speed, so the run's hours are the same in every call (the detected peak varies with load)
         "cost.mfu": 0.5, "cost.extra_hardware": "{cpu: {peak_tflops: {fp32: 0.01, fp16: 0.01, bf16: 0.01}}}"}


def small(demo_tokens, tmp_path, **sets):
    """The demo's params at SMALL and `sets`, loaded as --set would (so an lr given is no auto lr)."""
    paths = demo_tokens.params.paths
    given = {**SMALL, **sets, "paths.tokens": paths.tokens, "paths.tokenizer": paths.tokenizer,
             "paths.reports": tmp_path / "reports"}
    return params_module.load(DEMO_PARAMS, [f"{k}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}"
                                            for k, v in given.items()])


def law_loss(n, d):
    return 1.8 + 0.9 * (n / 1e5) ** -0.35 + 1.5 * (d / 1e6) ** -0.3


def test_the_fit_recovers_a_known_law_and_its_interval_holds_it():
    n = [n for n in (3e4, 6e4, 1.2e5) for _ in range(3)]
    d = [d for _ in range(3) for d in (2e5, 4e5, 8e5)]
    noise = np.random.default_rng(1).normal(0, 0.003, len(n))
    law = scaling.fit(n, d, [1e12] * len(n), list(np.array([law_loss(a, b) for a, b in zip(n, d)]) + noise))
    truth = law_loss(2.4e5, 8e6)          # 2x the largest N, 10x the largest D
    assert law.loss(2.4e5, 8e6, 1e12) == pytest.approx(truth, rel=0.03)
    low, high = law.interval(2.4e5, 8e6, 1e12)
    assert low <= truth <= high


def test_repeated_tokens_are_worth_less_than_new_ones():
    assert scaling.effective_tokens(5e5, 1e6) == pytest.approx(5e5)       # within one epoch: D itself
    four_epochs = float(scaling.effective_tokens(4e6, 1e6))
    assert 3.5e6 < four_epochs < 4e6                                        # ~4 epochs almost as good as new
    assert float(scaling.effective_tokens(1e8, 1e6)) < 1e6 * (1 + scaling.REPETITION_DECAY)   # bounded


def test_the_unigram_loss_is_the_validation_loss_of_the_train_frequencies(tmp_path):
    from pipeline.cost.pilots import unigram_loss
    from pipeline.data.tokens import TRAIN_FILE, VAL_FILE, write_tokens

    write_tokens(tmp_path / TRAIN_FILE, np.array([0, 0, 0, 1, 1, 1], dtype=np.uint16))
    write_tokens(tmp_path / VAL_FILE, np.array([0, 2], dtype=np.uint16))
    # counts + 0.5 over a vocabulary of 3: 3.5, 3.5, 0.5 of 7.5
    assert unigram_loss(tmp_path, 3) == pytest.approx(-(math.log(3.5 / 7.5) + math.log(0.5 / 7.5)) / 2)


def test_the_estimate_forecasts_names_the_best_plan_and_never_reruns_its_pilots(demo_tokens, tmp_path, capsys):
    params = small(demo_tokens, tmp_path)
    run_stage("estimate", params)
    cost = json.loads((tmp_path / "reports" / "cost.json").read_text())
    fc = cost["forecast"]
    assert fc["pilots"]["ran_now"] and len(fc["pilots"]["grid"]) == 9
    assert all(p["val_loss"] < math.log(demo_tokens.manifest["vocab_size"]) for p in fc["pilots"]["grid"])
    final = fc["final"]
    assert final["low"] <= final["loss"] <= final["high"] and final["tokens"] == 120 * 512
    assert not final["beyond_law"] and "Optimistic" not in (tmp_path / "reports" / "cost.md").read_text()
    assert [v["step"] for v in fc["validations"]] == [40, 80, 120]
    assert sum(a["best"] for a in fc["alternatives"]) == 1 and fc["best"]["within_budget"]
    assert fc["pilots"]["hours"] > 0 and fc["pilots"]["usd"] > 0
    md = (tmp_path / "reports" / "cost.md").read_text()
    assert "## Validation loss forecast" in md and "Best plan for the budget" in md and "90% interval" in md
    assert f"train.target_val_loss: {fc['target_val_loss']}" in md
    assert 0 < fc["unigram_loss"] < math.log(demo_tokens.manifest["vocab_size"])
    assert ("**Early pilots**" in md) == (min(p["val_loss"] for p in fc["pilots"]["grid"]) > fc["unigram_loss"])
    assert "pilot 9/9" in capsys.readouterr().out

    run_stage("estimate", small(demo_tokens, tmp_path, **{"cost.budget_usd": 2.0}))   # a budget edit
    again = json.loads((tmp_path / "reports" / "cost.json").read_text())["forecast"]
    assert not again["pilots"]["ran_now"] and "pilot 1/9" not in capsys.readouterr().out
    assert again["final"] == fc["final"] and again["pilots"]["hours"] == fc["pilots"]["hours"]  # still counted

    # a budget the run alone keeps and the run with its pilots breaks
    between = cost["hours"] + fc["pilots"]["hours"] / 2
    with pytest.raises(BudgetExceeded, match="budget_hours"):
        run_stage("estimate", small(demo_tokens, tmp_path, **{"cost.budget_hours": between, "cost.budget_usd": None}))
    assert not (tmp_path / "reports" / "cost.json").exists()


def test_past_the_epochs_the_law_covers_the_estimate_gives_a_floor_and_evaluate_holds_the_run_to_it(
        demo_tokens, tmp_path, capsys):
    """A run that repeats its tokens past forecast.EPOCHS_TRUSTED: no forecast, no target loss, the
    law's lower bound named a floor in cost.md, the terminal, the alternatives and evaluate's words."""
    params = small(demo_tokens, tmp_path)
    run_stage("estimate", params)   # the pilots (recalled when an earlier test ran them) and their law
    fc = json.loads((tmp_path / "reports" / "cost.json").read_text())["forecast"]
    manifest = TokenManifest.read(Path(params.paths.tokens) / "manifest.json")
    few = manifest.model_copy(update={"train_tokens": 120 * 512 // 6})   # the run: 6 epochs of these
    n = [n for n in (3e4, 6e4, 1.2e5) for _ in range(3)]
    d = [d for _ in range(3) for d in (2e3, 4e3, 8e3)]
    law = scaling.fit(n, d, [1e12] * len(n), [law_loss(a, b * 100) for a, b in zip(n, d)])
    beyond = {**fc, **forecast._forecasts(params, few, hardware.get_device(params.cost), law, 0.5, False,
                                          dict.fromkeys(forecast.FIGURES, 0.0))}
    final = beyond["final"]
    assert final["beyond_law"] and final["epochs"] == pytest.approx(6, rel=0.01)
    assert beyond["target_val_loss"] is None
    assert [v["beyond_law"] for v in beyond["validations"]] == [False, False, True]   # 2, 4 and 6 epochs
    assert not any(a["beyond_law"] for a in beyond["alternatives"] if a["best"])
    md = "\n".join(forecast_render.markdown(beyond))
    assert f"**No forecast, a floor: at least {final['low']:.3f}**" in md and "train.target_val_loss" not in md
    assert f"| 120 | 61,440 | at least {final['low']:.3f} | none: a floor |" in md
    assert forecast_render.terminal(beyond).startswith(f"val loss at least {final['low']:.3f}")

    vals = [{"step": 40, "loss": 9.0}, {"step": 80, "loss": final["low"] + 0.5}, {"step": 120, "loss": final["low"] - 0.1}]
    check = forecast_check.compare({"estimate": {"forecast": beyond}, "stop_reason": "max_steps", "loss": {"val": vals}})
    assert [r["floor_held"] for r in check["validations"]] == [None, None, False]
    assert check["final"]["error_pct"] is None and not check["inside_interval"]
    assert f"actual {final['low'] - 0.1:.3f} against a floor of {final['low']:.3f} (below it)" in \
        "\n".join(forecast_check.markdown(check))
    vals[-1]["loss"] = final["low"] + 0.2
    check = forecast_check.compare({"estimate": {"forecast": beyond}, "stop_reason": "max_steps", "loss": {"val": vals}})
    assert check["final"]["floor_held"] and "| floor held |" in "\n".join(forecast_check.markdown(check))


def test_pilots_that_alone_break_the_budget_never_run(demo_tokens, tmp_path, capsys):
    params = small(demo_tokens, tmp_path, **{"cost.budget_hours": 1e-9, "cost.budget_usd": None})
    with pytest.raises(BudgetExceeded, match="the pilots alone would cost .*cost.forecast: false"):
        run_stage("estimate", params)
    assert "pilot 1/9" not in capsys.readouterr().out


def test_too_few_tokens_for_the_grid_is_one_line_exit_2(demo_tokens, tmp_path):
    params = small(demo_tokens, tmp_path, **{"train.max_steps": 200_000, "cost.forecast_share": 1.0,
                                             "cost.override_budget": True})
    with pytest.raises(PipelineError, match="unique train tokens .* cost.forecast: false") as caught:
        run_stage("estimate", params)
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)
    assert not (tmp_path / "reports" / "cost.json").exists()


def test_a_recipe_that_does_not_train_is_one_line_exit_2(demo_tokens, tmp_path):
    params = small(demo_tokens, tmp_path, **{"train.lr": 200.0, "train.min_lr": 20.0, "train.optimizer": "adamw"})
    with pytest.raises(PipelineError, match="the pilot losses do not fall") as caught:
        run_stage("estimate", params)
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)


def test_evaluate_words_hold_the_forecast_against_the_run_and_remember_it(tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGETGPT_CACHE_DIR", str(tmp_path))
    rows = [{"step": s, "tokens": s * 512, "loss": 3.0 - s / 100, "low": 2.8 - s / 100, "high": 3.2 - s / 100}
            for s in (40, 80, 120)]
    fc = {"validations": rows, "law": {}, "law_key": "corpus", "run": "r1", "parameters_non_embedding": 1000,
          "unique_tokens": 50_000}
    train = {"estimate": {"forecast": fc}, "stop_reason": "max_steps", "steps": 120, "tokens": 61_440,
             "loss": {"val": [{"step": 40, "loss": 2.9}, {"step": 80, "loss": 2.3}, {"step": 120, "loss": 1.9}]}}
    check = forecast_check.compare(train)
    assert check["final"]["error_pct"] == pytest.approx(100 * (1.9 - 1.8) / 1.8)
    assert check["inside_interval"]
    text = "\n".join(forecast_check.markdown(check))
    assert "| 120 | 61,440 | 1.800 | 1.600 to 2.000 | 1.900 | +5.6% |" in text
    assert forecast_check.remember(train)
    assert forecast_record.recorded_runs("corpus") == {"r1": {"parameters": 1000, "tokens": 61_440, "unique_tokens": 50_000,
                                                       "val_loss": 1.9}}
    assert not forecast_check.remember({**train, "stop_reason": "early_stopping"})   # LR still high: no law point
    assert forecast_check.compare({"estimate": {}}) is None


def test_a_finished_run_of_the_corpus_joins_the_fit_but_never_its_own(demo_tokens, tmp_path, monkeypatch):
    from pipeline.cost import forecast
    from pipeline.data.tokens import TokenManifest
    from pipeline.engine.identity import run_id

    monkeypatch.setenv("BUDGETGPT_CACHE_DIR", str(tmp_path))
    params = small(demo_tokens, tmp_path)
    manifest = TokenManifest.read(params.paths.tokens / "manifest.json")
    pilots = [{"parameters": n, "tokens": d, "val_loss": law_loss(n, d)} for n in (3e4, 6e4, 1.2e5)
              for d in (2e5, 4e5, 8e5)]
    key = forecast_record.law_key(params, manifest)
    forecast_record.remember_run(key, run_id(params, manifest), parameters=240_000, tokens=8_000_000,
                                 unique_tokens=10**12, val_loss=9.9)
    assert forecast._fit(params, manifest, pilots)[1]["recorded_runs"] == 0      # its own record: left out
    truth = law_loss(2.4e5, 8e6)
    forecast_record.remember_run(key, "another-seed", parameters=240_000, tokens=8_000_000, unique_tokens=10**12,
                                 val_loss=truth + 0.3)
    law, points = forecast._fit(params, manifest, pilots)
    assert points["recorded_runs"] == 1 and points["runs_weight"] == 9
    # weighing as much as the 9 pilots, the measured run pulls the forecast at its size toward it
    assert law.loss(2.4e5, 8e6, 10**12) > truth + 0.1
