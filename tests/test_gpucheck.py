"""The GPU check: the DEVICE=cpu run end to end (what CI runs), the install line, the verdict and
the CUDA report on CPU from a described result; cuda-marked tests run the GPU paths themselves."""
from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.tools import gpucheck
from pipeline.cost import hardware
from pipeline.core import params as params_module
from pipeline.cost.hardware import GIB

ROOT = Path(__file__).resolve().parent.parent
DEMO = [ROOT / "params.yaml", ROOT / "params" / "demo.yaml"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
# imported only inside a guard (pynvml) or a function the check never calls (tokenizers, a
# dependency of transformers in any case), or only when paths.checkpoints_remote is set (fsspec),
# which the check never sets
OPTIONAL = {"pynvml", "tokenizers", "fsspec"}


def args(tmp_path, device="cpu", time_limit=gpucheck.TIME_LIMIT_S):
    return argparse.Namespace(device=device, out=tmp_path / "reports", time_limit=time_limit)


@pytest.fixture(scope="module")
def cpu_check(tmp_path_factory):
    """make gpu-check DEVICE=cpu, in process: (exit status, gpu-check.json, gpu-check.md)."""
    tmp_path = tmp_path_factory.mktemp("gpucheck")
    params = params_module.load([ROOT / "params.yaml"], [f"paths.reports={tmp_path / 'unused'}"])
    code = gpucheck.main(params, args(tmp_path))
    reports = tmp_path / "reports"
    return code, json.loads((reports / "gpu-check.json").read_text()), (reports / "gpu-check.md").read_text()


def test_cpu_check_runs_the_demo_model_in_few_configurations(cpu_check):
    code, result, _ = cpu_check
    assert code == 0 and result["problems"] == []
    assert result["device"] == "cpu" and {c["model"] for c in result["configs"]} == {"demo"}
    cpu = hardware.get_device(params_module.load(DEMO).cost)
    expected = {("fp32", False), ("fp32", True)} | ({("bf16", False)} if cpu.bf16_native else set())
    assert {(c["precision"], c["checkpointing"]) for c in result["configs"]} == expected
    assert all(c["status"] == "ok" for c in result["configs"])


def test_cpu_check_predicted_and_measured_memory_agree(cpu_check):
    _, result, _ = cpu_check
    for c in result["configs"]:
        measured = c["measured"]["tensor_peak_bytes"]
        assert c["predicted_tensor_bytes"] > 0 and c["predicted_total_bytes"] > c["predicted_tensor_bytes"]
        # MemTracker counts tensor storage, as the model does (tests/test_compute.py holds it to 3%)
        assert 0.5 < measured / c["predicted_tensor_bytes"] < 2, c
        assert "MemTracker" in c["measured"]["how"]
        assert c["predicted_step_s"] > 0 and c["measured_step_s"] > 0 and c["mfu"] > 0
        assert c["steps"] >= 3 and c["fp16_skipped_steps"] is None and c["energy_j_per_step"] is None
        assert "flash" in c["sdpa_kernel"]


def test_cpu_check_predicts_the_plans_without_training_them(cpu_check):
    _, result, _ = cpu_check
    plans = {p["device"]: p for p in result["plans"]}
    assert set(plans) == {"rtx2050-laptop-4gb", "t4-16gb"}
    assert plans["t4-16gb"]["layout"] == "micro-batch 10 x 2 accum, fp16"
    for plan in plans.values():
        assert plan["status"] == "skipped" and "CUDA GPU" in plan["note"]
        assert 0 < plan["predicted_bytes"] <= plan["usable_bytes"]


def test_cpu_check_probes_the_trained_demo_models_fp16_headroom(cpu_check):
    _, result, text = cpu_check
    headroom = result["fp16_headroom"]
    assert headroom["source"] == f"params.model after {gpucheck.HEADROOM_STEPS['cpu']} training steps in fp32 on cpu"
    assert [layer["name"] for layer in headroom["layers"]] == [f"block {i}" for i in range(4)] + ["lm_head"]
    assert all(layer["activation_margin"] > headroom["safety"] for layer in headroom["layers"])
    assert "## fp16 headroom" in text and "| block 3 |" in text and "fp16 headroom: ok" in text
    assert "- torch.compile: not checked on CPU" in text


def test_cpu_check_markdown(cpu_check):
    _, result, text = cpu_check
    assert text.startswith(f"# GPU check: {result['name']} (cpu)")
    assert "## Memory and speed" in text and "## The 4 GB and 16 GB plans" in text
    assert "catalog entry cpu" in text and "MemTracker" in text and "no problems" in text
    assert text.count("| demo |") == len(result["configs"])


def test_no_cuda_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(gpucheck.PipelineError, match="sees no CUDA GPU.*DEVICE=cpu"):
        gpucheck.run(params_module.load(DEMO), device="cuda")


def test_the_time_limit_skips_what_is_left(tmp_path):
    result = gpucheck.run(params_module.load(DEMO), device="cpu", time_limit_s=0)
    assert all(c["status"] == "skipped" and "time limit" in c["note"] for c in result["configs"])
    assert result["problems"] == []


# ---- what to install ----------------------------------------------------------------------------

def test_install_line_pins_from_the_lock_but_not_torch():
    line = gpucheck.install_line(["pydantic", "PyYAML", "torch"])
    lock = (ROOT / "requirements.lock").read_text()
    pydantic = next(l for l in lock.splitlines() if l.startswith("pydantic=="))
    assert line.count("\n") == 0 and f"pip install {pydantic} PyYAML==" in line
    assert " torch (torch: the CUDA build from https://pytorch.org/get-started/locally/)" in line


def test_missing_packages_are_named_before_anything_is_imported():
    code = ("import importlib.util as u, sys\n"
            "real = u.find_spec\n"
            "u.find_spec = lambda name, *a: None if name in ('pydantic', 'yaml') else real(name, *a)\n"
            "from pipeline.tools import gpucheck\n"
            "code = gpucheck.cli(['--device', 'cpu'])\n"
            "print(sorted(m for m in ('torch', 'transformers', 'pydantic', 'yaml') if m in sys.modules))\n"
            "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout.strip() == "[]"
    assert done.stderr.count("\n") == 1 and "pip install pydantic==" in done.stderr and "PyYAML==" in done.stderr


def test_an_older_transformers_is_named_too(monkeypatch):
    import transformers

    monkeypatch.delattr(transformers.PreTrainedModel, "activation_checkpointing_enable")
    line = gpucheck.preflight()
    assert line.count("\n") == 0 and "activation_checkpointing_enable: pip install transformers==" in line


def _third_party_imports(start: str) -> set[str]:
    """Top-level non-stdlib names imported anywhere in `start` and the pipeline modules it imports."""
    from pipeline.registry import code_deps

    found = set()
    for file in code_deps(start):
        if not file.endswith(".py"):
            continue
        for node in ast.walk(ast.parse((ROOT / file).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            found |= {m.split(".")[0] for m in modules
                      if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] not in ("pipeline", "__future__")}
    return found


def test_required_lists_every_package_the_check_imports():
    assert _third_party_imports("pipeline.tools.gpucheck") <= set(gpucheck.REQUIRED) | OPTIONAL


def test_the_standalone_command_has_help():
    done = subprocess.run([sys.executable, "-m", "pipeline.tools.gpucheck", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "--device {cuda,cpu}" in done.stdout


# ---- the verdict and the CUDA report, from a described result ----------------------------------------

def cuda_result(**changes):
    config = {"model": "params", "shape": "12 layers x 768", "precision": "fp16", "checkpointing": False,
              "micro_batch": 8, "accum": 2, "status": "ok", "note": "", "predicted": {},
              "predicted_total_bytes": int(6.4 * GIB), "predicted_tensor_bytes": 6 * GIB,
              "measured": {"how": "torch.cuda.max_memory_allocated", "tensor_peak_bytes": int(6.1 * GIB),
                           "reserved_peak_bytes": int(6.5 * GIB), "device_peak_bytes": 7 * GIB},
              "memory_ratio": 6.1 / 6, "predicted_step_s": 0.5, "measured_step_s": 0.6, "mfu": 0.17, "steps": 5,
              "fp16_skipped_steps": 1, "energy_j_per_step": 40.0, "sdpa_kernel": "mem_efficient"}
    plan = {"device": "rtx2050-laptop-4gb", "layout": "micro-batch 1 x 20 accum, bf16", "precision_run": "fp16",
            "status": "fits", "note": "ran fp16 in place of bf16", "predicted_bytes": int(2.9 * GIB),
            "usable_bytes": int(3.4 * GIB), "cap_bytes": int(3.8 * GIB), "steps": 20,
            "tensor_peak_bytes": int(2.4 * GIB), "reserved_peak_bytes": int(2.6 * GIB), "fp16_skipped_steps": 2}
    result = {"format": 1, "device": "cuda", "name": "Tesla T4", "catalog_entry": "t4-16gb",
              "machine": {"capability": [7, 5], "bf16_native": False, "total_bytes": int(14.58 * GIB),
                          "torch": "2.11.0", "cuda_version": "12.8", "driver_version": "570.86",
                          "energy_counter": True, "energy_note": "", "measured_matmul_tflops": {"fp32": 7.9, "fp16": 41.0}},
              "prediction_source": "catalog entry t4-16gb", "outside_allocator_bytes": int(0.3 * GIB),
              "runtime_allowance_bytes": int(0.4 * GIB), "memory_headroom": 0.1,
              "sdpa": {"enabled": {"flash": True, "mem_efficient": True, "math": True},
                       "usable_fp16": {"flash": False, "mem_efficient": True, "cudnn": False}},
              "configs": [{**config, **changes.pop("config", {})}], "plans": [{**plan, **changes.pop("plan", {})}],
              "preflight": {"driver": "580.95.05", "driver_problem": None,
                            "compile": {"planner_allows": False, "planner_says": "train.compile: true on t4-16gb: ...",
                                        "runs": False, "note": "RuntimeError: Triton does not support sm_75"},
                            **changes.pop("preflight", {})},
              "fp16_headroom": {"problems": changes.pop("headroom_problems", []),
                                "markdown": "# fp16 headroom: demo\n\n| layer | largest activation |\nfp16 headroom: ok\n"},
              "elapsed_s": 200.0, "time_limit_s": 420.0}
    return {**result, **changes}


def test_judge_accepts_measurements_within_the_headroom():
    assert gpucheck.judge(cuda_result()) == ([], [])


def test_judge_flags_an_under_predicting_memory_model():
    measured = {"how": "x", "tensor_peak_bytes": int(6.8 * GIB)}  # over 6 / (1 - 0.1)
    problems, _ = gpucheck.judge(cuda_result(config={"measured": measured}))
    assert len(problems) == 1 and "more than the predicted 6.000 GiB" in problems[0]


def test_judge_flags_out_of_memory_and_overflow():
    problems, _ = gpucheck.judge(cuda_result(config={"fp16_skipped_steps": 5},
                                             plan={"status": "out of memory", "steps": 3, "note": "CUDA out of memory"}))
    assert any("every fp16 step overflowed" in p for p in problems)
    assert any("ran out of memory under the 3.80 GiB cap after 3 steps" in p for p in problems)


def test_judge_notes_a_runtime_larger_than_the_allowance():
    _, notes = gpucheck.judge(cuda_result(outside_allocator_bytes=int(1.5 * GIB)))
    assert any("held outside torch's allocator" in n and "runtime_overhead_gib" in n for n in notes)
    assert any("tight on the real card" in n for n in notes)  # 2.6 + 1.5 > 3.8


def test_judge_flags_what_a_first_paid_run_would_meet():
    allowed_but_fails = {"planner_allows": True, "planner_says": "", "runs": False, "note": "RuntimeError: no sm_75"}
    problems, _ = gpucheck.judge(cuda_result(
        preflight={"driver_problem": "NVIDIA driver 535.183.01 (Tesla T4, nvidia-smi) is older than 580",
                   "compile": allowed_but_fails},
        headroom_problems=["fp16 headroom: model.layers.1.mlp.up_proj output reaches 1.2e+05"],
        config={"sdpa_kernel": "math"}))
    assert [p.split(" ")[0] for p in problems] == ["NVIDIA", "torch.compile", "fp16", "params"]
    assert "SDPA ran the math kernel" in problems[-1]
    stale = {"planner_allows": False, "planner_says": "refused", "runs": True, "note": ""}
    assert any("may be out of date" in n for n in gpucheck.judge(cuda_result(preflight={"compile": stale}))[1])


def test_cuda_markdown():
    result = cuda_result()
    result["problems"], result["warnings"] = gpucheck.judge(result)
    text = gpucheck.markdown(result)
    for expected in ("# GPU check: Tesla T4 (cuda)", "compute capability 7.5, bf16 emulated", "driver 570.86",
                     "NVML energy counter: reads", "usable here for GPT-2 attention in fp16: mem_efficient",
                     "| rtx2050-laptop-4gb | micro-batch 1 x 20 accum, bf16 | 2.90 |", "| fp16 | 20 |",
                     "| params | fp16 | off | 8 | 6.00 / 6.40 | 6.10 | 1.02 |", "| 40 | mem_efficient | ok |",
                     "the plans for rtx2050-laptop-4gb train within their caps", "## Before a paid run",
                     "- NVIDIA driver (nvidia-smi): 580.95.05: new enough for this torch build",
                     "- torch.compile here: fails (RuntimeError: Triton does not support sm_75); the planner refuses",
                     "## fp16 headroom (pipeline/tools/fp16probe.py)\n\n| layer | largest activation |"):
        assert expected in text, expected


# ---- on a GPU ----------------------------------------------------------------------------------------

@pytest.mark.cuda
@needs_cuda
def test_cuda_check_on_the_demo_model(tmp_path, monkeypatch):
    real_models = gpucheck._models
    monkeypatch.setattr(gpucheck, "_models", lambda params, kind: real_models(params, kind)[:1])  # demo only
    params = params_module.load([ROOT / "params.yaml"])
    code = gpucheck.main(params, args(tmp_path, device="cuda"))
    result = json.loads((tmp_path / "reports" / "gpu-check.json").read_text())
    assert code == 0, result["problems"]
    fp16 = [c for c in result["configs"] if c["precision"] == "fp16"]
    assert fp16 and all(c["fp16_skipped_steps"] is not None for c in fp16)
    for c in result["configs"]:
        assert c["status"] == "ok" and c["measured"]["tensor_peak_bytes"] > 0
        assert c["sdpa_kernel"] != "none seen"
    assert {p["status"] for p in result["plans"]} <= {"fits", "skipped"}
    assert "## The 4 GB and 16 GB plans" in (tmp_path / "reports" / "gpu-check.md").read_text()
    # before a paid run: the driver read, torch.compile tried, the trained demo model's fp16 margin
    assert result["preflight"]["driver"] and result["preflight"]["compile"]["runs"] in (True, False)
    assert result["fp16_headroom"]["source"].endswith("in fp16 on cuda") and result["fp16_headroom"]["layers"]


@pytest.mark.cuda
@needs_cuda
def test_a_plan_over_its_cap_is_reported_and_the_cap_lifted():
    params = params_module.load([ROOT / "params.yaml"])
    machine = gpucheck._cuda_machine(params)
    from pipeline.cost.planner import plan_for

    fit = plan_for(params, hardware.get_device(params.cost.model_copy(update={"hardware": "t4-16gb"})), 32000)
    proof = gpucheck.PlanProof("t4-16gb", cap_bytes=256 * 2**20)
    gpucheck._run_capped(proof, fit.plan, params, machine)
    assert proof.status == "out of memory" and proof.steps == 0
    big = torch.empty(int(1.5 * GIB), dtype=torch.uint8, device="cuda")  # the cap is gone
    del big


def test_make_gpu_check_runs_this_check_on_the_device_asked_for():
    import subprocess

    root = Path(__file__).resolve().parent.parent
    dry = subprocess.run(["make", "-s", "-n", "gpu-check", "DEVICE=cpu"], cwd=root, capture_output=True, text=True)
    assert dry.returncode == 0 and "-m pipeline.tools.gpucheck --device cpu" in dry.stdout
