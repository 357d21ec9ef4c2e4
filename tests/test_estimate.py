"""The estimate stage on a token manifest of its own (a 32,000-token tokenizer, 100M train tokens):
the default experiment on T4, RTX 2050 and CPU, the plan, prices, the gate and bad input."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from pipeline.registry import run_stage
from pipeline.stages import estimate
from pipeline.cost import hardware
from pipeline.core import params as params_module
from pipeline.core.errors import BudgetExceeded, PipelineError
from pipeline.data.tokens import TokenManifest

ROOT = Path(__file__).resolve().parent.parent
PLAN_KEYS = {"format", "device", "device_kind", "devices", "micro_batch_size", "grad_accum_steps", "precision",
             "activation_checkpointing", "tokens_per_step", "peak_flops", "calibration_key", "optimizer", "model"}


def write_tokens(root: Path, vocab: int, train_tokens: int) -> None:
    """A tokenizer with exactly `vocab` entries and the manifest the tokenize stage would write."""
    (root / "tokenizer").mkdir(parents=True)
    (root / "tokens").mkdir(parents=True)
    vocabulary = {f"t{i}": i for i in range(vocab)}
    Tokenizer(WordLevel(vocabulary, unk_token="t0")).save(str(root / "tokenizer/tokenizer.json"))
    digest = hashlib.sha256((root / "tokenizer/tokenizer.json").read_bytes()).hexdigest()
    val_tokens = train_tokens // 200
    TokenManifest.make(
        train_tokens=train_tokens, val_tokens=val_tokens, documents={"train": 1, "val": 1},
        train_bytes=3 * train_tokens, val_bytes=3 * val_tokens, bytes_per_token=3.0, vocab_size=vocab,
        dtype="uint16", eot_token_id=0, sha256={"train.bin": "-", "val.bin": "-"}, tokenizer_sha256=digest,
        unigram_entropy_nats=1.0, invalid_utf8_replacements=0, params={}, versions={}, git_revision=None,
    ).write(root / "tokens" / "manifest.json")


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tokens32k")
    write_tokens(root, 32000, 100_000_000)
    return root


def load(tokens: Path, reports: Path, *overrides: str) -> params_module.Params:
    paths = [f"paths.tokens={tokens / 'tokens'}", f"paths.tokenizer={tokens / 'tokenizer'}", f"paths.reports={reports}"]
    return params_module.load([ROOT / "params.yaml"], paths + list(overrides))


def run(tokens: Path, reports: Path, *overrides: str) -> dict:
    run_stage("estimate", load(tokens, reports, *overrides)).as_dict()
    return json.loads((reports / "cost.json").read_text())


# ---- the default experiment: GPT-2 small, ~100M tokens --------------------------------------------

def test_default_experiment_on_t4(tokens, tmp_path, capsys):
    cost = run(tokens, tmp_path)
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert set(plan) == PLAN_KEYS and plan == cost["plan"]
    assert plan["device"] == "t4-16gb" and plan["precision"] == "fp16"  # T4: fp16, never emulated bf16
    assert plan["micro_batch_size"] * plan["grad_accum_steps"] * 1024 == plan["tokens_per_step"] == 20480
    assert cost["fits"] and cost["within_budget"] and not cost["override"]
    assert cost["peak_memory_bytes"] <= cost["memory_usable_bytes"] == int(14.75 * 2**30 * 0.9)
    assert cost["peak_memory_bytes"] == sum(cost["memory"].values())
    assert cost["tokens"] == 5000 * 20480 and cost["epochs"] == pytest.approx(1.024)
    assert cost["flops"] == pytest.approx(cost["tokens"] * cost["flops_per_token"])
    # the default muon: its Newton-Schulz matmuls per step on top, at the fp16 rate (no native bf16)
    newton_schulz = cost["executed_flops"] - cost["flops"] * cost["recompute_factor"] - cost["eval_flops"]
    # per layer q, k, v, o (768 x 768) and gate, up, down (2048 x 768): 5 x (X X^T, A A, B X)
    square, wide = 5 * (4 * 768 ** 3 + 2 * 768 ** 3), 5 * (4 * 768 ** 2 * 2048 + 2 * 768 ** 3)
    assert newton_schulz == pytest.approx(5000 * 12 * (4 * square + 3 * wide))
    assert cost["step_hours"] == pytest.approx((cost["flops"] + newton_schulz) / (65e12 * 0.20) / 3600)
    # validation: every 250 steps, 20 steps' worth of windows, forward only (2N of 6N FLOPs per token)
    assert cost["eval_flops"] == pytest.approx(20 * 20 * 20480 * cost["flops_per_token"] / 3)
    assert cost["hours"] == pytest.approx(cost["step_hours"] + cost["eval_flops"] / (65e12 * 0.20) / 3600)
    assert cost["tokens_per_second"] == pytest.approx(cost["tokens"] / (cost["step_hours"] * 3600))
    assert cost["usd"] == pytest.approx(cost["hours"] * 0.526)
    assert cost["kwh"] == pytest.approx(70 * cost["hours"] * 1.1 / 1000)
    assert cost["co2_kg"] == pytest.approx(cost["kwh"] * 0.4)
    assert cost["mfu"] == 0.20 and "t4-16gb" in cost["mfu_source"]
    assert cost["provenance"]["params"]["cost"]["hardware"] == "t4-16gb" and cost["pricing"] == "on_demand"
    markdown = (tmp_path / "cost.md").read_text()
    assert "Within budget" in markdown
    for name in hardware.catalog():
        assert f"| {name} | 102,400,000 (1x) |" in markdown and f"| {name} | 1,024,000,000 (10x) |" in markdown
    terminal = capsys.readouterr().out
    assert "estimate: t4-16gb" in terminal and "h100-80gb" in terminal
    # train.lr and min_lr: auto, resolved at 768 wide: printed with their reasons, recorded as numbers
    assert "train.lr auto: 0.0006 = min(0.002, 0.0006 x 768/768)" in terminal
    assert "train.min_lr auto: 6e-05 = train.lr x 0.1" in terminal
    assert cost["provenance"]["params"]["train"]["lr"] == pytest.approx(6e-4)


def test_rtx2050_gets_a_plan_that_fits_in_4gb(tokens, tmp_path):
    cost = run(tokens, tmp_path, "cost.hardware=rtx2050-laptop-4gb", "cost.pricing=owned", "cost.pue=1.0",
               "cost.budget_hours=48")
    plan = cost["plan"]
    assert cost["fits"] and plan["precision"] == "bf16"  # Ampere: native bf16
    assert cost["peak_memory_bytes"] <= cost["memory_usable_bytes"] < 4 * 2**30
    assert plan["micro_batch_size"] * plan["grad_accum_steps"] == 20
    assert cost["usd"] == pytest.approx(cost["kwh"] * 0.15) and cost["kwh"] == pytest.approx(45 * cost["hours"] / 1000)


def test_cpu_reports_its_hours_and_the_gate_refuses_them(tokens, tmp_path):
    with pytest.raises(BudgetExceeded) as refused:
        run(tokens, tmp_path, "cost.hardware=cpu", "cost.pricing=owned")
    message = str(refused.value)
    assert message.startswith("over budget on cpu") and "> cost.budget_hours 12.00 h" in message
    assert "train.max_tokens:" in message and "t4-16gb" in message  # fewer tokens; a device within budget
    cost = run(tokens, tmp_path, "cost.hardware=cpu", "cost.pricing=owned", "cost.override_budget=true")
    cpu = hardware.get_device(load(tokens, tmp_path, "cost.hardware=cpu").cost)
    assert cost["plan"]["precision"] == "fp32" and cost["fits"]  # one loss curve on any CPU
    # the catalog holds TFLOP/s: x 1e12 / 1e12 may move the last bit
    assert cost["detected"]["model"] and cost["detected"]["peak_flops"]["fp32"] == pytest.approx(cpu.peak_flops["fp32"],
                                                                                                rel=1e-12)
    assert cost["hours"] > 12 and cost["over_budget"] == ["hours"]
    assert cost["override"] and not cost["within_budget"]
    assert "run allowed by cost.override_budget" in (tmp_path / "cost.md").read_text()


def test_processes_sharing_a_cpu_are_priced_as_one_cpu(tokens, tmp_path):
    """cost.num_devices on a CPU: processes that share its cores, its one matmul peak and its memory
    are one CPU's price and speed, each planned for its share."""
    sets = ("cost.hardware=cpu", "cost.pricing=owned", "cost.override_budget=true", "cost.mfu=0.5",
            "train.tokens_per_step=30720")   # 30 sequences: split over 1 or 3 processes
    one = run(tokens, tmp_path / "one", *sets)
    three = run(tokens, tmp_path / "three", *sets, "cost.num_devices=3")
    for key in ("hours", "usd", "kwh", "tokens_per_second", "peak_flops"):
        assert three[key] == pytest.approx(one[key], rel=1e-9), key
    assert three["plan"]["peak_flops"] == pytest.approx(one["plan"]["peak_flops"] / 3, rel=1e-12)
    assert three["memory_usable_bytes"] == pytest.approx(one["memory_usable_bytes"] / 3, abs=1)
    assert "x 1 (cost.num_devices: 3 processes share this CPU's cores" in (tmp_path / "three/cost.md").read_text()


