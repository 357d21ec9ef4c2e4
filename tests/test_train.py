"""The train stage in-process: learning, outputs, accumulation, precisions, plan, stopping rules."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.registry import run_stage
from pipeline.engine import checkpoint as ckpt
from pipeline.cost import calibration, hardware
from pipeline.cost import planner as planning
from pipeline.engine import step
from pipeline.engine import trainer as train
from pipeline.engine import training
from pipeline.data.batches import TrainWindows, stack_windows, val_starts
from pipeline.core.errors import PipelineError
from pipeline.model.build import count_parameters
from pipeline.data.tokens import load as load_manifest, read_tokens
from pipeline.engine.identity import run_id
from trainkit import ROOT, cli, env, final_weights, manifest, max_difference, report, run_cli, tiny_params, train_losses


def test_learns_well_below_the_unigram_entropy_and_writes_every_output(demo_tokens, tmp_path):
    params = tiny_params(demo_tokens, tmp_path, "train.max_steps=100", "train.eval_every=50",
                         "train.checkpoint_every=20", "train.keep_last=2")
    result = run_stage("train", params).as_dict()
    entropy = demo_tokens.manifest["unigram_entropy_nats"]

    assert result == report(tmp_path)
    assert (result["steps"], result["tokens"], result["stop_reason"]) == (100, 51_200, "max_steps")
    val = {e["step"]: e["loss"] for e in result["loss"]["val"]}
    assert sorted(val) == [50, 100]  # eval_every alone: checkpoints do not force validations
    assert val[100] < entropy - 0.5, (val, entropy)  # a unigram model cannot get below the entropy
    assert result["precision"] == "fp32" and result["micro_batch_size"] == 8 and result["grad_accum_steps"] == 1
    assert result["tokens_per_second"] > 0 and result["wall_hours"] > 0 and result["peak_memory_bytes"] > 2**20
    assert result["mfu"] is not None and 0 < result["mfu"] < 1 and result["mfu_device"] == "cpu"
    assert result["git_revision"] is not None and result["versions"]["torch"].startswith("2.")

    index = manifest(tmp_path)
    assert index["latest"] == "step-000100" and index == result["checkpoints"]
    best = min((e for e in index["checkpoints"] if e["val_loss"] is not None), key=lambda e: e["val_loss"])
    assert index["best"] == best["dir"] and len(index["checkpoints"]) <= 3  # keep_last 2 + best
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == [e["dir"] for e in index["checkpoints"]]
    for entry in index["checkpoints"]:
        ckpt.verify(tmp_path / "checkpoints" / entry["dir"])

    metrics = tmp_path / "reports" / "train_live" / "plots" / "metrics"
    assert len((metrics / "train" / "loss.tsv").read_text().splitlines()) == 1 + 100
    assert len((metrics / "val" / "loss.tsv").read_text().splitlines()) == 1 + 2

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model", local_files_only=True)
    assert count_parameters(model) == result["parameters"]
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == model.config.eos_token_id == \
        demo_tokens.manifest["eot_token_id"]
    val_file = demo_tokens.params.paths.tokens / "val.bin"
    x, y = stack_windows(read_tokens(val_file), val_starts(val_file, 64, 16), 64)
    with torch.no_grad():
        loss = F.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten()).item()
    assert loss == pytest.approx(val[100], abs=1e-4)  # the exported model is the final one
    # as Hugging Face users load it: generate() with the KV cache, the context as the tokenizer's limit
    assert model.config.use_cache is True
    assert tokenizer.model_max_length == 64 and tokenizer.truncation_side == "left"


def test_the_stage_hands_the_loop_where_its_measured_speed_is_kept(demo_tokens, tmp_path, monkeypatch):
    """The loop knows calibration only as the `remember` the train stage hands it: the engine
    never imports cost (tests/test_layout.py)."""
    params = tiny_params(demo_tokens, tmp_path, "train.max_steps=20", "train.eval_every=10")
    monkeypatch.setenv("BUDGETGPT_CACHE_DIR", str(tmp_path / "cache"))   # the measurement kept out of other tests
    kept, real = [], calibration.remember
    monkeypatch.setattr(calibration, "remember", lambda key, **measured: kept.append((key, measured)) or real(key, **measured))
    result = run_stage("train", params).as_dict()
    [(key, measured)] = kept
    assert key == json.loads((tmp_path / "reports" / "plan.json").read_text())["calibration_key"]
    assert measured["run"] == run_id(params, load_manifest(params.paths.tokens, params.paths.tokenizer))
    assert measured["mfu"] == pytest.approx(result["mfu"]) and measured["step_seconds"] > 0


def test_micro_batch_2_x_accumulation_4_matches_8_x_1(demo_tokens, tmp_path):
    runs = {}
    for micro in (2, 8):
        base = tmp_path / f"micro{micro}"
        result = run_stage("train", tiny_params(demo_tokens, base, f"train.micro_batch_size={micro}", "train.max_steps=6")).as_dict()
        assert result["grad_accum_steps"] == 8 // micro
        runs[micro] = base
    # the same gradients summed in another order differ in the last bits, and Adam's first steps,
    # dividing by a tiny second moment, carry that to ~1e-5 of a weight (2.1e-5 seen on a 2-thread
    # AVX-512 EPYC): judged against one step's size, lr (0.02), where a real mistake moves it by more
    assert max_difference(final_weights(runs[2]), final_weights(runs[8])) < 0.005 * 0.02
    assert train_losses(runs[2]) == pytest.approx(train_losses(runs[8]), abs=1e-5)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_fp16_and_bf16_train_on_cpu_and_say_so(demo_tokens, tmp_path, precision):
    # this CPU has no native bf16 and emulates half matmuls slowly: keep it to a few small steps
    result = run_stage("train", tiny_params(demo_tokens, tmp_path, f"train.precision={precision}", "train.max_steps=8",
                                   "train.tokens_per_step=256", "train.micro_batch_size=4", "train.eval_every=8",
                                   "train.checkpoint_every=8", "train.eval_batches=1")).as_dict()
    assert result["precision"] == precision
    losses = train_losses(tmp_path)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0] - 0.3
    scaler = tmp_path / "checkpoints" / "step-000008" / "scaler.pt"
    assert scaler.is_file() == (precision == "fp16")  # dynamic loss scaling only for fp16
    if precision == "fp16":
        assert ckpt.load_state(scaler.parent, "scaler")["scale"] > 0


def test_a_precision_that_does_not_run_is_never_claimed(demo_tokens, tmp_path, monkeypatch):
    from contextlib import nullcontext

    monkeypatch.setattr(step, "autocast", lambda device, precision: nullcontext())  # autocast silently off
    with pytest.raises(PipelineError, match="asked for fp16 but the model computed in fp32"):
        run_stage("train", tiny_params(demo_tokens, tmp_path, "train.precision=fp16", "train.max_steps=1")).as_dict()


def test_activation_checkpointing_changes_memory_not_results(demo_tokens, tmp_path):
    losses = {}
    for flag in ("true", "false"):
        base = tmp_path / flag
        result = run_stage("train", tiny_params(demo_tokens, base, f"train.activation_checkpointing={flag}", "train.max_steps=3")).as_dict()
        assert result["activation_checkpointing"] is (flag == "true")
        losses[flag] = train_losses(base)
    assert losses["true"] == pytest.approx(losses["false"], abs=1e-6)


def test_auto_values_come_from_the_plan(demo_tokens, tmp_path):
    auto = ("train.micro_batch_size=auto", "train.precision=auto", "train.activation_checkpointing=auto",
            "train.max_steps=1")
    params = tiny_params(demo_tokens, tmp_path / "planner", *auto)
    result = run_stage("train", params).as_dict()
    expected = planning.plan_for(params, hardware.get_device(params.cost), demo_tokens.manifest["vocab_size"]).plan
    assert (result["micro_batch_size"], result["precision"], result["activation_checkpointing"]) == \
        (expected.micro_batch_size, expected.precision, expected.activation_checkpointing)

    plan = {"format": 2, "device": "cpu", "device_kind": "cpu", "devices": 1, "micro_batch_size": 4,
            "grad_accum_steps": 2, "precision": "fp32", "activation_checkpointing": True, "tokens_per_step": 512,
            "peak_flops": 1e12, "calibration_key": "cpu|test", "optimizer": "adamw",
            "model": tiny_params(demo_tokens, tmp_path / "plan", *auto, plan=False).section("model")}
    (tmp_path / "plan" / "reports").mkdir(parents=True)
    (tmp_path / "plan" / "reports" / "plan.json").write_text(json.dumps(plan))
    result = run_stage("train", tiny_params(demo_tokens, tmp_path / "plan", *auto, plan=False)).as_dict()
    assert (result["micro_batch_size"], result["grad_accum_steps"], result["activation_checkpointing"]) == (4, 2, True)
    assert "plan.json" in result["settings_from"]

    plan["micro_batch_size"] = 3
    (tmp_path / "plan" / "reports" / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(PipelineError, match="plan.json"):
        run_stage("train", tiny_params(demo_tokens, tmp_path / "plan", *auto, plan=False)).as_dict()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_plan_is_refused_on_a_cpu_with_one_clear_line(demo_tokens, tmp_path):
    """The defaults (cost.hardware t4-16gb, train.device auto) on a machine without a GPU: the T4
    plan (fp16, a GPU-sized micro-batch) must not silently run on the CPU."""
    plan = {"format": 2, "device": "t4-16gb", "device_kind": "cuda", "devices": 1, "micro_batch_size": 8,
            "grad_accum_steps": 1, "precision": "fp16", "activation_checkpointing": False, "tokens_per_step": 512,
            "peak_flops": 65e12, "calibration_key": "t4-16gb|test", "optimizer": "adamw",
            "model": tiny_params(demo_tokens, tmp_path, plan=False).section("model")}
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "plan.json").write_text(json.dumps(plan))
    args = cli(demo_tokens, tmp_path, "train.device=auto", "train.precision=auto", "train.micro_batch_size=auto",
               "cost.hardware=t4-16gb", plan=False)
    done = run_cli(args)
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ")
    assert all(word in error[0] for word in ("cost.hardware t4-16gb", "cuda", "on cpu", "cost.hardware: cpu"))
    assert not (tmp_path / "checkpoints").exists()


def test_early_stopping_on_a_planted_plateau(demo_tokens, tmp_path):
    # lr 1e-30: every update is below fp32's resolution, so the val loss is exactly flat and every
    # validation after the first is "no improvement" (a lr of 1e-9 left the order of the losses to
    # rounding noise, which another corpus or CPU flips)
    result = run_stage("train", tiny_params(demo_tokens, tmp_path, "train.lr=1e-30", "train.min_lr=0", "train.max_steps=50",
                                   "train.eval_every=2", "train.patience=2", "train.min_delta=0.01")).as_dict()
    assert result["stop_reason"] == "early_stopping"
    assert result["steps"] == 6  # best at 2, no better at 4 and 6
    assert len({v["loss"] for v in result["loss"]["val"]}) == 1, "the planted plateau is not flat"
    assert manifest(tmp_path)["latest"] == "step-000006"
    # the model shipped is the best one (the first of equals), not the newest checkpoint
    assert result["final_weights"] == "step-000002 (best)"
    best = load_file(tmp_path / "checkpoints" / "step-000002" / "model.safetensors")
    assert max_difference(final_weights(tmp_path), best) == 0.0


@pytest.mark.parametrize("key", ["target_val_loss", "target_perplexity"])
def test_a_target_loss_stops_the_run(demo_tokens, tmp_path, key):
    target = 7.0  # the untrained model starts near ln(vocab) = 8.15 and passes 7 within ~10 steps
    value = target if key == "target_val_loss" else math.exp(target)
    result = run_stage("train", tiny_params(demo_tokens, tmp_path, f"train.{key}={value}", "train.max_steps=200",
                                   "train.eval_every=2")).as_dict()
    assert result["stop_reason"] == key
    assert result["steps"] < 200 and result["steps"] % 2 == 0
    assert result["loss"]["val"][-1]["loss"] <= target < result["loss"]["val"][-2]["loss"]


# a spike is judged against the last stopping.SPIKE_WINDOW (20) losses, so it is planted after them
@pytest.mark.parametrize("fault, first_bad_step, last_good, reason", [("nan", 8, 5, "nonfinite_loss"),
                                                                     ("spike", 23, 20, "loss_spike")])
def test_a_diverging_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(demo_tokens, tmp_path, monkeypatch, fault,
                                                                            first_bad_step, last_good, reason):
    build = training.build_model

    def faulty_build(*args, **kwargs):
        model = build(*args, **kwargs)
        calls = {"n": 0}

        def hook(module, inputs, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] >= first_bad_step:  # one training forward per step (accumulation 1)
                    return output * (math.nan if fault == "nan" else 30.0)
            return output

        model.transformer.ln_f.register_forward_hook(hook)
        return model

    monkeypatch.setattr(training, "build_model", faulty_build)
    params = tiny_params(demo_tokens, tmp_path, "train.max_steps=40", "train.max_nonfinite_steps=3",
                         "train.checkpoint_every=5", "train.eval_every=5")
    good = f"step-{last_good:06d}"
    with pytest.raises(train.TrainingDiverged, match=good) as err:
        run_stage("train", params).as_dict()
    assert "lower train.lr" in str(err.value).lower()
    assert report(tmp_path)["stop_reason"] == reason
    assert manifest(tmp_path)["latest"] == good
    ckpt.verify(tmp_path / "checkpoints" / good)
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("lr", ["10", "1"])
def test_a_learning_rate_that_diverges_fails_the_run_and_ships_nothing(demo_tokens, tmp_path, lr):
    done = run_cli(cli(demo_tokens, tmp_path, f"train.lr={lr}", "train.min_lr=0", "train.warmup_steps=0",
                       "train.max_steps=60", "train.eval_every=5", "train.patience=3"))
    assert done.returncode == 2, done.stdout + done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: training diverged") and "Lower train.lr" in error and "step" in error
    assert "Traceback" not in done.stderr
    assert report(tmp_path)["stop_reason"].startswith(("loss_", "val_loss_", "nonfinite"))
    assert not (tmp_path / "model").exists()


def test_checkpoints_of_another_run_are_kept_aside_and_a_longer_run_resumes(demo_tokens, tmp_path):
    run_stage("train", tiny_params(demo_tokens, tmp_path, "train.max_steps=2", "train.checkpoint_every=2")).as_dict()
    first = (tmp_path / "checkpoints" / "step-000002" / "model.safetensors").read_bytes()
    other = run_stage("train", tiny_params(demo_tokens, tmp_path, "train.lr=0.03", "train.max_steps=2")).as_dict()
    assert other["resumed_from"] is None and other["steps"] == 2  # a new run, from step 0
    aside = tmp_path / "checkpoints" / "previous-runs" / "run-1"
    assert (aside / "step-000002" / "model.safetensors").read_bytes() == first  # nothing lost
    assert "train.lr was 0.02, now 0.03" in (aside / "WHY.txt").read_text()
    result = run_stage("train", tiny_params(demo_tokens, tmp_path, "train.lr=0.03", "train.max_steps=4",
                                   "train.checkpoint_every=2")).as_dict()
    assert (result["resumed_from"], result["steps"]) == ("step-000002", 4)
    assert len(result["loss"]["val"]) == 2 and len(train_losses(tmp_path)) == 4
    assert manifest(tmp_path)["latest"] == "step-000004"


@pytest.mark.parametrize("limit, steps, reason", [("train.max_tokens=2048", 4, "max_tokens"),
                                                  ("train.max_hours=1e-9", 1, "max_hours")])
def test_token_and_wall_clock_limits_stop_the_run(demo_tokens, tmp_path, limit, steps, reason):
    result = run_stage("train", tiny_params(demo_tokens, tmp_path, limit, "train.max_steps=50")).as_dict()
    assert (result["stop_reason"], result["steps"]) == (reason, steps)
    assert manifest(tmp_path)["latest"] == f"step-{steps:06d}"  # the end is always checkpointed


def test_a_second_train_on_the_same_checkpoints_exits_2_naming_the_holder(demo_tokens, tmp_path):
    import subprocess

    first = subprocess.Popen(cli(demo_tokens, tmp_path, "train.max_steps=100000", "train.eval_every=1000",
                                 "train.checkpoint_every=1000"),
                             cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / "checkpoints" / ".lock"
        for _ in range(600):
            if lock.is_file() and lock.read_text():
                break
            time.sleep(0.1)
        second = run_cli(cli(demo_tokens, tmp_path, "train.lr=0.03", "train.max_steps=2"))
        assert second.returncode == 2
        assert f"PID {first.pid}" in second.stderr and "in use by another training run" in second.stderr
        assert not (tmp_path / "checkpoints" / "previous-runs").exists()  # nothing of the first run moved
    finally:
        first.terminate()
        first.communicate(timeout=120)
    assert first.returncode == 143  # SIGTERM: checkpointed and stopped, as documented


def test_early_stopping_does_not_depend_on_how_often_checkpoints_are_written(demo_tokens, tmp_path):
    runs = {}
    for every in (1, 1000):
        result = run_stage("train", tiny_params(demo_tokens, tmp_path / str(every), "train.lr=1e-9", "train.min_lr=0",
                                                "train.max_steps=50", "train.eval_every=3", "train.patience=2",
                                                "train.min_delta=0.01", f"train.checkpoint_every={every}")).as_dict()
        runs[every] = (result["stop_reason"], result["steps"], [e["step"] for e in result["loss"]["val"]])
    assert runs[1] == runs[1000] == ("early_stopping", 9, [3, 6, 9])
