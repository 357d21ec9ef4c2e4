"""The fp16 headroom probe (pipeline/tools/fp16probe.py) on the demo model and real token batches,
on CPU: its per-layer report after training, and a model pushed past fp16's range by one weight,
which the probe must fail and CPU fp16 autocast must really overflow on."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.core import params as params_module
from pipeline.engine.step import loss_of
from pipeline.tools import fp16probe

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def params(demo_tokens):
    return params_module.load([ROOT / "params.yaml", ROOT / "params" / "demo.yaml"],
                              [f"paths.tokens={demo_tokens.params.paths.tokens}",
                               f"paths.tokenizer={demo_tokens.params.paths.tokenizer}",
                               "train.tokens_per_step=1024"])


def scaled_up(params, factor: float) -> torch.nn.Module:
    """The demo model with block 1's SwiGLU up projection multiplied by `factor`."""
    model, _ = fp16probe.model_for(params, None)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.mul_(factor)
    return model


def test_the_demo_model_after_training_reports_every_layers_margin(params):
    headroom = fp16probe.after_training(params, 8, device="cpu", precision="fp32")
    names = [layer.name for layer in headroom.layers]
    assert names == [f"block {i}" for i in range(params.model.n_layer)] + ["lm_head"]
    for layer in headroom.layers:
        assert 0 < layer.activation.value < math.inf and layer.activation.tensor
        assert 0 < layer.gradient.value < math.inf and layer.gradient.tensor
        assert layer.activation_margin == pytest.approx(65504 / layer.activation.value)
    assert headroom.worst_activation.activation_margin > fp16probe.SAFETY and headroom.problems() == []
    text = fp16probe.markdown(headroom)
    rows = [line for line in text.splitlines() if line.startswith("| block ")]
    assert "after 8 training steps" in text and len(rows) == params.model.n_layer
    assert text.rstrip().endswith("fp16 headroom: ok")


def test_the_probe_sees_what_fp16_autocast_really_holds(params):
    """The premise, on CPU's own fp16 autocast: the model the probe passes trains to a finite loss
    in fp16; one weight scaled up makes the probe fail, naming the tensor, and fp16 overflow."""
    x, y = fp16probe.validation_batches(params, count=1)[0]
    plain, _ = fp16probe.model_for(params, None)
    assert fp16probe.probe(plain, [(x, y)], "plain").problems() == []
    assert math.isfinite(loss_of(plain, x, y, "cpu", "fp16")[0].item())

    hot = scaled_up(params, 1e5)
    headroom = fp16probe.probe(hot, [(x, y)], "scaled")
    [problem] = headroom.problems()
    assert headroom.worst_activation.name == "block 1" and "model.layers.1.mlp" in problem
    assert headroom.worst_activation.activation.value > 65504
    assert not math.isfinite(loss_of(hot, x, y, "cpu", "fp16")[0].item())


def test_a_margin_under_the_safety_factor_fails_before_any_overflow(params):
    """Within 8x of 65,504 is a failure although nothing overflowed yet: activations grow."""
    x, y = fp16probe.validation_batches(params, count=1)[0]
    probed = fp16probe.probe(scaled_up(params, 1000), [(x, y)], "1000x")
    assert probed.layers[1].activation.tensor == "model.layers.1.mlp.up_proj output"  # linear in the weight
    factor = 1000 * 65504 / 4 / probed.layers[1].activation.value  # that output 4x below fp16's max
    headroom = fp16probe.probe(scaled_up(params, factor), [(x, y)], "4x")
    assert 1 < headroom.worst_activation.activation_margin < fp16probe.SAFETY
    assert headroom.problems()


def test_the_command_probes_a_checkpoint_and_exits_2_when_short(params, tmp_path):
    scaled_up(params, 1e5).save_pretrained(tmp_path / "model")
    done = subprocess.run([sys.executable, "-m", "pipeline", "fp16-probe", "--params", "params.yaml", "--params",
                           "params/demo.yaml", "--set", f"paths.tokens={params.paths.tokens}",
                           "--checkpoint", str(tmp_path / "model"), "--batches", "1", "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1",
                                                                                      "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    report = json.loads((tmp_path / "out" / "fp16-probe.json").read_text())
    assert report["source"] == str(tmp_path / "model") and report["problems"]
    assert "**problem**: fp16 headroom: model.layers.1.mlp" in (tmp_path / "out" / "fp16-probe.md").read_text()