# ---- the plan ---------------------------------------------------------------------------------------

def test_the_gate_shows_digits_enough_to_compare(tokens, tmp_path):
    with pytest.raises(BudgetExceeded) as refused:
        run(tokens, tmp_path, "train.max_steps=10", "cost.budget_usd=0.001", "cost.budget_hours=null")
    usd = re.search(r"\$(\d+\.\d+) > cost.budget_usd \$(\d+\.\d+)", str(refused.value))
    assert usd and float(usd.group(1)) > float(usd.group(2)) == 0.001 and "<$0.01 >" not in str(refused.value)


def test_budget_changes_leave_the_plan_byte_identical(tokens, tmp_path):
    run(tokens, tmp_path, "cost.budget_usd=10")
    first = (tmp_path / "plan.json").read_bytes()
    run(tokens, tmp_path, "cost.budget_usd=20", "cost.budget_hours=null", "cost.budget_kwh=5")
    assert (tmp_path / "plan.json").read_bytes() == first


def test_explicit_train_settings_are_respected(tokens, tmp_path):
    cost = run(tokens, tmp_path, "train.micro_batch_size=4", "train.activation_checkpointing=true",
               "train.precision=fp32", "cost.override_budget=true")
    assert {k: v for k, v in cost["plan"].items() if k not in ("calibration_key", "model")} == {
        "format": 2, "device": "t4-16gb", "device_kind": "cuda", "devices": 1, "micro_batch_size": 4,
        "grad_accum_steps": 5, "precision": "fp32", "activation_checkpointing": True, "tokens_per_step": 20480,
        "peak_flops": 8.1e12, "optimizer": "muon"}
    assert cost["plan"]["calibration_key"].endswith("|fp32/mb4x5/ckpt")
    plain = run(tokens, tmp_path, "train.micro_batch_size=4", "train.activation_checkpointing=false",
                "train.precision=fp32", "cost.override_budget=true")
    # recomputing every block's forward costs a third more work than the model's FLOPs
    assert cost["step_hours"] == pytest.approx(plain["step_hours"] * 4 / 3)
    assert cost["peak_memory_bytes"] < plain["peak_memory_bytes"]


