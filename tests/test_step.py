"""The training step (pipeline/step.py): the golden loss curve, fp16 overflow skips, accumulation."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from pipeline import step
from pipeline.model import build_model
from pipeline.stages import run_stage
from trainkit import tiny_params, train_losses

GOLDEN = Path(__file__).parent / "golden" / "tiny-losses.json"
# Float sums may round differently on another CPU's kernels (AVX2, AVX-512, AMX): a few 1e-5 after 20
# steps. A change to the model, the data order, the optimizer or the step moves them by far more.
GOLDEN_TOLERANCE = 2e-3


def test_the_first_20_losses_of_the_tiny_config_match_the_committed_curve(demo_tokens, tmp_path):
    """As torchtitan keeps one: any numerical change shows up here, and in review as a diff of
    tests/golden/tiny-losses.json (rewrite it with BUDGETGPT_UPDATE_GOLDEN=1 when a change is meant)."""
    run_stage("train", tiny_params(demo_tokens, tmp_path, "train.max_steps=20"))
    losses = train_losses(tmp_path)
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    if os.environ.get("BUDGETGPT_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps({"config": "tests/trainkit.py TINY, fp32, demo corpus", "losses": losses},
                                     indent=1) + "\n")
    assert losses == pytest.approx(json.loads(GOLDEN.read_text())["losses"], abs=GOLDEN_TOLERANCE)


def _tiny_model():
    from pipeline import params as params_module

    torch.manual_seed(0)
    model = params_module.Model(n_layer=1, n_embd=16, n_head=2, context=8, dropout=0.0)
    return build_model(model, 32, 0), params_module.load([Path(__file__).parents[1] / "params.yaml"]).train


def test_an_fp16_overflow_skips_the_update_and_says_so():
    net, train = _tiny_model()
    runner = step.TrainStep(net, step.optimizer_for(net, train), precision="fp16", device="cpu", grad_clip=1.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randint(0, 32, (2, 8))
    runner.micro(x, x, accum=1)
    next(net.parameters()).grad.fill_(math.inf)  # what an fp16 overflow leaves in a gradient
    update = runner.update()
    assert not update.applied and runner.ran_precision == "fp16"
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the weights did not move
    runner.micro(x, x, accum=1)
    assert runner.update().applied


def test_two_micro_batches_of_one_equal_one_of_two():
    results = []
    for accum in (1, 2):
        net, train = _tiny_model()
        runner = step.TrainStep(net, step.optimizer_for(net, train), precision="fp32", device="cpu", grad_clip=0.0)
        x = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(1))
        for part in torch.chunk(x, accum):
            runner.micro(part, part, accum=accum)
        runner.update()
        results.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-6)
