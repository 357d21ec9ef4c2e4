"""The plan as train runs it: made for this kind of device and agreeing with params, or refused;
the planner's precision rules."""
from __future__ import annotations

import pytest

from pipeline.cost import hardware
from pipeline.core import params as params_module
from pipeline.core.errors import PipelineError
from pipeline.cost.planner import native_precision, plan_for
from pipeline.engine.plan import Plan, setup_for
from trainkit import ROOT


def params(*overrides):
    return params_module.load([ROOT / "params.yaml", ROOT / "params" / "demo.yaml"], list(overrides))


def write_plan(path, **changes):
    fields = {"device": "cpu", "device_kind": "cpu", "devices": 1, "micro_batch_size": 8, "grad_accum_steps": 2,
              "precision": "fp32", "activation_checkpointing": False, "tokens_per_step": 4096, "peak_flops": 1e12,
              "calibration_key": "cpu|test", "optimizer": params().train.optimizer,
              "model": params().section("model")} | changes
    Plan.make(**fields).write(path)
    return path


def test_precision_rules_follow_the_catalog():
    devices = hardware.catalog()
    assert native_precision(devices["t4-16gb"]) == "fp16"          # Turing: no native bf16
    assert native_precision(devices["rtx2050-laptop-4gb"]) == "bf16"
    assert native_precision(devices["cpu"]) == "fp32"  # whatever the CPU: one loss curve on any CPU
    with pytest.raises(PipelineError, match="bf16 on t4-16gb: it has no native bf16"):
        plan_for(params("cost.hardware=t4-16gb", "train.device=auto", "train.precision=bf16"), devices["t4-16gb"], 4096)


def test_a_plan_for_another_kind_of_device_is_refused(tmp_path):
    plan = write_plan(tmp_path / "plan.json", device="t4-16gb", device_kind="cuda", precision="fp16")
    with pytest.raises(PipelineError, match=r"plans for cost.hardware t4-16gb \(a cuda device\) but this run is on cpu"):
        setup_for(params(), plan, "cpu", 1)


@pytest.mark.parametrize("override, says", [
    ("train.micro_batch_size=4", r"is stale \(train.micro_batch_size is 4, the plan has 8\)"),
    ("train.tokens_per_step=8192", r"lays out 8 x 2 sequences .* rerun the estimate stage"),
])
def test_a_plan_that_disagrees_with_params_is_stale(tmp_path, override, says):
    plan = write_plan(tmp_path / "plan.json")
    with pytest.raises(PipelineError, match=says):
        setup_for(params(override), plan, "cpu", 1)


@pytest.mark.parametrize("override, says", [
    ("train.optimizer=adamw", r"stale \(train.optimizer is adamw, the plan is for muon\)"),
    ("model.n_layer=3", r"stale \(model.n_layer is 3, the plan has 4\)"),
])
def test_a_plan_made_for_another_optimizer_or_model_is_stale(tmp_path, override, says):
    """A plan sized and priced for Muon must not train AdamW (its state does not fit where Muon's did)."""
    plan = write_plan(tmp_path / "plan.json")
    with pytest.raises(PipelineError, match=says):
        setup_for(params(override), plan, "cpu", 1)


def test_a_plan_for_other_process_counts_is_refused(tmp_path):
    plan = write_plan(tmp_path / "plan.json")
    with pytest.raises(PipelineError, match=r"plans for 1 device\(s\) .* this run has 2 process\(es\)"):
        setup_for(params(), plan, "cpu", 2)


def test_without_a_plan_train_says_to_run_the_estimate_stage(tmp_path):
    with pytest.raises(PipelineError, match=r"absent.json not found: run the estimate stage first"):
        setup_for(params(), tmp_path / "absent.json", "cpu", 1)


def test_the_plan_carries_what_train_needs_from_the_catalog():
    """Train reads the device's peak and its calibration key from the plan, never the catalog."""
    p = params()
    device = hardware.get_device(p.cost)
    plan = plan_for(p, device, 4096).plan
    assert plan.peak_flops == device.peak_flops[plan.precision]
    assert plan.calibration_key.startswith(device.name) and f"/mb{plan.micro_batch_size}x" in plan.calibration_key


def test_a_speed_learned_with_n_processes_prices_only_n_processes():
    """Two processes that happen to share one micro-batch layout still learn under their own key:
    their step includes a gradient all-reduce that one process never pays."""
    one = params("cost.num_devices=1", "train.micro_batch_size=1", "train.tokens_per_step=8192")
    two = params("cost.num_devices=2", "train.micro_batch_size=1", "train.tokens_per_step=16384")
    key = {n: plan_for(p, hardware.get_device(p.cost), 4096).plan.calibration_key for n, p in ((1, one), (2, two))}
    assert key[1].split("|")[1:] == key[2].split("|")[1:]  # same shape, same per-device layout
    assert key[1] != key[2]