def test_checkpointing_only_when_nothing_else_fits(tokens, tmp_path):
    cost = run(tokens, tmp_path, "model.n_layer=16", "cost.hardware=rtx2050-laptop-4gb", "cost.pricing=owned",
               "cost.override_budget=true")
    assert cost["fits"] and cost["plan"]["activation_checkpointing"] and cost["plan"]["micro_batch_size"] <= 2
    with pytest.raises(BudgetExceeded, match="no plan fits rtx2050-laptop-4gb: micro-batch 1"):
        run(tokens, tmp_path, "model.n_layer=16", "cost.hardware=rtx2050-laptop-4gb", "cost.pricing=owned",
            "cost.override_budget=true", "train.activation_checkpointing=false")


def test_model_that_fits_nowhere_says_by_how_much(tokens, tmp_path):
    (tmp_path / "plan.json").write_text("{}")  # a stale plan from an earlier run must not survive
    with pytest.raises(BudgetExceeded) as refused:
        run(tokens, tmp_path, "model.n_layer=48", "model.n_embd=1600", "model.n_head=25",
            "cost.hardware=rtx2050-laptop-4gb", "cost.pricing=owned", "cost.override_budget=true")
    message = str(refused.value)
    assert message.startswith("no plan fits rtx2050-laptop-4gb: micro-batch 1, bf16, activation checkpointing on")
    assert "GiB more than the 3.42 GiB usable" in message and "a100-80gb" in message
    assert not (tmp_path / "plan.json").exists() and not (tmp_path / "cost.json").exists()
    assert "REFUSED" in (tmp_path / "cost.md").read_text()


