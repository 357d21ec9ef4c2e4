"""pipeline.engine.training: the model, optimizer, LR schedule and step every caller builds the same way."""
from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from pipeline.core import params as params_module
from pipeline.core.errors import PipelineError
from pipeline.engine import step as step_module
from pipeline.engine.training import build_training, lr_horizon, to_device

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 32


def tiny(*sets: str):
    return params_module.load([ROOT / "params.yaml"], [
        "model.architecture=gpt2", "model.n_layer=1", "model.n_embd=16", "model.n_head=2", "model.context=8",
        "model.dropout=0.0", "train.optimizer=adamw", "train.tokens_per_step=32", "train.max_steps=10",
        "train.warmup_steps=2", "train.lr=0.01", "train.min_lr=0.001", *sets])


def build(params=None, precision="fp32"):
    return build_training(params or tiny(), VOCAB, 0, device="cpu", precision=precision,
                          activation_checkpointing=False)


def batch(rows=4, seed=1):
    ids = torch.randint(0, VOCAB, (rows, 9), generator=torch.Generator().manual_seed(seed))
    return ids[:, :-1], ids[:, 1:]


def weights(training):
    return torch.cat([p.detach().flatten() for p in training.raw.parameters()])


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")  # no update ran: meant
def test_the_lr_decays_over_max_steps_or_the_steps_max_tokens_allows():
    assert lr_horizon(tiny().train) == 10
    assert lr_horizon(tiny("train.max_tokens=100").train) == 4  # ceil(100 / 32)
    assert lr_horizon(tiny("train.max_tokens=10000").train) == 10
    training = build(tiny("train.max_tokens=100"))
    lrs = [training.lr]
    for _ in range(4):
        training.finish(apply=False)
        lrs.append(training.lr)
    assert lrs[0] == 0 and lrs[2] == pytest.approx(0.01) and lrs[4] == pytest.approx(0.001)  # warmup, peak, floor


def test_the_seed_alone_decides_the_initial_weights():
    assert torch.equal(weights(build()), weights(build()))
    assert not torch.equal(weights(build()), weights(build(tiny("train.seed=7"))))


def test_steps_learn_and_report_their_update():
    training, x_y = build(), batch()
    losses = [training.step(index, lambda micro: x_y, 1) for index in range(6)]
    assert all(done.update is not None and done.update.applied for done in losses)
    assert losses[-1].loss < losses[1].loss  # step 0 runs at warmup's lr 0


def test_a_step_is_the_mean_over_its_micro_batches():
    x, y = batch(rows=4)
    whole = build().forward_backward(0, lambda micro: (x, y), 1).item()
    calls = []
    halves = build().forward_backward(0, lambda micro: (x[2 * micro:2 * micro + 2], y[2 * micro:2 * micro + 2]), 2,
                                      after_micro=lambda: calls.append(1)).item()
    assert halves == pytest.approx(whole, abs=1e-6) and len(calls) == 2


def test_dropout_draws_from_the_seed_step_and_rank_alone():
    def loss(index, rank=0):
        training = build(tiny("model.dropout=0.5"))
        torch.manual_seed(12345)  # whatever the global RNG holds before the step
        return training.forward_backward(index, lambda micro: batch(), 1, rank=rank).item()

    assert loss(3) == loss(3)
    assert loss(3) != loss(4) and loss(3) != loss(3, rank=1)


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")  # no update ran: meant
def test_a_non_finite_loss_drops_the_gradients_and_moves_nothing():
    training = build()
    training.raw.transformer.ln_f.register_forward_hook(lambda module, inputs, output: output * math.nan)
    before, lr = weights(training), training.lr
    done = training.step(0, lambda micro: batch(), 1)
    assert math.isnan(done.loss) and done.update is None
    assert torch.equal(weights(training), before)
    assert all(p.grad is None for p in training.raw.parameters())
    assert training.lr != lr  # the schedule still advanced: step numbers and lrs stay those of the plan


def test_a_precision_the_device_did_not_run_is_refused(monkeypatch):
    monkeypatch.setattr(step_module, "autocast", lambda device, precision: nullcontext())  # autocast silently off
    training = build(precision="bf16")
    with pytest.raises(PipelineError, match="asked for bf16 but the model computed in fp32 on cpu: set "
                                            "train.precision to one this device runs"):
        training.step(0, lambda micro: batch(), 1)


def test_a_cpu_batch_stays_where_it_is_on_cpu():
    x = torch.ones(2, 3, dtype=torch.int64)
    assert to_device(x, torch.device("cpu")) is x
