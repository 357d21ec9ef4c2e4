"""python -m pipeline doctor: every problem at once, exit 2 when the run would fail here.

CUDA facts are injected (run(params, find_cuda=...)) and torch.cuda.is_available() patched where a
test describes a GPU, so the GPU reporting runs on CPU-only CI; the real facts are checked by the
cuda-marked test.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.engine import checkpoint
from pipeline.model import compute
from pipeline.tools import doctor
from pipeline.core import params as params_module
from pipeline.cost import hardware
from pipeline.cost.hardware import GIB
from pipeline.registry import run_stage

from trainkit import tiny_params

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = [ROOT / "params.yaml"]
DEMO = [ROOT / "params.yaml", ROOT / "params" / "demo.yaml"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


def load(files, tmp_path, *sets):
    paths = [f"paths.checkpoints={tmp_path / 'checkpoints'}", f"paths.tokens={tmp_path / 'tokens'}"]
    return params_module.load(files, paths + list(sets))


def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return lambda: []


def fake_gpu(monkeypatch, name="Tesla T4", capability=(7, 5), total_gib=14.58, free_gib=14.2, **kw):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = doctor.CudaDevice(index=0, name=name, capability=capability, total_bytes=int(total_gib * GIB),
                            free_bytes=int(free_gib * GIB), cuda_version="12.4", driver_version="550.54.15",
                            energy_counter=kw.pop("energy_counter", True), energy_note=kw.pop("energy_note", ""),
                            arch_list=kw.pop("arch_list", ("sm_75", "sm_80", "sm_86", "sm_90")))
    return lambda: [gpu]


def test_default_params_on_a_cpu_only_machine_name_cost_hardware(tmp_path, monkeypatch):
    report = doctor.run(load(DEFAULT, tmp_path), find_cuda=no_gpu(monkeypatch))
    assert report.exit_code == 2
    [problem] = report.problems
    assert "cost.hardware is t4-16gb" in problem and "resolves to cpu" in problem
    assert "cost.hardware: cpu" in problem  # what to set
    text = report.text()
    assert "no CUDA device" in text and "problem: cost.hardware is t4-16gb" in text
    assert "doctor: 1 problem(s)" in text.splitlines()[-1]


def test_demo_params_are_ready_on_cpu(tmp_path, monkeypatch):
    report = doctor.run(load(DEMO, tmp_path), find_cuda=no_gpu(monkeypatch))
    assert report.problems == [] and report.exit_code == 0
    text = report.text()
    for expected in ("cores usable", "ISA flags", "matmul peaks", "plan for cpu", "keep_last 2 + 1 best"):
        assert expected in text
    assert text.rstrip().endswith("doctor: ready") or "doctor: ready (" in text


def test_the_cpu_section_reports_the_detected_entry(tmp_path, monkeypatch):
    from pipeline.cost import hardware

    detected = hardware.get_device(load(DEMO, tmp_path).cost).detected
    text = doctor.run(load(DEMO, tmp_path), find_cuda=no_gpu(monkeypatch)).text()
    assert detected["model"] in text and f"{detected['cores']} cores" in text
    assert ("bf16 native" in text) == detected["bf16_native"]


def test_a_small_disk_is_a_problem_naming_paths_checkpoints_and_the_gib(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "free_bytes", lambda path: 10 * 2**20)
    params = load(DEFAULT, tmp_path)
    report = doctor.run(params, find_cuda=no_gpu(monkeypatch))
    [disk] = [p for p in report.problems if "paths.checkpoints" in p]
    # the default muon: fp32 weights, one fp32 momentum per hidden matrix, AdamW's two for the rest
    n = compute.parameter_count(params.model, params.tokenizer.vocab_size)
    hidden = compute.hidden_matrix_parameters(params.model)
    each = 4 * n + 4 * hidden + 8 * (n - hidden) + doctor.CHECKPOINT_SMALL_FILES_BYTES
    needed = (params.train.keep_last + 2) * each + checkpoint.SPACE_MARGIN_BYTES + int(each * 0.05)
    assert f"need {needed / GIB:.2f} GiB free" in disk and "has 0.01 GiB" in disk
    assert "train.keep_last" in disk
    assert len(report.problems) == 2  # and the hardware problem, all at once
    assert 5 * 0.85 < needed / GIB < 5 * 1.0  # ~110M parameters, vocab 32000: ~0.9 GiB per checkpoint
    assert "train.optimizer muon's state" in report.text()


def test_checkpoints_already_on_disk_count_toward_the_need(tmp_path, monkeypatch):
    params = load(DEMO, tmp_path)
    each = doctor.checkpoint_bytes(params, params.tokenizer.vocab_size)
    kept = tmp_path / "checkpoints" / "step-000040"
    kept.mkdir(parents=True)
    (kept / "model.safetensors").write_bytes(b"\0" * each)
    margin = checkpoint.SPACE_MARGIN_BYTES + int(each * checkpoint.SPACE_MARGIN_FRACTION)
    enough = (params.train.keep_last + 1) * each + margin  # one checkpoint's worth is already there
    monkeypatch.setattr(checkpoint, "free_bytes", lambda path: enough + 4096)
    report = doctor.run(params, find_cuda=no_gpu(monkeypatch))
    assert report.problems == [] and "already held there" in report.text()


def test_the_token_manifest_vocabulary_sizes_the_checkpoints(demo_tokens, monkeypatch):
    params = demo_tokens.params
    vocab = demo_tokens.manifest["vocab_size"]
    assert doctor.vocab_size(params) == vocab
    state = compute.optimizer_state_bytes(params.model, vocab, params.train.optimizer)
    assert doctor.checkpoint_bytes(params, vocab) == 4 * compute.parameter_count(params.model, vocab) + state + 2**20


@pytest.mark.parametrize("optimizer,state_bytes_per_parameter", [("adamw", 8), ("muon", None)])
def test_checkpoints_are_sized_from_the_optimizers_state(tmp_path, optimizer, state_bytes_per_parameter):
    params = load(DEFAULT, tmp_path, f"train.optimizer={optimizer}")
    vocab = params.tokenizer.vocab_size
    n, hidden = compute.parameter_count(params.model, vocab), compute.hidden_matrix_parameters(params.model)
    # AdamW: exp_avg and exp_avg_sq for every parameter; Muon: one momentum_buffer per hidden matrix
    state = 8 * n if state_bytes_per_parameter else 4 * hidden + 8 * (n - hidden)
    assert doctor.checkpoint_parts(params, vocab) == {"weights": 4 * n, "optimizer": state}
    assert doctor.checkpoint_parts(params, vocab)["optimizer"] == compute.training_memory(
        params.model, vocab, 1, "fp16", False, optimizer=optimizer).optimizer  # what the planner counts


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_checkpoint_train_writes_is_the_size_doctor_plans_for(demo_tokens, tmp_path, optimizer):
    params = tiny_params(demo_tokens, tmp_path, f"train.optimizer={optimizer}", "train.max_steps=1",
                         "train.checkpoint_every=1")
    run_stage("train", params)
    [(_, written)] = checkpoint.steps(params.paths.checkpoints)
    planned = doctor.checkpoint_parts(params, demo_tokens.manifest["vocab_size"])
    payload = sum(f.stat().st_size for f in written.iterdir())
    # safetensors and torch.save add headers and tensor names, meta and history their JSON
    assert sum(planned.values()) < payload < sum(planned.values()) + doctor.CHECKPOINT_SMALL_FILES_BYTES


def test_fake_t4_with_default_params_is_ready_and_reported(tmp_path, monkeypatch):
    report = doctor.run(load(DEFAULT, tmp_path), find_cuda=fake_gpu(monkeypatch))
    assert report.problems == [], report.problems
    text = report.text()
    for expected in ("cuda:0 Tesla T4, compute capability 7.5", "14.20 of 14.58 GiB free", "bf16 emulated",
                     "CUDA runtime 12.4", "driver 550.54.15", "NVML energy counter reads",
                     "train.device auto resolves to cuda"):
        assert expected in text, expected
    # the T4 reports a little less than the catalog's 14.75 GiB, and the plan still fits
    assert any("less than the 14.75 GiB" in w and "still fits" in w for w in report.warnings)


def test_a_bf16_plan_on_a_gpu_without_native_bf16_is_a_problem(tmp_path, monkeypatch):
    params = load(DEFAULT, tmp_path, "cost.hardware=rtx2050-laptop-4gb", "cost.pricing=owned")
    report = doctor.run(params, find_cuda=fake_gpu(monkeypatch))
    assert any("bf16" in p and "no native bf16" in p for p in report.problems)
    assert any("looks like catalog device nvidia-t4" in w and "cost.hardware: t4-16gb" in w for w in report.warnings)


def test_a_gpu_smaller_than_cost_hardware_is_a_problem_when_the_plan_does_not_fit(tmp_path, monkeypatch):
    gpus = fake_gpu(monkeypatch, name="NVIDIA Tiny", capability=(8, 6), total_gib=6.0, free_gib=5.8)
    report = doctor.run(load(DEFAULT, tmp_path), find_cuda=gpus)
    [problem] = report.problems
    assert "has 6.00 GiB, less than the 14.75 GiB cost.hardware t4-16gb plans for" in problem
    assert "cost.extra_hardware" in problem


def test_every_gpu_problem_at_once(tmp_path, monkeypatch):
    gpus = fake_gpu(monkeypatch, name="NVIDIA H200", capability=(9, 0), total_gib=139.8, free_gib=139.0,
                    arch_list=("sm_50", "sm_60", "sm_70"), energy_counter=False, energy_note="not supported")
    report = doctor.run(load(DEFAULT, tmp_path, "cost.num_devices=2", "train.tokens_per_step=20480"),
                        find_cuda=gpus)
    assert any("sm_90 but this torch build has code for sm_50 sm_60 sm_70" in p for p in report.problems)
    assert any("cost.num_devices is 2 but torch sees 1" in p for p in report.problems)
    assert any("no NVML energy" in line for line in report.sections["cuda"])
    assert report.exit_code == 2


def test_a_cpu_target_on_a_gpu_machine_says_what_to_set(tmp_path, monkeypatch):
    params = load(DEMO, tmp_path, "train.device=auto")
    report = doctor.run(params, find_cuda=fake_gpu(monkeypatch))
    [problem] = report.problems
    assert "cost.hardware is cpu" in problem and "train.device: cpu" in problem and "t4-16gb" in problem
    ready = doctor.run(load(DEMO, tmp_path), find_cuda=fake_gpu(monkeypatch))  # train.device: cpu
    assert ready.exit_code == 0


def catalog_gpus() -> dict[str, tuple[str, list[str]]]:
    """Each name a driver reports for a catalog GPU: its device and the entries that rent it."""
    gpus: dict[str, tuple[str, list[str]]] = {}
    for entry, gpu in hardware.gpus().items():
        for name in gpu.gpu_names:
            gpus.setdefault(name, (gpu.chip, []))[1].append(entry)
    return gpus


def test_every_catalog_gpu_is_known_by_a_name():
    assert {entry for _, entries in catalog_gpus().values() for entry in entries} == set(hardware.gpus())
    assert len(hardware.gpus()) >= 8 and catalog_gpus()["NVIDIA L4"] == ("nvidia-l4", ["l4-24gb", "l4-24gb-gcp"])


@pytest.mark.parametrize("name,device,entries", [(name, *known) for name, known in catalog_gpus().items()])
def test_doctor_knows_each_catalog_gpu_by_a_name_its_device_lists(tmp_path, monkeypatch, name, device, entries):
    report = doctor.run(load(DEFAULT, tmp_path), find_cuda=fake_gpu(monkeypatch, name=name))
    assert f"cuda:0 {name} is catalog device {device}, cost.hardware {' or '.join(entries)}" in report.sections["cuda"]
    # the warning names the GPU's entries unless cost.hardware (t4-16gb) is one of them
    assert (f"looks like catalog device {device}" in " ".join(report.warnings)) == ("t4-16gb" not in entries)


@pytest.mark.parametrize("hardware_name", ["l4-24gb", "l4-24gb-gcp"])
def test_an_l4_is_recognized_under_either_offer(tmp_path, monkeypatch, hardware_name):
    l4 = fake_gpu(monkeypatch, name="NVIDIA L4", capability=(8, 9), total_gib=22.5, free_gib=22.0)
    report = doctor.run(load(DEFAULT, tmp_path, f"cost.hardware={hardware_name}"), find_cuda=l4)
    assert "cuda:0 NVIDIA L4 is catalog device nvidia-l4, cost.hardware l4-24gb or l4-24gb-gcp" in report.sections["cuda"]
    assert not [w for w in report.warnings if "looks like" in w] and report.exit_code == 0, report.text()
    elsewhere = doctor.run(load(DEFAULT, tmp_path), find_cuda=l4)   # cost.hardware: t4-16gb
    assert any("looks like catalog device nvidia-l4, but cost.hardware is t4-16gb" in w
               and "set cost.hardware: l4-24gb or l4-24gb-gcp" in w for w in elsewhere.warnings)


@pytest.mark.parametrize("name,entries", [
    ("tesla  t4", ["t4-16gb"]), ("NVIDIA A100 80GB PCIe", ["a100-80gb"]), ("nvidia l4", ["l4-24gb", "l4-24gb-gcp"]),
    ("NVIDIA L40S", []), ("NVIDIA H100 PCIe", []), ("NVIDIA H200", []), ("NVIDIA GeForce RTX 4090", [])])
def test_a_gpu_is_known_by_its_whole_name_case_and_spacing_aside(name, entries):
    assert list(hardware.gpu_offers(name)) == entries


def test_a_gpu_no_entry_names_says_how_to_add_one(tmp_path, monkeypatch):
    report = doctor.run(load(DEFAULT, tmp_path), find_cuda=fake_gpu(monkeypatch, name="NVIDIA H200"))
    assert any("NVIDIA H200 is no catalog device" in line and "gpu_names" in line for line in report.sections["cuda"])


def test_extra_hardware_names_a_gpu_for_doctor(tmp_path, monkeypatch):
    params = load(DEFAULT, tmp_path, "cost.extra_hardware={t4-16gb: {gpu_names: [NVIDIA H200]}}")
    report = doctor.run(params, find_cuda=fake_gpu(monkeypatch, name="NVIDIA H200"))
    assert "cuda:0 NVIDIA H200 is catalog device nvidia-t4, cost.hardware t4-16gb" in report.sections["cuda"]


def test_an_offer_added_in_params_joins_its_device(tmp_path, monkeypatch):
    azure = "{t4-azure: {device: nvidia-t4, cloud: Azure, instance: NC4as_T4_v3, usd_per_hour_on_demand: 0.53}}"
    report = doctor.run(load(DEFAULT, tmp_path, f"cost.extra_hardware={azure}"), find_cuda=fake_gpu(monkeypatch))
    assert "cuda:0 Tesla T4 is catalog device nvidia-t4, cost.hardware t4-16gb or t4-azure" in report.sections["cuda"]


@pytest.mark.parametrize("capability,archs,supported", [
    ((8, 6), ("sm_80",), True), ((8, 0), ("sm_86",), False), ((9, 0), ("sm_80", "compute_80"), True),
    ((12, 0), ("sm_80", "sm_90"), False), ((7, 5), (), True)])
def test_arch_supported(capability, archs, supported):
    gpu = doctor.CudaDevice(0, "x", capability, 1, 1, None, None, False, "", archs)
    assert doctor.arch_supported(gpu) is supported


def test_cli_exit_codes(tmp_path):
    def doctor_cli(*files):
        args = [a for f in files for a in ("--params", str(f))]
        return subprocess.run([sys.executable, "-m", "pipeline", "doctor", *args,
                               "--set", f"paths.checkpoints={tmp_path}", "--set", f"paths.tokens={tmp_path}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)

    demo = doctor_cli(*DEMO)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "doctor: ready" in demo.stdout and "Traceback" not in demo.stderr
    if not torch.cuda.is_available():
        default = doctor_cli(*DEFAULT)
        assert default.returncode == 2 and "problem: cost.hardware is t4-16gb" in default.stdout


@pytest.mark.cuda
@needs_cuda
def test_real_cuda_facts():
    [first, *_] = doctor.cuda_devices()
    assert 0 < first.free_bytes <= first.total_bytes and first.capability >= (5, 0)
    assert first.cuda_version == torch.version.cuda and first.name == torch.cuda.get_device_name(0)
    assert first.bf16_native == (torch.cuda.get_device_capability(0)[0] >= 8)
    assert doctor.arch_supported(first)