@pytest.mark.parametrize("overrides,expected", [
    (["train.micro_batch_size=3"], "train.micro_batch_size 3 does not divide the 20 sequences"),
    (["train.tokens_per_step=20000"],
     r"must be a multiple of model.context x cost.num_devices \(1024 x 1\): use 19456 or 20480"),
    (["cost.num_devices=3"], "use 18432 or 21504"),
    (["train.precision=bf16"], "train.precision bf16 on t4-16gb: it has no native bf16"),
    (["train.compile=true"], "train.compile: true on t4-16gb: .* compute capability 8.0 and newer only"),
    (["train.device=cpu"], "train.device is cpu but cost.hardware t4-16gb is a cuda device"),
])
def test_plan_settings_that_cannot_work(tokens, tmp_path, overrides, expected):
    with pytest.raises(PipelineError, match=expected):
        run(tokens, tmp_path, *overrides)


# ---- prices -----------------------------------------------------------------------------------------

def test_pricing_modes(tokens, tmp_path):
    on_demand = run(tokens, tmp_path)
    spot = run(tokens, tmp_path, "cost.pricing=spot")
    colab = run(tokens, tmp_path, "cost.pricing=colab")
    own_rate = run(tokens, tmp_path, "cost.usd_per_hour=0.45")
    assert spot["hours"] == on_demand["hours"] and spot["usd"] == pytest.approx(spot["hours"] * 0.21)
    assert colab["usd"] == pytest.approx(colab["hours"] * 1.84 * 0.0999)
    assert own_rate["usd"] == pytest.approx(own_rate["hours"] * 0.45) and "cost.usd_per_hour" in own_rate["usd_basis"]
    two = run(tokens, tmp_path, "cost.num_devices=2")
    assert two["hours"] == pytest.approx(on_demand["hours"] / 2) and two["usd"] == pytest.approx(on_demand["usd"])
    assert two["plan"]["micro_batch_size"] * two["plan"]["grad_accum_steps"] == 10  # sequences per device
    assert run(tokens, tmp_path, "cost.mfu=0.4")["hours"] == pytest.approx(on_demand["hours"] / 2)
    assert run(tokens, tmp_path, "train.max_tokens=10240000")["tokens"] == 10_240_000


# ---- the gate ---------------------------------------------------------------------------------------

def test_gate_refuses_an_over_budget_run_and_leaves_no_plan(tokens, tmp_path):
    run(tokens, tmp_path)  # an earlier accepted run
    with pytest.raises(BudgetExceeded) as refused:
        run(tokens, tmp_path, "cost.budget_usd=0.10", "cost.budget_kwh=0.01")
    message = str(refused.value)
    assert refused.value.exit_code == 3
    assert "> cost.budget_usd $0.10" in message and "> cost.budget_kwh 0.01 kWh" in message
    fewer = int(re.search(r"train.max_tokens: (\d+) fits", message).group(1))
    full = run(tokens, tmp_path / "full", "cost.override_budget=true")
    assert fewer % 20480 == 0 and 0 < fewer * full["kwh"] / full["tokens"] <= 0.01  # kWh is the tighter limit
    assert (fewer + 20480) * full["kwh"] / full["tokens"] > 0.01
    assert "cost.pricing: spot" in message and "cost.override_budget: true" in message
    assert not (tmp_path / "plan.json").exists() and not (tmp_path / "cost.json").exists()
    markdown = (tmp_path / "cost.md").read_text()
    assert markdown.count("REFUSED") == 1 and "t4-16gb" in markdown


