"""pipeline.engine.stopping: the stop rules in their order, and the divergence rules with the
messages the train stage stops with."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from pipeline.core import params as params_module
from pipeline.engine import stopping
from pipeline.engine.stopping import DivergenceWatch, improves, stop_reason

ROOT = Path(__file__).resolve().parent.parent


def train(**changes):
    cfg = params_module.load([ROOT / "params.yaml"]).train
    return cfg.model_copy(update={"max_steps": 100, "max_tokens": None, "max_hours": None, "target_val_loss": None,
                                  "target_perplexity": None, "patience": 3, "tokens_per_step": 10,
                                  "max_nonfinite_steps": 3, "loss_spike_factor": 3.0, **changes})


def reason(cfg, step=5, last_val=None, bad_evals=0, time_up=False, over_budget=False):
    return stop_reason(cfg, step=step, last_val=last_val, bad_evals=bad_evals, time_up=time_up,
                       over_budget=over_budget)


def test_a_run_with_nothing_reached_goes_on():
    assert reason(train(), last_val=4.0, bad_evals=2) is None


@pytest.mark.parametrize("cfg, kwargs, expected", [
    (train(), {"step": 100}, "max_steps"),
    (train(max_tokens=50), {"step": 5}, "max_tokens"),
    (train(target_val_loss=2.0), {"last_val": 2.0}, "target_val_loss"),
    (train(target_perplexity=math.exp(2.5)), {"last_val": 2.5}, "target_perplexity"),
    (train(), {"bad_evals": 3}, "early_stopping"),
    (train(), {"time_up": True}, "max_hours"),
    (train(), {"over_budget": True}, "over_budget"),
])
def test_each_rule_stops_the_run(cfg, kwargs, expected):
    assert reason(cfg, **kwargs) == expected


def test_the_rules_are_asked_in_order():
    everything = {"step": 100, "last_val": 1.0, "bad_evals": 9, "time_up": True, "over_budget": True}
    assert reason(train(max_tokens=10, target_val_loss=2.0), **everything) == "max_steps"
    assert reason(train(), **{**everything, "step": 5}) == "early_stopping"
    assert reason(train(), time_up=True, over_budget=True) == "max_hours"


def test_no_validation_reaches_no_target():
    assert reason(train(target_val_loss=2.0, target_perplexity=10.0), last_val=None) is None


def test_an_improvement_must_beat_the_best_by_more_than_min_delta():
    assert improves(3.0, math.inf, 0.01)
    assert improves(2.98, 3.0, 0.01) and not improves(2.995, 3.0, 0.01) and not improves(3.1, 3.0, 0.0)


def entries(*losses):
    return [{"loss": x} for x in losses]


def test_non_finite_losses_diverge_only_in_a_row():
    watch = DivergenceWatch(train(), vocab=100)
    assert watch.train_loss(math.nan, 1, []) is None and watch.train_loss(math.inf, 2, []) is None
    assert watch.train_loss(2.0, 3, []) is None  # a finite loss resets the streak
    assert watch.train_loss(math.nan, 4, []) is None and watch.train_loss(math.nan, 5, []) is None
    problem = watch.train_loss(math.nan, 6, [])
    assert problem.reason == "nonfinite_loss"
    assert problem.what == "the training loss was non-finite for 3 steps in a row (step 6)"


def test_a_spike_is_judged_against_the_median_of_the_recent_window():
    watch = DivergenceWatch(train(), vocab=50_000)
    assert watch.train_loss(9.0, 5, entries(2.0, 2.0, 2.0, 2.0)) is None  # too little history to judge
    assert watch.train_loss(5.9, 6, entries(2.0, 2.0, 2.0, 2.0, 2.0)) is None
    problem = watch.train_loss(6.1, 6, entries(2.0, None, 2.0, 50.0, 2.0, 2.0))  # one bad step hides nothing
    assert problem.reason == "loss_spike"
    assert problem.what == ("the training loss jumped to 6.100 at step 6, over train.loss_spike_factor=3.0 x the "
                            "median 2.000 of the last 5 steps")
    old_and_low = entries(*[0.1] * 10, *[2.0] * stopping.SPIKE_WINDOW)
    assert watch.train_loss(5.0, 31, old_and_low) is None  # only the last SPIKE_WINDOW count


def test_a_loss_worse_than_guessing_uniformly_diverges_at_once():
    watch = DivergenceWatch(train(), vocab=100)
    limit = stopping.ABSURD_LOSS_FACTOR * math.log(100)
    assert watch.train_loss(limit - 0.01, 1, []) is None
    problem = watch.train_loss(limit + 0.5, 2, [])
    assert problem.reason == "loss_absurd"
    assert problem.what.endswith(f"above 1.5 x ln(vocab 100) = {limit:.2f}, worse than guessing uniformly")


def test_validation_losses_diverge_when_absurd_or_far_above_the_best():
    watch = DivergenceWatch(train(), vocab=100)
    assert watch.val_loss(3.0, 10, math.inf) is None and watch.val_loss(4.4, 20, 3.0) is None
    assert watch.val_loss(math.nan, 30, 3.0).reason == "val_loss_absurd"
    assert watch.val_loss(7.0, 30, math.inf).reason == "val_loss_absurd"
    problem = watch.val_loss(4.6, 30, 3.0)
    assert problem.reason == "val_loss_diverged"
    assert problem.what == "the validation loss rose to 4.6000 at step 30, over 1.5 x the best so far (3.0000)"


def test_the_message_says_what_is_kept_and_what_to_change(tmp_path):
    problem = stopping.Divergence("loss_spike", "the training loss jumped")
    kept = problem.message(train(lr=0.02, warmup_steps=5), tmp_path / "step-000020", tmp_path / "previous-runs")
    assert kept.startswith("training diverged: the training loss jumped; the checkpoints before it are intact "
                           f"(newest {tmp_path / 'step-000020'}). Lower train.lr (it is 0.02) or raise "
                           "train.warmup_steps (it is 5)")
    assert str(tmp_path / "previous-runs") in kept
    assert "no checkpoint was written yet" in problem.message(train(), None, tmp_path)