def test_gate_exit_code_and_one_line_message_from_the_cli(tokens, tmp_path):
    paths = [f"paths.tokens={tokens / 'tokens'}", f"paths.tokenizer={tokens / 'tokenizer'}",
             f"paths.reports={tmp_path}"]
    args = [sys.executable, "-m", "pipeline", "estimate"] + [a for p in paths + ["cost.budget_hours=0.5"]
                                                             for a in ("--set", p)]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 3
    assert result.stderr.startswith("error: over budget on t4-16gb") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and not (tmp_path / "plan.json").exists()


@pytest.mark.parametrize("setting,message", [
    ("train.compile=true", "error: train.compile: true on t4-16gb: torch.compile's GPU kernels need Triton"),
    ("train.precision=bf16", "error: train.precision bf16 on t4-16gb: it has no native bf16")])
def test_what_a_t4_cannot_run_is_one_line_from_the_cli_before_any_plan(tokens, tmp_path, setting, message):
    paths = [f"paths.tokens={tokens / 'tokens'}", f"paths.tokenizer={tokens / 'tokenizer'}",
             f"paths.reports={tmp_path}", "cost.hardware=t4-16gb", setting]
    args = [sys.executable, "-m", "pipeline", "estimate"] + [a for p in paths for a in ("--set", p)]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert not (tmp_path / "plan.json").exists()


def test_compile_is_planned_on_ampere(tokens, tmp_path):
    run(tokens, tmp_path, "cost.hardware=rtx2050-laptop-4gb", "cost.pricing=owned", "cost.override_budget=true",
        "train.compile=true")
    assert json.loads((tmp_path / "plan.json").read_text())["device"] == "rtx2050-laptop-4gb"


def test_override_passes_and_is_recorded(tokens, tmp_path):
    cost = run(tokens, tmp_path, "cost.budget_usd=0.10", "cost.override_budget=true")
    assert cost["override"] and cost["over_budget"] == ["usd"] and cost["budget"]["usd"] == 0.10
    assert (tmp_path / "plan.json").is_file()


# ---- bad input --------------------------------------------------------------------------------------

def test_unknown_hardware_lists_the_known_ones(tokens, tmp_path):
    with pytest.raises(PipelineError, match="unknown device 'rtx4090'; known: cpu, rtx2050-laptop-4gb, t4-16gb"):
        run(tokens, tmp_path, "cost.hardware=rtx4090")


@pytest.mark.parametrize("overrides,expected", [
    (["cost.usd_per_hour=0"], "cost.usd_per_hour: Input should be greater than 0"),
    (["cost.mfu=0"], "cost.mfu: Input should be greater than 0"),
    (["cost.budget_usd=-5"], "cost.budget_usd: Input should be greater than 0"),
    (["cost.budget_usd=null", "cost.budget_hours=null"], "no budget: set cost.budget_usd"),
    (["cost.pricing=owned", "cost.electricity_usd_per_kwh=0"], "cost.electricity_usd_per_kwh must be > 0"),
    (["cost.hardware=rtx2050-laptop-4gb", "cost.pricing=spot"],
     "cost.pricing spot: the catalog has no such price for rtx2050-laptop-4gb"),
    (["cost.extra_hardware={t4-16gb: {mfu_default: 0}}"], "cost.extra_hardware.t4-16gb.mfu_default"),
])
def test_missing_or_non_positive_price_mfu_budget(tokens, tmp_path, overrides, expected):
    with pytest.raises(PipelineError, match=expected):
        run(tokens, tmp_path, *overrides)


def test_missing_manifest(tmp_path):
    with pytest.raises(PipelineError, match="manifest.json not found: run the tokenize stage first"):
        run(tmp_path, tmp_path / "reports")


def test_manifest_from_another_tokenizer(tokens, tmp_path):
    other = tmp_path / "other"
    write_tokens(other, 32000, 1000)
    (other / "tokenizer/tokenizer.json").write_bytes((tokens / "tokenizer/tokenizer.json").read_bytes() + b" ")
    with pytest.raises(PipelineError, match="is not the tokenizer .* was made with"):
        run(other, tmp_path / "reports")
    manifest = json.loads((tokens / "tokens/manifest.json").read_text())
    (other / "tokenizer/tokenizer.json").write_bytes((tokens / "tokenizer/tokenizer.json").read_bytes())
    (other / "tokens/manifest.json").write_text(json.dumps({**manifest, "vocab_size": 50257}))
    with pytest.raises(PipelineError, match="says vocab_size 50257 but .* has 32000 tokens"):
        run(other, tmp_path / "reports")


# ---- calibration ------------------------------------------------------------------------------------

def test_calibration_times_real_steps_here(tmp_path):
    write_tokens(tmp_path, 512, 100_000)
    cost = run(tmp_path, tmp_path / "reports", "cost.hardware=cpu", "cost.pricing=owned", "cost.calibrate=true",
               "cost.calibrate_steps=2", "model.n_layer=2", "model.n_embd=64", "model.n_head=2", "model.context=64",
               "train.tokens_per_step=256", "train.max_steps=10")
    # micro-batch: the plan's 4 sequences of 64, under the CPU cap of 2048 tokens
    assert cost["mfu_source"].startswith("calibrated: ")
    assert f"micro-batch 4 x 64 ({cost['plan']['precision']}) on this cpu" in cost["mfu_source"]
    assert 0 < cost["mfu"] < 1
    assert cost["step_hours"] == pytest.approx(cost["flops"] / (cost["peak_flops"] * cost["mfu"]) / 3600)


def test_calibrated_checkpointing_is_not_counted_twice(tmp_path):
    """Calibration times steps with recompute on: the measured rate already pays for it, so the
    optimizer steps take tokens / measured rate, not 4/3 of that."""
    write_tokens(tmp_path, 512, 100_000)
    cost = run(tmp_path, tmp_path / "reports", "cost.hardware=cpu", "cost.pricing=owned", "cost.calibrate=true",
               "cost.calibrate_steps=2", "model.n_layer=2", "model.n_embd=64", "model.n_head=2", "model.context=64",
               "train.tokens_per_step=256", "train.max_steps=10", "train.activation_checkpointing=true")
    rate = float(re.search(r"calibrated: ([\d,]+) tokens/s", cost["mfu_source"]).group(1).replace(",", ""))
    assert cost["plan"]["activation_checkpointing"] and cost["recompute_factor"] == pytest.approx(4 / 3)
    assert cost["tokens_per_second"] == pytest.approx(rate, abs=1.0)  # the message rounds to a token/s
    assert cost["step_hours"] == pytest.approx(cost["tokens"] / rate / 3600, rel=1e-2)


def test_catalog_mfu_with_checkpointing_is_lowered_once(tokens, tmp_path):
    """The catalog's MFU assumes no recompute; with checkpointing the model MFU is a quarter lower,
    which makes the steps 4/3 as long, once (not 16/9), and MFU is still counted in model FLOPs."""
    common = ("train.micro_batch_size=4", "train.precision=fp16", "cost.override_budget=true")
    plain = run(tokens, tmp_path / "a", *common, "train.activation_checkpointing=false")
    recompute = run(tokens, tmp_path / "b", *common, "train.activation_checkpointing=true")
    assert recompute["mfu"] == pytest.approx(plain["mfu"] * 3 / 4)
    assert recompute["step_hours"] == pytest.approx(plain["step_hours"] * 4 / 3)
    assert recompute["flops"] == plain["flops"] and recompute["executed_flops"] > plain["executed_flops"]


def test_calibrating_a_gpu_needs_one(tokens, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(PipelineError, match="cost.hardware is t4-16gb but this machine has no CUDA GPU"):
        run(tokens, tmp_path, "cost.calibrate=true")
